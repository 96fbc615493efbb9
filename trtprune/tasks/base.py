"""A task: how a model's outputs are scored against the targets of a batch, and how good a model is.

Every stage that trains, scores or evaluates goes through one (fine-tuning and distillation, data-driven importance,
the accuracy proxy of the searches, evaluation, the report):

* ``loss(outputs, targets)``: one scalar tensor per batch, for fine-tuning and the gradient-based importance
  criteria (taylor, fisher, dynamic). ``outputs`` are what the model returns (a tensor, tuple, list or dict),
  ``targets`` what the data gives with the inputs, moved to the model's device.
* ``evaluate(model, images, mean, std)``: ``{metric_key: value, ...}``, higher is better; the value under
  ``metric_key`` is the one the proxy ranks plans by and the report shows, named ``metric_name``.
* ``distill(student, teacher, temperature)``: how far the pruned model's outputs are from the dense model's.
* ``check(outputs, targets, images)``: on the first batch, that the outputs fit the targets (a clear message
  instead of an error deep inside the loss).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from trtprune.errors import TrtpruneError
from trtprune.outputs import output_leaves


def kl_distillation(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: KL between softened class distributions (dimension 1), scaled by T^2 to keep gradients
    comparable; per pixel for dense outputs (N, C, H, W), averaged over them."""
    t = temperature
    s, q = F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1)
    per_sample = F.kl_div(s, q, log_target=True, reduction="none").sum(1)
    return per_sample.mean() * t * t


def mse_distillation(student, teacher, temperature: float = 1.0) -> torch.Tensor:
    """The mean squared difference of every output tensor of the student and the teacher's output of the same name,
    summed over the outputs (regressions, feature maps). The teacher runs in eval mode, the student trains: a model
    whose eval outputs wrap its training ones (ultralytics' YOLO returns ``(predictions, training outputs)``) is
    paired by the key path that ends alike."""
    pairs = paired_outputs(student, teacher)
    return sum(F.mse_loss(s.float(), t.float()) for s, t in pairs)


def paired_outputs(student, teacher) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each student output with the teacher's output of the same key path, or of the path that ends with it."""
    import torch.utils._pytree as pytree

    output_leaves(student, "the pruned model")
    output_leaves(teacher, "the dense model")
    s_flat = pytree.tree_flatten_with_path(student)[0]
    t_flat = pytree.tree_flatten_with_path(teacher)[0]
    by_path = {tuple(p): v for p, v in t_flat}
    pairs = []
    for path, s in s_flat:
        path = tuple(path)
        t = by_path.get(path)
        if t is None or t.shape != s.shape:
            t = next((v for p, v in t_flat if tuple(p)[len(p) - len(path) :] == path and v.shape == s.shape), None)
        if t is None:
            raise TrtpruneError(
                f"no output of the dense model matches the pruned model's output{pytree.keystr(path)} "
                f"of shape {list(s.shape)}",
                why="distillation compares each output of the model being trained with the dense model's output of "
                "the same name and shape (the dense model runs in eval mode, which may return other outputs)",
                fix="give the task a distill(student_outputs, teacher_outputs) function, or fine-tune without "
                "distillation (--distill 0)",
            )
        pairs.append((s, t))
    return pairs


class Task:
    """The scoring of one kind of model; see the module's docstring."""

    name = "task"
    metric_name = "metric"  # shown in reports: "top-1 (%)", "mIoU (%)", "mAP50-95"
    metric_key = "metric"  # the key of evaluate()'s value in records and reports
    images_metric = True  # evaluate() reads the images it is given (False: the task holds its own validation data)

    def loss(self, outputs, targets) -> torch.Tensor:
        raise NotImplementedError

    def evaluate(self, model, images, mean, std) -> dict[str, float]:
        raise NotImplementedError

    def distill(self, student, teacher, temperature: float) -> torch.Tensor:
        return mse_distillation(student, teacher, temperature)

    def check(self, outputs, targets, images) -> None:
        output_leaves(outputs)

    def metric(self, model, images, mean, std) -> float:
        return self.evaluate(model, images, mean, std)[self.metric_key]

    def to_dict(self) -> dict:
        return {"task": self.name, "metric": self.metric_name, "metric_key": self.metric_key}


def checked_loss(value, what: str = "the task's loss") -> torch.Tensor:
    """``value`` if it is a scalar tensor that carries a gradient; else the error saying what it is."""
    if not isinstance(value, torch.Tensor):
        raise TrtpruneError(
            f"{what} returned {type(value).__name__}, not a tensor",
            why="fine-tuning and the gradient-based importance criteria differentiate the loss",
            fix="return the loss as a scalar tensor computed from the outputs (not loss.item() or a float)",
        )
    if value.numel() != 1:
        raise TrtpruneError(
            f"{what} returned a tensor of shape {list(value.shape)}, not one number",
            why="the loss of a batch is one scalar: trtprune steps the optimizer on its gradient",
            fix="reduce it: return loss.mean() (or .sum())",
        )
    if not value.requires_grad:
        raise TrtpruneError(
            f"{what} returned a tensor without a gradient",
            why="it was not computed from the model's outputs (or under torch.no_grad(), or detached)",
            fix="compute the loss from the outputs it is given, with autograd on",
        )
    return value.reshape(())


def checked_metric(value, what: str = "the task's metric") -> float:
    """``value`` as a finite float; else the error saying what it is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or isinstance(value, bool) or not math.isfinite(number):
        raise TrtpruneError(
            f"{what} returned {value!r}, not a finite number",
            why="searches rank plans by it and the report compares it between models (higher is better)",
            fix="make metric(model) return a float, e.g. mAP50-95 or top-1 on your validation data; a NaN usually "
            "means no validation images were read or the model predicted nothing",
        )
    return number
