"""Users' own networks (tests/zoo.py) through every stage: groups, uniform prune, a searched plan on the
fake engine, the pruned network's channel counts and forward pass, ONNX export with parity against torch,
and one measured ONNX Runtime latency."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

from trtprune.deploy.export import onnx_from_torch
from trtprune.deploy.parity import parity
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.latency.devices import Device
from trtprune.profiling.lut import LUT
from trtprune.profiling.predict import Predictor
from trtprune.pruning.prune import GroupPruner, prune_uniform, uniform_plan
from trtprune.searching import Budget, get_searcher
from trtprune.searching.space import SearchSpace
from trtprune.sources.models import build_model, model_spec

from . import zoo

FAKE = Device("fake-test", "fake")
SHAPE = (3, 32, 32)


def _channels(model) -> dict[str, int]:
    return {g.name: g.channels for g in GroupPruner(model, SHAPE).groups()}


def _forward(model) -> torch.Size:
    with torch.no_grad():
        return model.eval()(torch.randn(2, *SHAPE)).shape


@pytest.mark.parametrize("name", zoo.ZOO)
def test_zoo_net_is_small_and_has_groups(name):
    model = getattr(zoo, name)()
    assert 2_000 <= sum(p.numel() for p in model.parameters()) <= 100_000
    groups = GroupPruner(model, SHAPE).groups()
    assert len(groups) >= 2
    assert all(g.channels % g.multiple == 0 for g in groups)


def test_grouped_convs_set_the_multiple_of_their_groups():
    groups = {g.name: g for g in GroupPruner(zoo.resnext_se_net(), SHAPE).groups()}
    assert groups["stage1.reduce.0"].multiple == 4  # feeds a conv in 4 groups
    assert groups["stage1.grouped.0"].multiple == 4  # comes out of it
    assert groups["stage2.grouped.0"].multiple == 8
    assert groups["stem.0"].multiple == 1
    plan = uniform_plan(list(groups.values()), 0.3, 1)
    assert plan["stage2.grouped.0"] == 48 and plan["stage1.grouped.0"] == 24  # 44.8 -> 48, 22.4 -> 24


def test_concat_consumers_and_flatten_fan_are_described():
    groups = {g.name: g for g in GroupPruner(zoo.concat_net(), SHAPE).groups()}
    assert groups["block1.layers.0.0"].consumers == ("block1.layers.1.0", "trans.0")
    head = {g.name: g for g in GroupPruner(zoo.linear_head_net(), SHAPE).groups()}
    assert head["features.2.0"].fan("head.1") == 4  # a 2x2 pool flattened into the first Linear
    reused = {g.name: g for g in GroupPruner(zoo.reused_net(), SHAPE).groups()}
    assert reused["stem.0"].self_fed == ("mid",)


@pytest.mark.parametrize("name", zoo.ZOO)
def test_uniform_prune_keeps_the_planned_counts(name):
    torch.manual_seed(0)
    model = getattr(zoo, name)()
    doc, history = prune_uniform(model, SHAPE, 0.5, round_to=4)
    assert history
    assert _channels(model) == doc.keep_channels
    assert _forward(model) == (2, 10)
    # the history rebuilds the same network from the dense one
    from trtprune.pruning.prune import replay

    again = replay(getattr(zoo, name)(), SHAPE, history)
    assert _channels(again) == doc.keep_channels


@pytest.mark.parametrize("name", ["resnext_se_net", "concat_net"])
def test_a_plan_off_the_multiple_or_unknown_ignore_is_an_error(name):
    model = getattr(zoo, name)()
    if name == "resnext_se_net":
        with pytest.raises(TrtpruneError, match="multiple of 8"):
            GroupPruner(model, SHAPE).prune_to({"stage2.grouped.0": 30})
    with pytest.raises(TrtpruneError, match="not a module") as e:
        GroupPruner(model, SHAPE, ignore=["no.such.layer"])
    assert "stem.0" in str(e.value)


def test_ignored_modules_keep_their_outputs():
    pruner = GroupPruner(zoo.resnext_se_net(), SHAPE, ignore=["stage1.grouped", "stem.0"])
    names = {g.name for g in pruner.groups()}
    assert "stage1.grouped.0" not in names and "stem.0" not in names
    assert "stage2.grouped.0" in names
    model = zoo.resnext_se_net()
    doc, _ = prune_uniform(model, SHAPE, 0.5, ignore=["stage1.grouped"])
    assert model.stage1.grouped[0].out_channels == 32 and model.stage2.grouped[0].out_channels == 32


class _TorchRunner:
    """parity()'s backend side, played by the torch model itself: ONNX Runtime vs torch."""

    def __init__(self, model):
        self.model = model.eval()
        self.device = types.SimpleNamespace(precision="fp32")

    def outputs(self, path, x):
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("name", zoo.ZOO)
def test_searched_plan_prunes_exports_and_runs(name, tmp_path):
    spec = zoo.spec(name)
    with get_backend(FAKE) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        predictor = Predictor(spec, backend, lut, tmp_path)
        rng = np.random.default_rng(0)
        scores = {g.name: rng.random(g.channels) for g in predictor.groups}
        groups = predictor.groups
        space = SearchSpace.build(
            predictor, scores, calibration=[{g.name: g.channels for g in groups}, uniform_plan(groups, 0.5, 4)]
        )
        assert all(c % g.multiple == 0 for g in groups for c in space.candidates[g.name])
        result = get_searcher("knapsack").search(space, Budget(fraction=0.7), max_rounds=2)
    keep = result["keep_channels"]
    assert set(keep) == {g.name for g in groups}
    assert result["measured_ms"] < result["baseline_ms"]
    assert any(keep[g.name] < g.channels for g in groups)

    torch.manual_seed(0)
    model = build_model(model_spec(spec))
    GroupPruner(model, SHAPE).prune_to(keep)
    assert _channels(model) == keep
    assert _forward(model) == (2, 10)

    export = onnx_from_torch(model, tmp_path / "pruned.onnx", SHAPE)
    x = np.random.default_rng(1).standard_normal((4, *SHAPE)).astype(np.float32)
    figures = parity(_TorchRunner(model), export.path, x, batch=1)
    assert figures["ok"] and figures["images"] == 4 and figures["top1_agreement"] == 1.0

    with get_backend(Device("cpu-zoo", "ort", batch=1, threads=1)) as ort:
        ms = ort.measure(export.path, rounds=3).median_ms
    assert math.isfinite(ms) and ms > 0


