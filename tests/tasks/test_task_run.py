"""`trtprune run --task file.py:task` on a detector and a segmenter: every stage through the user's task, the
report measured side by side and scored by the task's metric."""

import json

import pytest
import torch

from tests.task_models import DETECTOR, UNET, TinyDetector, TinyUNet
from tests.tasks.test_tasks import TASK_FILE
from trtprune.cli import main

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    "model, factory, shape, task, metric",
    [
        (DETECTOR, TinyDetector, "3x64x64", "detector_task", "cell accuracy (%)"),
        (UNET, TinyUNet, "3x32x32", "segmentation_task", "mIoU (%)"),
    ],
)
def test_run_with_a_task_file(tmp_path, model, factory, shape, task, metric):
    torch.manual_seed(0)
    weights = tmp_path / "dense.pt"
    torch.save(factory().state_dict(), weights)
    args = ["run", "--model", model, "--weights", str(weights), "--input-shape", shape, "--task",
            f"{TASK_FILE}:{task}", "--budget", "0.7x", "--epochs", "1", "--batch-size", "32", "--recalibrate", "64",
            "--runs-dir", str(tmp_path / "runs"), "--engines-dir", str(tmp_path / "engines"),
            "--lut", str(tmp_path / "lut.sqlite"), "--name", "r", "--json"]  # fmt: skip
    assert main(args) in (0, 3)  # 3: measured over the budget in the report's own run (a loaded machine)
    report = json.loads((tmp_path / "runs" / "r" / "report.json").read_text())
    key = report["task"]["metric_key"]
    assert report["task"]["metric"] == metric
    for role in ("baseline", "pruned"):
        assert 0 <= report[role][key] <= 100 and report[role]["latency"]["median_ms"] > 0
    assert report["pruned"]["macs"] < report["baseline"]["macs"]
    assert (tmp_path / "engines" / "r.onnx").is_file()
    text = (tmp_path / "runs" / "r" / "report.md").read_text()
    assert metric in text and "top-1" not in text
    records = report["finetune"]["records"]
    assert len(records) == 1 and key in records[0]
