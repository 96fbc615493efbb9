"""YOLO through trtprune: an ultralytics detector pruned on the latency stairs of the device, fine-tuned with
ultralytics' own detection loss, scored by COCO mAP50-95 (pycocotools).

    pip install ultralytics pycocotools -c <(echo "torch==$(python -c 'import torch; print(torch.__version__)')")
    python examples/yolo_task.py --train dense.pt        # optional: train the dense detector on this data first
    trtprune run --model examples/yolo_task.py:yolov8n --weights dense.pt --input-shape 3x320x320 \\
        --task examples/yolo_task.py:task --budget 0.5x --epochs 10

``task`` is what ``--task`` names: ``loss(outputs, targets)``, ``metric(model)``, ``metric_name`` and ``loaders``.
The data is a detection set made from CIFAR-10 (trtprune.sources.pasted: photos pasted onto photos, boxes known),
read from ``$TRTPRUNE_DATA`` as every trtprune command reads CIFAR-10; replace ``loaders`` with your own dataset's
(images as float 0..1 NCHW, targets as below). ultralytics is AGPL-3.0: this example imports it, trtprune never does.

Targets, per batch: ``{"batch_idx": (K,), "cls": (K, 1), "bboxes": (K, 4) centre x, y, width, height in 0..1}``,
ultralytics' own format, for its ``v8DetectionLoss``; the metric reads ``boxes`` (xyxy pixels) and ``labels`` too.
"""

from __future__ import annotations

import argparse
import os

import torch
from torch.utils.data import DataLoader
from ultralytics.cfg import get_cfg
from ultralytics.nn.tasks import DetectionModel
from ultralytics.utils.loss import v8DetectionLoss
from ultralytics.utils.nms import non_max_suppression

from trtprune.sources.pasted import PastedObjects
from trtprune.tasks.detection import MeanAveragePrecision

SIZE = 320  # the input side; --input-shape 3x320x320
CLASSES = 10  # CIFAR-10's
TRAIN_IMAGES, VAL_IMAGES = 4000, 500  # canvases made from CIFAR-10's training and test photos
BATCH = 16


def detector(yaml: str) -> DetectionModel:
    return DetectionModel(yaml, nc=CLASSES, verbose=False)


def yolov8n() -> DetectionModel:
    return detector("yolov8n.yaml")


def yolo11n() -> DetectionModel:
    return detector("yolo11n.yaml")


def collate(items):
    """Stacked images; the boxes of every image in ultralytics' training format and as xyxy pixels."""
    images = torch.stack([img for img, _ in items])
    ids, cls, boxes, pixels, labels = [], [], [], [], []
    for i, (img, t) in enumerate(items):
        b = t["boxes"]
        size = torch.tensor([img.shape[2], img.shape[1]] * 2, dtype=torch.float32)
        centre = torch.cat([(b[:, :2] + b[:, 2:]) / 2, b[:, 2:] - b[:, :2]], 1) / size
        ids.append(torch.full((len(b),), float(i)))
        cls.append(t["labels"].float()[:, None])
        boxes.append(centre)
        pixels.append(b)
        labels.append(t["labels"])
    targets = {"batch_idx": torch.cat(ids), "cls": torch.cat(cls), "bboxes": torch.cat(boxes),
               "boxes": pixels, "labels": labels}  # fmt: skip
    return images, targets


class YoloTask:
    """A detection task over ``(x, y)`` photos (CIFAR-10's by default, from ``$TRTPRUNE_DATA``)."""

    metric_name = "mAP50-95"

    def __init__(self, train=None, val=None, size: int = SIZE, n_train: int = TRAIN_IMAGES, n_val: int = VAL_IMAGES,
                 batch: int = BATCH):  # fmt: skip
        self._photos, self.size, self.n, self.batch = (train, val), size, (n_train, n_val), batch
        self._loaders = None
        template = detector("yolov8n.yaml")  # the head's strides, classes and box bins (YOLO11n's are the same)
        template.args = get_cfg()  # the loss's gains (box 7.5, cls 0.5, dfl 1.5), as ultralytics' trainer sets them
        self._criterion = v8DetectionLoss(template)

    def loaders(self):
        if self._loaders is None:
            train, val = self._photos
            if train is None:
                from trtprune.sources import fetch
                from trtprune.sources.datasets import ensure_cifar10, load_cifar10

                root = ensure_cifar10(*fetch.data_root(os.environ.get("TRTPRUNE_DATA")))
                train, val = load_cifar10(root, "train"), load_cifar10(root, "test")
            sets = [PastedObjects(*photos, n, self.size, seed) for photos, n, seed in zip((train, val), self.n, (0, 1))]
            train_set, val_set = sets  # training canvases in a seeded random order, validation in their own
            order = torch.Generator().manual_seed(0)
            self._loaders = (
                DataLoader(train_set, self.batch, shuffle=True, generator=order, collate_fn=collate),
                DataLoader(val_set, self.batch, shuffle=False, collate_fn=collate),
            )
        return self._loaders

    def loss(self, outputs, targets):
        total, _ = self._criterion(outputs, targets)  # (box, cls, dfl) x batch size, as ultralytics' trainer sums it
        return total.sum() / max(len(targets["boxes"]), 1)  # per image: steps that do not grow with the batch

    def metric(self, model) -> float:
        """COCO mAP50-95 (%) on the validation canvases, after ultralytics' NMS (its validator's thresholds)."""
        found = MeanAveragePrecision()
        model.eval()  # (trtprune calls it so; a training-mode YOLO returns its raw maps only)
        for images, targets in self.loaders()[1]:
            predictions = model(images)
            kept = non_max_suppression(predictions[0] if isinstance(predictions, (tuple, list)) else predictions,
                                       conf_thres=0.001, iou_thres=0.7, max_det=300)  # fmt: skip
            found.update(
                [{"boxes": k[:, :4], "scores": k[:, 4], "labels": k[:, 5].long()} for k in kept],
                [{"boxes": b, "labels": c} for b, c in zip(targets["boxes"], targets["labels"])],
            )
        return found.compute()["map"]


task = YoloTask()


def main() -> None:
    ap = argparse.ArgumentParser(description="train the dense detector on the pasted CIFAR-10 canvases")
    ap.add_argument("--model", default="yolov8n", choices=["yolov8n", "yolo11n"])
    ap.add_argument("--train", metavar="OUT.pt", required=True, help="state dict to write")
    ap.add_argument("--epochs", type=int, default=30)
    a = ap.parse_args()
    import trtprune

    model = globals()[a.model]()
    records = trtprune.finetune(
        model, task.loaders()[0], epochs=a.epochs, loss=task.loss, metric=task.metric, metric_name=task.metric_name,
        lr=0.01, warmup=1.0, checkpoint=a.train + ".ckpt",
    )  # fmt: skip
    torch.save(model.state_dict(), a.train)
    print(records[-1])


if __name__ == "__main__":
    main()
