"""Image classification, the default task: cross-entropy on integer labels, top-1 (and top-5) accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trtprune.metrics import accuracy_torch, check_labels, check_outputs
from trtprune.outputs import logits_of
from trtprune.tasks.base import Task, kl_distillation


class Classification(Task):
    name = "classification"
    metric_name = "top-1 (%)"
    metric_key = "top1"

    def loss(self, outputs, targets) -> torch.Tensor:
        logits = logits_of(outputs)
        try:
            return F.cross_entropy(logits, targets)
        except IndexError:  # a label beyond the model's scores, in a batch after the first
            check_labels(targets.cpu(), logits.shape[-1], "the model")
            raise

    def distill(self, student, teacher, temperature: float) -> torch.Tensor:
        return kl_distillation(logits_of(student), logits_of(teacher, "the dense model"), temperature)

    def check(self, outputs, targets, images) -> None:
        logits = logits_of(outputs)
        check_outputs(tuple(logits.shape), "the model", images.num_classes or logits.shape[-1], images)
        if isinstance(targets, torch.Tensor):
            check_labels(targets.cpu(), logits.shape[-1], "the model", images)

    def evaluate(self, model, images, mean, std) -> dict[str, float]:
        return accuracy_torch(model, images, mean, std)