def test_grouped_conv_inputs_are_pruned_by_the_same_positions_in_every_block():
    """Pruning a grouped conv's inputs must equal zeroing them: Torch-Pruning slices a grouped conv's input
    weights by the first block's kept positions, which is right only when every block keeps the same ones
    (scores that pick a different channel in each block once gave wrong outputs, or an index error)."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.g, self.fc = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=4), nn.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.g(self.a(x)).mean((2, 3)))

    torch.manual_seed(0)
    model, ref, x = Net(), Net(), torch.randn(2, 3, 8, 8)
    ref.load_state_dict(model.state_dict())
    pruner = GroupPruner(model, (3, 8, 8))
    scores = {"a": np.array([0, 9, 9, 9, 9, 0, 9, 9, 9, 9, 0, 9, 9, 9, 9, 1], float), "g": np.ones(16)}
    pruner.prune_to({"a": 12}, scores=scores)
    drop = next(idx for name, out, idx in pruner.history() if name == "a" and out)
    assert drop == [0, 4, 8, 12]  # position 0 has the smallest summed score
    with torch.no_grad():
        ref.a.weight[drop] = 0
        ref.a.bias[drop] = 0
        assert model.g.weight.shape == (16, 3, 3, 3)
        assert torch.allclose(model(x), ref(x), atol=1e-6)


def test_a_grouped_conv_reading_part_of_a_concat_is_kept_whole(caplog):
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 16, 3, padding=1)
            self.g = nn.Conv2d(32, 32, 3, padding=1, groups=4)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            return self.fc(self.g(torch.cat([self.a(x), self.b(x)], 1)).mean((2, 3)))

    with caplog.at_level("INFO", logger="trtprune.pruning.prune"):
        pruner = GroupPruner(Net(), SHAPE)
        assert [g.name for g in pruner.groups()] == ["g"]
    assert pruner.kept_whole() == ["a", "b"]
    assert sum("kept whole" in r.message for r in caplog.records) == 2  # one line per group


def test_cli_prunes_a_user_network_with_ignored_layers(tmp_path, capsys):
    from tests.conftest import cli

    out, weights = tmp_path / "p.pt", tmp_path / "w.pt"
    torch.save(zoo.resnext_se_net().state_dict(), weights)
    model = ["--model", zoo.spec("resnext_se_net"), "--weights", weights]
    code, stdout, err = cli(
        capsys, "prune", *model, "--ratio", "0.5", "--importance", "l1", "--ignore", "stage1.se", "-o", out
    )
    assert code == 0, err
    plan = __import__("json").loads(out.with_suffix(".plan.json").read_text())["keep_channels"]
    assert "stage1.se.reduce" not in plan and plan["stage2.se.reduce"] == 8 and plan["stage2.grouped.0"] == 32
    code, _, err = cli(capsys, "prune", *model, "--ignore", "stem.9", "-o", out)
    assert code == 2 and "'stem.9', which is not a module" in err and "stem.0" in err and "Traceback" not in err


def test_a_grouped_conv_at_one_channel_per_group_is_planned_as_the_depthwise_conv_it_becomes(tmp_path):
    """A 4-group conv pruned to 4 channels exports as a depthwise conv; the planned layers must say so
    (a cpu search of resnext_se_net stopped on it)."""
    with get_backend(FAKE) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        predictor = Predictor(zoo.spec("resnext_se_net"), backend, lut, tmp_path)
        keep = {"stage1.reduce.0": 4, "stage1.grouped.0": 4}
        predictor.subnet(keep, tmp_path / "sub.onnx")  # raises if the exported layers differ from the plan
        sig, cin, cout = predictor.points(keep)[list(predictor.layers).index("stage1.grouped.0")]
        assert (sig.depthwise, sig.groups, cin, cout) == (True, 1, 4, 4)
