"""Semantic segmentation: per-pixel cross-entropy and mean intersection over union (mIoU, in percent).

Targets are integer masks (N, H, W) with one class per pixel, ``IGNORE`` (255) for pixels that belong to none;
the model returns per-pixel class scores (N, classes, H, W), the largest one the predicted class. The mIoU is
computed from one confusion matrix over the whole evaluation set (as in Pascal VOC and Cityscapes), averaged over
the classes that occur in the targets or the predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trtprune.errors import TrtpruneError
from trtprune.log import progress
from trtprune.metrics import model_device
from trtprune.outputs import run_on, to_device
from trtprune.sources.images import as_images
from trtprune.tasks.base import Task, kl_distillation
from trtprune.tasks.classification import logits_of

IGNORE = 255  # the mask value of pixels that count for no class


def _scores(outputs, what: str = "the model") -> torch.Tensor:
    scores = logits_of(outputs, what)
    if scores.dim() != 4:
        raise TrtpruneError(
            f"{what} returns a tensor of shape {list(scores.shape)}, not per-pixel class scores (N, classes, H, W)",
            fix="give a segmentation model (its last layer a conv to the number of classes), or another task",
        )
    return scores


def confusion(pred: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """The (classes x classes) counts of target class (rows) predicted as each class (columns), ignored pixels out."""
    keep = target != IGNORE
    index = target[keep].long() * classes + pred[keep].long()
    return torch.bincount(index, minlength=classes * classes).reshape(classes, classes)


def miou(matrix: torch.Tensor) -> float:
    """Mean IoU in percent over the classes present in the targets or the predictions."""
    matrix = matrix.double()
    inter = matrix.diag()
    union = matrix.sum(0) + matrix.sum(1) - inter
    present = union > 0
    return float(100.0 * (inter[present] / union[present]).mean()) if present.any() else 0.0


class Segmentation(Task):
    name = "segmentation"
    metric_name = "mIoU (%)"
    metric_key = "miou"

    def loss(self, outputs, targets) -> torch.Tensor:
        return F.cross_entropy(_scores(outputs), targets.long(), ignore_index=IGNORE)

    def distill(self, student, teacher, temperature: float) -> torch.Tensor:
        return kl_distillation(_scores(student), _scores(teacher, "the dense model"), temperature)

    def check(self, outputs, targets, images) -> None:
        scores = _scores(outputs)
        if not isinstance(targets, torch.Tensor) or targets.dim() != 3 or targets.shape[1:] != scores.shape[2:]:
            found = list(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise TrtpruneError(
                f"the segmentation targets are {found}, but the model predicts masks of {list(scores.shape[2:])}",
                why="per-pixel cross-entropy compares one class index per pixel (N, H, W) with the model's scores "
                "(N, classes, H, W)",
                fix="give integer masks of the model's output size (255 for pixels of no class)",
            )
        top = int(targets[targets != IGNORE].max()) if (targets != IGNORE).any() else -1
        if top >= scores.shape[1]:
            raise TrtpruneError(
                f"the masks hold class {top}, but the model scores {scores.shape[1]} classes",
                fix=f"give a model with {top + 1} output channels, or masks of classes 0..{scores.shape[1] - 1}",
            )

    def evaluate(self, model, images, mean, std, batch_size: int = 64) -> dict[str, float]:
        images = as_images(images)
        device = model_device(model)
        model.eval()
        matrix = None
        with torch.no_grad():
            for xb, yb in progress(images.batches(batch_size, mean, std), desc="mIoU", unit="batch"):
                xb = xb.to(device)
                scores = _scores(run_on(model, xb, first=matrix is None)).float().cpu()
                if matrix is None:
                    self.check(scores, yb, images)
                    matrix = torch.zeros(scores.shape[1], scores.shape[1], dtype=torch.long)
                matrix += confusion(scores.argmax(1), to_device(yb, "cpu"), scores.shape[1])
        if matrix is None:
            raise TrtpruneError("no images to evaluate the model on", fix="give a dataset with images")
        pixels = int(matrix.sum())
        return {"miou": miou(matrix), "pixel_accuracy": 100.0 * float(matrix.diag().sum()) / max(pixels, 1)}
