"""Depth pruning: which blocks are removable, their removal, and its replay from a checkpoint."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.pruning.blocks import REMOVE, removable_blocks, remove_blocks, split_history
from trtprune.pruning.prune import GroupPruner, replay, uniform_plan
from trtprune.sources.models import build_model
from trtprune.sources.weights import load_model, save_pruned


def test_resnet20_blocks_are_those_that_keep_their_shape():
    blocks = removable_blocks(build_model("resnet20"), (3, 32, 32))
    # layer2.0 and layer3.0 halve the size and widen the channels: not removable; layer1.0 keeps both
    assert [b.name for b in blocks] == [
        "layer1.0",
        "layer1.1",
        "layer1.2",
        "layer2.1",
        "layer2.2",
        "layer3.1",
        "layer3.2",
    ]
    sigs = {b.name: b.signature for b in blocks}
    assert sigs["layer1.0"] == sigs["layer1.2"] != sigs["layer2.1"] != sigs["layer3.1"]


def test_ignored_modules_keep_their_blocks():
    blocks = removable_blocks(build_model("resnet20"), (3, 32, 32), ignore=["layer1", "layer3.2"])
    assert [b.name for b in blocks] == ["layer2.1", "layer2.2", "layer3.1"]


class Plain(nn.Module):  # same shape in and out, a conv, but no residual: removing it is not the same network
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x))


class Branchy(nn.Module):  # a residual whose forward depends on the data: fx cannot trace it
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        return x + self.conv(x) if x.sum() > 0 else x


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.skip = nn.Identity()

    def forward(self, x):
        return torch.add(self.skip(x), self.conv(x))


class Twice(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 1)
        self.plain, self.branchy, self.res, self.shared = Plain(), Branchy(), Residual(), Residual()

    def forward(self, x):
        x = self.res(self.branchy(self.plain(self.stem(x))))
        return self.shared(self.shared(x)).mean((2, 3))  # called twice: removing it removes two blocks


def test_only_provable_single_call_residuals_are_removable():
    assert [b.name for b in removable_blocks(Twice(), (3, 8, 8))] == ["res"]


def test_removal_is_recorded_and_replayed_from_a_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    entries = remove_blocks(model, ["layer1.1", "layer3.2"])
    assert entries == [{REMOVE: "layer1.1"}, {REMOVE: "layer3.2"}]
    assert isinstance(model.layer1[1], nn.Identity)
    pruner = GroupPruner(model, (3, 32, 32))
    pruner.prune_to(uniform_plan(pruner.groups(), 0.5, 4))
    history = entries + pruner.history()
    assert split_history(history)[0] == ["layer1.1", "layer3.2"]
    save_pruned(tmp_path / "p.pt", model, "resnet20", history)
    loaded, _ = load_model("resnet20", tmp_path / "p.pt")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert isinstance(loaded.layer3[2], nn.Identity)
    fresh = replay(build_model("resnet20"), (3, 32, 32), history)
    assert sum(p.numel() for p in fresh.parameters()) == sum(p.numel() for p in model.parameters())


def test_a_plan_naming_a_missing_block_is_refused():
    with pytest.raises(TrtpruneError, match="layer9.1"):
        remove_blocks(build_model("resnet20"), ["layer9.1"])
