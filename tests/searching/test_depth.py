"""Depth before width on the fake engine: blocks taken while the network stays above the budget, channels after.

On ResNet-14 (two blocks per stage: a removable one in each stage, four in all), the smallest CIFAR ResNet on which
the depth search has a choice in every stage."""

import pytest
import torch

from tests.conftest import cli
from tests.small_models import RESNET14, resnet14
from trtprune.latency import get_backend
from trtprune.latency.devices import Device
from trtprune.pruning.blocks import removable_blocks
from trtprune.searching import Budget, Plan
from trtprune.searching.depth import DepthSearch
from trtprune.searching.runner import prune_with_data, search
from trtprune.sources.datasets import synthetic_cifar10
from trtprune.sources.images import as_images
from trtprune.sources.weights import load_model

FAKE = Device("fake-test", "fake")


@pytest.fixture(scope="module")
def r14():
    torch.manual_seed(0)
    return resnet14().eval()


@pytest.fixture(scope="module")
def train():
    x, y = synthetic_cifar10(300, 1)
    return as_images((x, y))


def test_blocks_stop_where_one_more_would_meet_the_budget(r14, train, tmp_path):
    budget = Budget(fraction=0.75)
    with get_backend(FAKE) as backend:
        d = DepthSearch(r14, (3, 32, 32), backend, tmp_path).search(budget, train, (0.5,) * 3, (0.25,) * 3)
    assert 0 < len(d.removed) < 4
    assert d.measured_ms > budget.target_ms(d.baseline_ms)  # still above: channels close the rest
    by_k = {s["removed"]: s for s in d.steps}
    assert by_k[len(d.removed) + 1]["ratio"] <= 0.75  # one more block was measured, and met the budget
    assert set(d.drop) == set(d.saving_ms) == {b.name for b in removable_blocks(r14, (3, 32, 32))}
    # the order is the proxy drop per ms saved
    keys = [d.drop[n] / d.saving_ms[n] for n in d.removed]
    rest = [d.drop[n] / d.saving_ms[n] for n in d.drop if n not in d.removed]
    assert max(keys) <= min(rest)
    left = d.channel_budget(budget)
    assert left.fraction == pytest.approx(0.75 * d.baseline_ms / d.measured_ms)
    assert r14.layer1[0].__class__.__name__ == "BasicBlock"  # the caller's model is left as it is
    # one measured saving per kind of block: blocks of one stage are the same layers on the same input
    assert d.saving_ms["layer1.0"] == d.saving_ms["layer1.1"]
    assert all(v > 0 for v in d.saving_ms.values())


def test_search_removes_blocks_then_prunes_channels(tiny_data, tmp_path, monkeypatch):
    """Blocks first, then channels; when the two together measure above the budget (here the first measurement
    of the pair drifts 10 % up, as measurements of separate runs do by a few percent), the channels are searched
    again under a budget tightened by the excess, and the plan kept is the one that measured within it."""
    from trtprune.searching import runner

    real, pairs = runner._measure_pair, []

    def drifting(*args):
        base, sub = real(*args)
        pairs.append((base, sub))
        return (base, sub * 1.1) if len(pairs) == 1 else (base, sub)

    monkeypatch.setattr(runner, "_measure_pair", drifting)
    device = FAKE
    plan = search(
        RESNET14,
        None,
        device,
        Budget(fraction=0.6),
        "locp",
        workdir=tmp_path,
        lut_path=tmp_path / "lut.sqlite",
        data=str(tiny_data),
    )
    assert plan.budget == "0.6x" and plan.measured_ms <= 0.6 * plan.baseline_ms * 1.01
    assert plan.remove_blocks and plan.meta["depth"]["removed"] == plan.remove_blocks
    assert plan.meta["channel_budget"] != "0.6x"
    assert len(pairs) == 2 and plan.meta["retries"] == 1 and plan.meta["met"]
    assert pairs[1][1] <= pairs[0][1] and Budget.from_text(plan.meta["channel_budget"]).fraction < 1
    plan.save(tmp_path / "plan.json")
    plan = Plan.load(tmp_path / "plan.json")
    model, spec = load_model(RESNET14)
    prune_with_data(model, spec, plan, "fisher", str(tiny_data))
    for name in plan.remove_blocks:
        assert type(model.get_submodule(name)).__name__ == "Identity"


def test_cli_search_no_depth_keeps_every_block(tiny_data, tmp_path, capsys, monkeypatch):
    from trtprune.latency import devices

    monkeypatch.setitem(devices.DEVICES, "fake-test", FAKE)
    weights = tmp_path / "r14.pt"
    torch.save(resnet14().state_dict(), weights)  # the CLI refuses a model that was never trained
    code, out, err = cli(
        capsys,
        "search",
        "--model",
        RESNET14,
        "--weights",
        weights,
        "--device",
        "fake-test",
        "--budget",
        "0.6x",
        "--no-depth",
        "-o",
        tmp_path / "plan.json",
        "--data",
        tiny_data,
        "--lut",
        tmp_path / "lut.sqlite",
    )
    assert code == 0, err
    assert Plan.load(tmp_path / "plan.json").remove_blocks == []
