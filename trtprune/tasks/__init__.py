"""Tasks: what a model is trained and scored for (see :mod:`trtprune.tasks.base`).

Built in: ``classification`` (the default: cross-entropy, top-1) and ``segmentation`` (per-pixel cross-entropy,
mIoU); ``detection`` is a helper for the user's task file (mAP50-95 from torchmetrics, the loss is the detector's
own). The user's own: ``--task file.py:task`` (an object or module with ``loss``, ``metric``, ``metric_name``,
``distill``, ``loaders``) or the API's ``loss=``/``metric=``.
"""

from __future__ import annotations

from collections.abc import Callable

from trtprune.errors import TrtpruneError
from trtprune.sources.userfile import user_function
from trtprune.tasks.base import Task
from trtprune.tasks.classification import Classification
from trtprune.tasks.segmentation import Segmentation
from trtprune.tasks.user import FIELDS, UserTask

TASKS: dict[str, Callable[[], Task]] = {"classification": Classification, "segmentation": Segmentation}
DEFAULT_TASK = "classification"


def get_task(task=None, *, loss=None, metric=None, metric_name=None, distill=None) -> Task:
    """The task to train and score with: ``task`` (a Task, a built-in's name, ``file.py:name``, or an object holding
    the fields), with ``loss``/``metric``/``distill`` given in place of its own; None is classification."""
    if isinstance(task, Task):
        base = task
    elif task is None or isinstance(task, str) and task in TASKS:
        base = TASKS[task or DEFAULT_TASK]()
    elif isinstance(task, str):
        base = task_from_file(task)
    else:
        base = task_from_object(task, type(task).__name__)
    if loss is None and metric is None and distill is None:
        return base
    return UserTask(base, loss=loss, metric=metric, metric_name=metric_name, distill=distill, source="the API")


def is_task_file(text: str) -> bool:
    file, sep, _ = str(text).rpartition(":")
    return bool(sep) and file.endswith(".py")


def task_from_file(spec: str) -> Task:
    """``file.py:name``: a Task, or an object (a class instance, a module-level namespace, a dict) holding
    ``loss``, ``metric`` (and optionally ``metric_name``, ``distill``, ``loaders``, ``name``, ``base``)."""
    if spec.endswith(".py"):
        raise TrtpruneError(
            f"task '{spec}' is a Python file without ':object'",
            why="a task file is given as path/file.py:task, naming the object that holds loss and metric",
            fix=f"name the object after ':', e.g. --task {spec}:task",
        )
    if not is_task_file(spec):
        raise TrtpruneError(
            f"unknown task '{spec}'",
            fix=f"use one of {', '.join(TASKS)}, or your own as path/to/file.py:task",
        )
    file, _, name = spec.rpartition(":")
    obj = user_function(file, name, "user_task", "task file", "the task object", need_callable=False)
    return task_from_object(obj, spec)


def task_from_object(obj, source: str) -> Task:
    if isinstance(obj, Task):
        return obj
    get = obj.get if isinstance(obj, dict) else lambda k, d=None: getattr(obj, k, d)
    fields = {k: get(k) for k in FIELDS}
    base = get("base", None) or DEFAULT_TASK
    if base not in TASKS:
        raise TrtpruneError(
            f"{source}: base task '{base}' is not one of {', '.join(TASKS)}",
            fix="name a built-in task as base, or leave base out (classification)",
        )
    missing = [k for k in ("loss", "metric") if fields[k] is None]
    if missing and get("base", None) is None:
        raise TrtpruneError(
            f"{source} holds " + ("neither a loss nor a metric" if len(missing) == 2 else f"no {missing[0]}"),
            why="a task file names an object with loss(outputs, targets) and metric(model) (and optionally "
            "metric_name, distill, loaders), or a built-in base task (base = 'segmentation') with its loaders; "
            f"without its {' and '.join(missing)} trtprune would use classification's (cross-entropy, top-1) "
            "without a word",
            fix=f"define {' and '.join(missing)} on the object (see the README, 'Your own task'), or set base = "
            "'classification' to use classification's for what you leave out",
        )
    return UserTask(TASKS[base](), source=source, **fields)


def task_data(task: Task, data=None):
    """The data a command reads: ``data`` (``--data``) if given, else the task's own ``loaders`` (a ``(train, val)``
    pair, or a function returning one), else None (the default dataset)."""
    if data is not None or getattr(task, "loaders", None) is None:
        return data
    loaders = task.loaders
    source = getattr(task, "source", "the task")
    if callable(loaders):
        try:
            loaders = loaders()
        except TrtpruneError:
            raise
        except Exception as e:
            raise TrtpruneError(
                f"{source}'s loaders failed: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}",
                fix="call them yourself and fix what they raise; run with -v for the traceback",
            ) from e
    if not (isinstance(loaders, (tuple, list)) and len(loaders) == 2):
        raise TrtpruneError(
            f"{source}'s loaders give {type(loaders).__name__}, not (train_loader, val_loader)",
            fix="make loaders a pair of loaders of (inputs, targets) batches, or a function returning one",
        )
    return tuple(loaders)


__all__ = ["DEFAULT_TASK", "TASKS", "Classification", "Segmentation", "Task", "UserTask", "get_task", "task_data"]
