"""Detection metrics for task files: COCO mean average precision, computed by pycocotools' own evaluator.

A detector's loss belongs to its head (ultralytics' ``v8DetectionLoss``, torchvision's, your own): a detection task
file gives it; this module gives the metric, so that no mAP is written by hand. ``MeanAveragePrecision`` collects
per-image predictions and ground truth and hands them to ``pycocotools.cocoeval.COCOeval`` (the reference COCO
implementation; ``pip install "trtprune[detect]"``). Boxes are ``xyxy`` in pixels. (torchmetrics' class of the same
name needs torchvision, which this project does not install.)
"""

from __future__ import annotations

import contextlib
import io

import numpy as np

from trtprune.errors import TrtpruneError


def _coco():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as e:
        raise TrtpruneError(
            "detection metrics need pycocotools", fix='pip install "trtprune[detect]" (or pip install pycocotools)'
        ) from e
    return COCO, COCOeval


def _array(v, shape_tail: tuple[int, ...] = ()) -> np.ndarray:
    a = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    return a.reshape(-1, *shape_tail).astype(np.float64)


class MeanAveragePrecision:
    """COCO box mAP over the images given to :meth:`update`; :meth:`compute` gives percentages."""

    def __init__(self):
        self.images: list[tuple[dict, dict]] = []

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Per image: ``predictions[i]`` with ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``labels`` (N,); ``targets[i]``
        with ``boxes`` and ``labels``."""
        if len(predictions) != len(targets):
            raise TrtpruneError(f"{len(predictions)} predictions for {len(targets)} images: give one per image")
        self.images += list(zip(predictions, targets))

    def compute(self) -> dict[str, float]:
        """``map`` (mAP50-95), ``map50`` and ``map75``, in percent."""
        COCO, COCOeval = _coco()
        images, annotations, detections, labels = [], [], [], set()
        for i, (pred, target) in enumerate(self.images):
            images.append({"id": i})
            for box, label in zip(_array(target["boxes"], (4,)), _array(target["labels"])):
                x0, y0, x1, y1 = box
                labels.add(int(label))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": int(label),
                        "iscrowd": 0,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "area": float((x1 - x0) * (y1 - y0)),
                    }  # fmt: skip
                )
            boxes, scores = _array(pred["boxes"], (4,)), _array(pred["scores"])
            for box, score, label in zip(boxes, scores, _array(pred["labels"])):
                x0, y0, x1, y1 = box
                labels.add(int(label))
                detections.append(
                    {"image_id": i, "category_id": int(label), "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
                )
        if not annotations:
            raise TrtpruneError("no ground-truth boxes to evaluate mAP on", fix="give validation images with objects")
        if not detections:
            return {"map": 0.0, "map50": 0.0, "map75": 0.0}
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary
            truth = COCO()
            truth.dataset = {"images": images, "annotations": annotations,
                             "categories": [{"id": c} for c in sorted(labels)]}  # fmt: skip
            truth.createIndex()
            found = truth.loadRes(detections)
            e = COCOeval(truth, found, "bbox")
            e.evaluate()
            e.accumulate()
            e.summarize()
        stats = [max(float(s), 0.0) for s in e.stats[:3]]  # -1 where a category had no ground truth
        return {"map": 100 * stats[0], "map50": 100 * stats[1], "map75": 100 * stats[2]}
