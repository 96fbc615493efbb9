"""Against the real CIFAR-10 test set and the published checkpoints (skipped when they are absent)."""

import pytest

from trtprune.cli import main
from trtprune.deploy.export import onnx_from_torch
from trtprune.metrics import top1_onnx, top1_torch
from trtprune.pruning.prune import GroupPruner
from trtprune.sources.datasets import load_cifar10
from trtprune.sources.weights import load_model

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


@pytest.mark.parametrize("model,top1", [("resnet20", "91.73"), ("resnet56", "93.39")])
def test_published_accuracy_through_trtprune_eval(real_data, capsys, model, top1):
    assert main(["eval", "--data", str(real_data), "--model", model]) == 0
    assert f"top-1 {top1} % on 10,000 test images" in capsys.readouterr().out


def test_the_onnx_export_keeps_the_accuracy(real_data, tmp_path):
    model, spec = load_model("resnet20", real_data / "weights" / "resnet20-12fca82f.th")
    x, y = load_cifar10(real_data, "test")
    e = onnx_from_torch(model, tmp_path / "r20.onnx", spec.input_shape, batch=250)
    assert e.max_abs_diff < 1e-4
    assert top1_onnx(tmp_path / "r20.onnx", (x, y), spec.mean, spec.std) == pytest.approx(91.73, abs=0.02)


def test_a_prune_that_removes_nothing_keeps_the_accuracy_exactly(real_data):
    model, spec = load_model("resnet20", real_data / "weights" / "resnet20-12fca82f.th")
    pruner = GroupPruner(model, spec.input_shape)
    pruner.prune_to({g.name: g.channels for g in pruner.groups()})
    x, y = load_cifar10(real_data, "test")
    assert top1_torch(model, (x, y), spec.mean, spec.std) == 91.73
