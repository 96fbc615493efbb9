"""Image classification, the default task: cross-entropy on integer labels, top-1 (and top-5) accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trtprune.errors import TrtpruneError
from trtprune.metrics import accuracy_torch, check_labels, check_outputs
from trtprune.outputs import output_leaves
from trtprune.tasks.base import Task, kl_distillation


def logits_of(outputs, what: str = "the model") -> torch.Tensor:
    """A classifier's one tensor of logits; a model returning several is not one."""
    leaves = output_leaves(outputs, what)
    if len(leaves) != 1:
        raise TrtpruneError(
            f"{what} returns {len(leaves)} tensors ({', '.join(n for n, _ in leaves)}), not one row of class scores "
            "per image",
            why="the classification task (the default) compares the model's logits with integer labels",
            fix="give the task of your model (--task file.py:task, API loss=/metric=), or a model returning logits",
        )
    return leaves[0][1]


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
