"""Models that return several tensors: naming, grouping, pruning, export with parity on every output, measuring."""

import numpy as np
import pytest
import torch
from torch import nn

from tests.task_models import TinyDetector, TinyUNet
from trtprune.deploy.export import onnx_from_torch, run_onnx_all
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.outputs import model_failed, output_leaves, to_device
from trtprune.pruning.prune import GroupPruner, uniform_plan


def test_outputs_are_named_in_the_exporters_order():
    t = torch.zeros(1)
    assert [n for n, _ in output_leaves(t)] == ["logits"]
    assert [n for n, _ in output_leaves((t, [t, t]))] == ["output0", "output1_0", "output1_1"]
    nested = (t, {"boxes": t, "feats": [t, t], "a-b": t})
    assert [n for n, _ in output_leaves(nested)] == ["output0", "output1_boxes", "output1_feats_0", "output1_feats_1",
                                                     "output1_a_b"]  # fmt: skip


@pytest.mark.parametrize(
    "out, found",
    [
        ({"boxes": torch.zeros(1), "n": 3}, "int at output['n']"),
        ((torch.zeros(1), None), "NoneType at output[1]"),
        ([], "nothing"),
    ],  # fmt: skip
)
def test_outputs_other_than_tensors_are_refused_naming_them(out, found):
    with pytest.raises(TrtpruneError, match="returns .* holding " + found.replace("[", r"\[").replace("]", r"\]")):
        output_leaves(out)


def test_targets_of_any_structure_move_to_the_device():
    y = {"boxes": torch.zeros(2, 4), "ids": [torch.ones(2)], "name": "x"}
    assert to_device(y, "cpu")["name"] == "x" and to_device(y, "cpu")["ids"][0].device.type == "cpu"


def test_a_failing_model_gets_the_advice_that_fits():
    class Two(nn.Module):
        def forward(self, x, mask):
            return x

    with pytest.raises(TrtpruneError, match="more than one input"):
        GroupPruner(Two(), (3, 8, 8))
    half = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()).half()
    assert (
        "model.float()"
        in model_failed(half, RuntimeError("Input type and bias type should be the same"), (1, 3, 8, 8)).fix
    )
    small = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
    with pytest.raises(TrtpruneError, match="input shape does not fit"):
        GroupPruner(small, (3, 16, 16))  # mat1 and mat2 shapes cannot be multiplied


@pytest.mark.parametrize("returns", ["tuple", "list", "dict"])
def test_a_detector_keeps_every_output_layer_and_prunes_the_rest(returns, tmp_path):
    torch.manual_seed(0)
    model = TinyDetector(returns=returns)
    pruner = GroupPruner(model, (3, 64, 64))
    groups = {g.name: g for g in pruner.groups()}
    # the last convs of the box and class branches make the outputs: kept; the convs before them are groups
    assert not any(n.endswith(".1") and n.startswith(("box", "cls")) for n in groups)
    assert {"box.0.0.0", "cls.1.0.0", "neck.cv2.0", "p4.2.cv1.0"} <= set(groups)
    # the C2f-like split read by the bottleneck, its residual add and the concat: Torch-Pruning maps it wrongly
    assert pruner.kept_whole() == ["p3.1.m.1.0", "p4.1.m.1.0", "neck.m.1.0"]
    shapes = [tuple(t.shape) for _, t in output_leaves(model.eval()(torch.zeros(1, 3, 64, 64)))]
    pruner.prune_to(uniform_plan(list(groups.values()), 0.5))
    out = model(torch.zeros(1, 3, 64, 64))
    assert [tuple(t.shape) for _, t in output_leaves(out)] == shapes
    assert model.neck.cv2[0].out_channels == 16 and model.box[0][0][0].out_channels == 16
    e = onnx_from_torch(model, tmp_path / "det.onnx", (3, 64, 64), batch=2)
    assert e.outputs == (("p3", "p4") if returns == "dict" else ("output0", "output1"))
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = [t.numpy() for _, t in output_leaves(model(torch.from_numpy(x)))]
    for got, ref in zip(run_onnx_all(e.path, x), expected):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_parity_is_checked_on_every_output(tmp_path, monkeypatch):
    from trtprune.deploy import export as E

    real = E.ort_session

    class SecondWrong:  # the first output right, the second computed otherwise
        def __init__(self, path, threads):
            self.s = real(path, threads)

        def __getattr__(self, name):
            return getattr(self.s, name)

        def run(self, names, feed):
            a, b = self.s.run(names, feed)
            return [a, b + 1.0]

    monkeypatch.setattr(E, "ort_session", SecondWrong)
    with pytest.raises(TrtpruneError, match="on output 'output1'"):
        onnx_from_torch(TinyDetector(), tmp_path / "m.onnx", (3, 64, 64))
    assert not (tmp_path / "m.onnx").exists()


def test_a_unet_prunes_through_its_skip_concats_and_measures(tmp_path):
    torch.manual_seed(0)
    model = TinyUNet(classes=4)
    base = onnx_from_torch(model, tmp_path / "base.onnx", (3, 32, 32)).path
    pruner = GroupPruner(model, (3, 32, 32))
    assert [g.name for g in pruner.groups()] == ["enc1.0", "enc2.1.0", "enc2.2.0", "bottom.1.0", "dec2.0", "dec1.0"]
    pruner.prune_to(uniform_plan(pruner.groups(), 0.5))
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 4, 32, 32)
    pruned = onnx_from_torch(model, tmp_path / "pruned.onnx", (3, 32, 32)).path
    with get_backend(get_device("cpu")) as backend:
        timings = backend.compare([base, pruned], rounds=3)
    assert len(timings) == 2 and all(t.median_ms > 0 for t in timings)
