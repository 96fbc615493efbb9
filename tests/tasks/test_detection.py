"""COCO mAP through pycocotools' evaluator, on boxes whose answer is known by hand."""

import pytest
import torch

pytest.importorskip("pycocotools", reason="pycocotools absent: pip install -e '.[detect]'")

from trtprune.errors import TrtpruneError  # noqa: E402
from trtprune.tasks.detection import MeanAveragePrecision  # noqa: E402

TRUTH = [{"boxes": torch.tensor([[10.0, 10, 50, 50], [60, 60, 90, 90]]), "labels": torch.tensor([0, 1])}]


def test_perfect_boxes_score_100():
    m = MeanAveragePrecision()
    m.update([{**TRUTH[0], "scores": torch.tensor([0.9, 0.8])}], TRUTH)
    assert m.compute() == pytest.approx({"map": 100.0, "map50": 100.0, "map75": 100.0})


def test_a_shifted_box_and_a_missed_one():
    # class 0 shifted by 2 px: IoU 1444 / 1756 = 0.82, a hit at the thresholds 0.50 .. 0.80 (7 of 10); class 1 missed
    m = MeanAveragePrecision()
    shifted = {"boxes": torch.tensor([[12.0, 12, 52, 52]]), "scores": torch.tensor([0.9]), "labels": torch.tensor([0])}
    m.update([shifted], TRUTH)
    assert m.compute() == pytest.approx({"map": 35.0, "map50": 50.0, "map75": 50.0})


def test_no_detections_score_0_and_no_truth_is_an_error():
    m = MeanAveragePrecision()
    m.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}], TRUTH)
    assert m.compute()["map"] == 0.0
    empty = MeanAveragePrecision()
    empty.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0)}],
                 [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}])  # fmt: skip
    with pytest.raises(TrtpruneError, match="no ground-truth boxes"):
        empty.compute()
