"""Ultralytics YOLOv8n and YOLO11n (from their yaml, untrained: no weights can be downloaded here) through trtprune
at 3x320x320 on the `cpu` device: groups, a search on the device, pruning, export with parity on every output, a
side-by-side measurement; and `trtprune run --task` with the example's task file (ultralytics' own loss, COCO mAP).
ultralytics is AGPL-3.0: a test extra (`pip install -e '.[examples]'`), never imported by trtprune; skipped without."""

import copy
import dataclasses
import json
from pathlib import Path

import pytest
import torch

import trtprune
from trtprune.cli import main
from trtprune.latency import devices
from trtprune.outputs import output_leaves
from trtprune.pruning.prune import GroupPruner

ultralytics = pytest.importorskip("ultralytics", reason="ultralytics absent: pip install -e '.[examples]'")
from ultralytics.nn.tasks import DetectionModel  # noqa: E402

pytestmark = pytest.mark.slow
SHAPE = (3, 320, 320)
ROOT = Path(__file__).resolve().parents[1]

# per model: prunable groups, groups kept whole (the bottleneck after each C2f/C3k2 split; YOLO11n's C2PSA), and
# the engine its search runs on: YOLOv8n's on the real ONNX Runtime CPU engine from an empty latency table (2-4
# minutes on 2 cores), YOLO11n's on the fake engine (the same stages, seconds) to keep the suite short
EXPECTED = {
    "yolov8n.yaml": (36, 8, "cpu"),
    "yolo11n.yaml": (45, 11, "fake"),
}


@pytest.fixture(autouse=True)
def _ultralytics_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "ultralytics"))  # it writes a settings file there


@pytest.mark.parametrize("yaml", list(EXPECTED))
def test_yolo_groups_search_prune_export_measure(yaml, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = DetectionModel(yaml, nc=10, verbose=False)
    dense = copy.deepcopy(model)
    groups, whole = trtprune.groups(model, SHAPE), GroupPruner(model, SHAPE).kept_whole()
    n_groups, n_whole, engine = EXPECTED[yaml]
    assert (len(groups), len(whole)) == (n_groups, n_whole)
    head = model.model[-1]  # Detect: the last convs of its box and class branches make the outputs
    names = {g.name for g in groups}
    assert not any(n.startswith(f"model.{head.i}.cv2.") and n.endswith(".2") for n in names)
    assert not any(n.startswith(f"model.{head.i}.cv3.") and n.endswith(".2") for n in names)
    with monkeypatch.context() as m:  # the measurement below is ONNX Runtime's, whatever searched
        if engine == "fake":
            m.setitem(devices.DEVICES, "cpu", dataclasses.replace(devices.DEVICES["cpu"], backend="fake"))
        # the search (quick protocol, channels only: no data), from an empty latency table
        plan = trtprune.search(model, SHAPE, "cpu", "0.5x", importance="l1", quick=True, lut=tmp_path / "lut.sqlite")
    assert plan.meta["points_measured"] > 0 and plan.measured_ms < plan.baseline_ms
    trtprune.prune(model, plan, SHAPE, importance="l1")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in dense.parameters())
    with torch.no_grad():
        shapes = [t.shape for _, t in output_leaves(dense.eval()(torch.zeros(1, *SHAPE)))]
        after = [t.shape for _, t in output_leaves(model.eval()(torch.zeros(1, *SHAPE)))]
    assert after == shapes and len(shapes) == 6
    base = trtprune.export(dense, tmp_path / "dense.onnx", SHAPE)  # parity with torch on all six outputs
    pruned = trtprune.export(model, tmp_path / "pruned.onnx", SHAPE)
    assert pruned.outputs == base.outputs and pruned.outputs[0] == "output0"
    timings = trtprune.measure([base.path, pruned.path], "cpu", rounds=5)
    assert len(timings) == 2 and all(t.n > 0 for t in timings)


@pytest.mark.parametrize("name", ["yolov8n", "yolo11n"])
def test_trtprune_run_with_the_yolo_task_file(name, tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "dense.pt"
    torch.save(DetectionModel(f"{name}.yaml", nc=10, verbose=False).state_dict(), weights)
    args = ["run", "--model", f"{ROOT / 'examples' / 'yolo_task.py'}:{name}", "--weights", str(weights),
            "--input-shape", "3x320x320", "--task", f"{ROOT / 'tests' / 'yolo_files.py'}:task", "--budget", "none",
            "--ratio", "0.5", "--importance", "l1", "--epochs", "1", "--batch-size", "8", "--recalibrate", "8",
            "--runs-dir", str(tmp_path / "runs"), "--engines-dir", str(tmp_path / "engines"),
            "--name", "y"]  # fmt: skip
    assert main(args) == 0
    report = json.loads((tmp_path / "runs" / "y" / "report.json").read_text())
    assert report["task"]["metric"] == "mAP50-95"
    assert 0 <= report["pruned"]["metric"] <= 100 and report["pruned"]["macs"] < report["baseline"]["macs"]
    assert (tmp_path / "engines" / "y.onnx").is_file()
    assert "mAP50-95" in (tmp_path / "runs" / "y" / "report.md").read_text()
