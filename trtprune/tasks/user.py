"""The user's own task: a loss, a metric and the rest given as callables (API) or as an object in a Python file
(``--task file.py:task``), over a built-in task for whatever is not given.

``metric(model) -> float`` closes over the user's own validation data (as NVIDIA Model Optimizer's
``score_func`` does): trtprune calls it on the model to score - the dense one, a candidate of a search after its
BatchNorm statistics were re-estimated on training batches, the fine-tuned one, and the delivered ONNX model
(wrapped as a module that runs ONNX Runtime: :class:`trtprune.tasks.onnx_module.OnnxModule`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from trtprune.errors import TrtpruneError
from trtprune.tasks.base import Task, checked_loss, checked_metric

FIELDS = ("loss", "metric", "metric_name", "distill", "loaders", "name")


class UserTask(Task):
    """``base`` with the callables given in place of its own."""

    metric_key = "metric"

    def __init__(
        self,
        base: Task,
        *,
        loss: Callable | None = None,
        metric: Callable | None = None,
        metric_name: str | None = None,
        distill: Callable | None = None,
        loaders=None,
        name: str | None = None,
        source: str = "the task",
    ):
        for field, value in (("loss", loss), ("metric", metric), ("distill", distill)):
            if value is not None and not callable(value):
                raise TrtpruneError(
                    f"{source}'s {field} is a {type(value).__name__}, not a function",
                    fix=f"give {field} as a function ({_SIGNATURES[field]})",
                )
        self.base, self.source = base, source
        self._loss, self._metric, self._distill, self.loaders = loss, metric, distill, loaders
        self.name = name or (
            base.name if loss is None and metric is None else "user" if metric else f"{base.name}+loss"
        )
        if metric is None:
            self.metric_name, self.metric_key, self.images_metric = base.metric_name, base.metric_key, True
        else:
            self.metric_name, self.images_metric = metric_name or "metric", False

    def loss(self, outputs, targets) -> torch.Tensor:
        if self._loss is None:
            return self.base.loss(outputs, targets)
        return checked_loss(self._call("loss", self._loss, outputs, targets), f"{self.source}'s loss")

    def distill(self, student, teacher, temperature: float) -> torch.Tensor:
        if self._distill is not None:
            return checked_loss(self._call("distill", self._distill, student, teacher), f"{self.source}'s distill")
        if self._loss is None:  # the base task's own targets: its own distillation
            return self.base.distill(student, teacher, temperature)
        return super().distill(student, teacher, temperature)  # outputs of unknown meaning: MSE per output

    def _call(self, field: str, fn, outputs, other):
        try:
            return fn(outputs, other)
        except TrtpruneError:
            raise
        except Exception as e:
            got = "targets" if field == "loss" else "the dense model's outputs"
            raise TrtpruneError(
                f"{self.source}'s {field} failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}",
                why=f"trtprune calls {_SIGNATURES[field].split(' ->')[0]} with what the model returns and the {got} "
                "(on the model's device); they do not fit together as it reads them",
                fix=f"call {field} yourself on model(x) and the {got} of one batch, and fix what it raises (-v shows "
                "the traceback)",
            ) from e

    def check(self, outputs, targets, images) -> None:
        if self._loss is None:
            self.base.check(outputs, targets, images)
        else:
            super().check(outputs, targets, images)

    def evaluate(self, model, images, mean, std) -> dict[str, float]:
        if self._metric is None:
            return self.base.evaluate(model, images, mean, std)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                value = self._metric(model)
        except TrtpruneError:
            raise
        except Exception as e:
            raise TrtpruneError(
                f"{self.source}'s metric failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}",
                why="trtprune calls metric(model) with the model to score (in eval mode, without gradients)",
                fix="call it yourself on the model and fix what it raises; run with -v for the traceback",
            ) from e
        finally:
            model.train(was)
        return {self.metric_key: checked_metric(value, f"{self.source}'s metric")}

    def to_dict(self) -> dict:
        return {**super().to_dict(), "base": self.base.name, "source": self.source}


_SIGNATURES = {
    "loss": "loss(outputs, targets) -> scalar tensor",
    "metric": "metric(model) -> float, higher is better",
    "distill": "distill(student_outputs, teacher_outputs) -> scalar tensor",
}
