"""trtprune from Python: every stage on live objects - your ``nn.Module``, your data loaders, a device name.

These are the functions the command line calls once it has loaded a model by name and weights::

    import trtprune
    plan = trtprune.search(model, (3, 224, 224), device="cpu", budget="0.5x", data=train_loader)
    trtprune.prune(model, plan, (3, 224, 224), data=train_loader)
    trtprune.finetune(model, train_loader, val_loader, epochs=5)
    engine = trtprune.build(model, (3, 224, 224), device="cpu", out="engines/mine.onnx")

``data`` is a ``torch.utils.data.DataLoader`` (or any iterable) of ``(inputs, targets)`` batches, normalised as
the model expects; or ``(x, y)`` numpy arrays of uint8 NHWC pixels, normalised here with ``mean``/``std``
(ImageNet's by default). ``device`` is a device name (``trtprune list``) or a :class:`Device`.

The task is classification (cross-entropy on integer labels, top-1) unless you give your own: ``loss=`` a function
``loss(outputs, targets) -> scalar tensor`` (outputs as your model returns them: a tensor, tuple, list or dict;
targets as your loader gives them, on the model's device) and ``metric=`` a function ``metric(model) -> float``
(higher is better; it reads your own validation data), with ``metric_name=`` ("mAP50-95"); or ``task=`` a built-in
task's name ("segmentation"), a :class:`trtprune.tasks.Task`, or an object holding those fields. Every stage that
trains or scores uses it: fine-tuning and distillation, the data-driven importance criteria, the searches' accuracy
proxy (BatchNorm re-estimated on training batches, then the metric), evaluation.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trtprune.config import FinetuneConfig
from trtprune.deploy.build import Engine, engine_from_model
from trtprune.deploy.export import Export, onnx_from_torch, read_onnx
from trtprune.deploy.onnx_module import OnnxModule, structure_of
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.latency.base import Timing
from trtprune.latency.devices import Device, get_device
from trtprune.latency.trt_onnx import check_precision
from trtprune.metrics import accuracy_onnx
from trtprune.profiling.layers import layers_of
from trtprune.profiling.lut import LUT
from trtprune.profiling.profile import Profiler, group_layers, profilable, profile_groups
from trtprune.profiling.stairs import Stairs, Tolerance
from trtprune.pruning.blocks import remove_blocks
from trtprune.pruning.importance import DEFAULT_IMPORTANCE, needs_data
from trtprune.pruning.prune import ChannelGroup, GroupPruner
from trtprune.searching import runner
from trtprune.searching.plan import Budget, Plan
from trtprune.searching.runner import SCORE_BATCH_SIZE, SCORE_BATCHES
from trtprune.sources.images import as_images
from trtprune.sources.models import (
    FLOAT32_WHY,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelSpec,
    check_normalisation,
    other_floats,
    parse_shape,
)
from trtprune.tasks import Task, get_task
from trtprune.training.finetune import finetune as _finetune

Shape = tuple[int, int, int]


def _as_device(name: str | Device) -> Device:
    if not isinstance(name, (str, Device)):
        raise TrtpruneError(
            f"device={name!r} is a {type(name).__name__}", fix="give a device name (trtprune list) or a Device"
        )
    return name if isinstance(name, Device) else get_device(name)


def _shape(input_shape) -> Shape:
    """``input_shape`` checked at the door: (C, H, W) positive integers (a tuple, list, numpy array or torch Size),
    or the command line's "3x224x224"."""
    input_shape = _as_list(input_shape)
    if isinstance(input_shape, str):
        try:
            return parse_shape(input_shape)
        except TrtpruneError:
            pass
    if isinstance(input_shape, str) or not isinstance(input_shape, (tuple, list)) or len(input_shape) != 3:
        raise TrtpruneError(
            f"input_shape={input_shape!r} is not (C, H, W)",
            why="the API takes one image's shape, without the batch: a tuple of three integers, or text like "
            "'3x224x224'",
            fix="e.g. input_shape=(3, 224, 224)",
        )
    if not all(isinstance(d, numbers.Integral) and not isinstance(d, bool) and d > 0 for d in input_shape):
        raise TrtpruneError(f"input_shape={tuple(input_shape)} holds a size that is not a positive integer")
    return tuple(int(d) for d in input_shape)


def _as_list(values):
    """A numpy array or torch tensor as a list of Python numbers (other values as they are)."""
    if isinstance(values, (np.ndarray, torch.Tensor)) and values.ndim == 1:
        return values.tolist()
    return values


def _model(model, what: str = "model") -> nn.Module:
    """``model`` checked at the door: a torch module in float32 (converting it here would change the caller's
    object; the command line converts the models it builds, see :func:`trtprune.sources.models.float32_model`)."""
    if not isinstance(model, nn.Module):
        raise TrtpruneError(
            f"{what} is a {type(model).__name__}, not a torch.nn.Module",
            fix="pass the model object (a path to a checkpoint is for the command line's --weights)",
        )
    dtypes = other_floats(model)
    if dtypes:
        raise TrtpruneError(
            f"{what} has {' and '.join(dtypes)} weights, not float32",
            why=FLOAT32_WHY,
            fix=f"pass {what}.float() (it converts the model in place)",
        )
    return model


def _numbers(values, what: str) -> tuple[float, ...]:
    """``mean``/``std`` checked at the door: one finite number per channel (their count is checked against the
    images' channels where they are normalised)."""
    values = _as_list(values)
    ok = isinstance(values, (tuple, list, np.ndarray)) and len(values) > 0
    ok = ok and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)
    if not ok or (what == "std" and min(values) <= 0):
        raise TrtpruneError(
            f"{what}={values!r} is not one {'positive ' if what == 'std' else ''}number per channel",
            why="images are normalised as (pixels / 255 - mean) / std, channel by channel",
            fix=f"e.g. {what}={IMAGENET_MEAN if what == 'mean' else IMAGENET_STD} (ImageNet's)",
        )
    return tuple(float(v) for v in values)


def _norm(mean, std) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``mean``/``std`` checked as the command line checks --mean/--std: a mean in 0..255 units is refused."""
    mean, std = _numbers(mean, "mean"), _numbers(std, "std")
    check_normalisation(mean, std)
    return mean, std


def _ignore(model: nn.Module, ignore) -> tuple[str, ...]:
    """``ignore`` checked at the door: module names (one name alone, or an iterable of names or of the modules
    themselves, named as in ``model.named_modules()``); None for none."""
    if ignore is None:
        return ()
    if isinstance(ignore, (str, nn.Module)):
        ignore = [ignore]
    if not isinstance(ignore, Iterable):
        raise TrtpruneError(
            f"ignore={ignore!r} is not module names (it is of type {type(ignore).__name__})",
            fix="give module names as in model.named_modules(), e.g. ignore=['layer1', 'fc']",
        )
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for item in ignore:
        if isinstance(item, nn.Module) and id(item) in names:
            out.append(names[id(item)] or "")
        elif isinstance(item, str):
            out.append(item)
        else:
            kind = "a module that is not in the model" if isinstance(item, nn.Module) else f"type {type(item).__name__}"
            raise TrtpruneError(
                f"ignore holds {repr(item)[:60]} ({kind}), which is not a module name",
                why="ignore names modules of the model: a name as in model.named_modules(), or the module itself",
                fix="give module names, e.g. ignore=['layer1', 'fc'] (or modules of this model, e.g. [model.fc])",
            )
    if "" in out:
        raise TrtpruneError(
            "ignore names the whole model",
            why="ignoring the model itself keeps every channel: there would be nothing to prune",
            fix="name the modules to keep whole, e.g. ignore=['layer1', 'fc']",
        )
    return tuple(out)


def _counts(plan) -> Plan | dict[str, int]:
    """``prune()``'s plan checked at the door: a :class:`Plan`, the path of a plan file (loaded), or a mapping of
    group names to whole channel counts (as a plan file's keep_channels)."""
    if isinstance(plan, (str, Path)):
        return Plan.load(plan)
    if isinstance(plan, Plan):
        return plan
    if not isinstance(plan, Mapping):
        raise TrtpruneError(
            f"plan is a {type(plan).__name__}, not a plan",
            why="prune() takes a Plan (from search()), the path of a plan file, or a dict of group names to "
            "channel counts",
            fix="e.g. prune(model, {'conv1': 8}, (3, 32, 32)), or prune(model, trtprune.search(...), (3, 32, 32))",
        )
    for group, count in plan.items():
        if not isinstance(group, str) or not isinstance(count, numbers.Integral) or isinstance(count, bool):
            raise TrtpruneError(
                f"plan gives {group!r}: {count!r} (a {type(count).__name__}), not a group name and a channel count",
                why="a channel count is a whole number of channels to keep; a fraction, True or text would be "
                "rounded or read as a number without a word",
                fix=f"give an integer, e.g. {{{str(group)!r}: {_whole(count)}}}",
            )
    return {group: int(count) for group, count in plan.items()}


def _whole(count) -> int:
    try:
        return max(1, int(float(count)))
    except (TypeError, ValueError):
        return 8


def _path(path, what: str) -> Path:
    """An output path checked at the door: text or a Path."""
    if not isinstance(path, (str, Path)) or not str(path):
        raise TrtpruneError(f"{what}={path!r} is not a file path", fix=f"give {what} as a path, e.g. 'model.onnx'")
    return Path(path)


def _timed(models) -> list[Path]:
    """``measure()``'s models checked at the door: paths of ONNX files (or built Engines), one alone or a list."""
    if isinstance(models, (str, Path, Engine)):
        models = [models]
    if not isinstance(models, Iterable) or isinstance(models, nn.Module):
        models = [models]
    paths = []
    for m in models:
        if not isinstance(m, (str, Path, Engine)):
            raise TrtpruneError(
                f"measure() got a {type(m).__name__}, not the path of a model file",
                why="measure() times exported models on the device's engine: ONNX files or built Engines",
                fix="export it first: trtprune.export(model, 'model.onnx', input_shape), or trtprune.build(...); "
                "then measure(['model.onnx'])",
            )
        paths.append(m.path if isinstance(m, Engine) else Path(m))
    if not paths:
        raise TrtpruneError("measure() got no models", fix="give the paths of one or more ONNX files")
    return paths


def _positive_int(value, what: str) -> int:
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
        raise TrtpruneError(f"{what}={value!r} is not an integer of 1 or more", fix=f"give {what} as e.g. 30")
    return int(value)


def _rel(rel) -> float:
    """``profile()``'s tolerance: a fraction of a latency, 0 or more and below 1."""
    if not isinstance(rel, numbers.Real) or isinstance(rel, bool) or not 0 <= rel < 1:
        raise TrtpruneError(
            f"rel={rel!r} is not a tolerance",
            why="latencies within rel (a fraction of the larger one) are the same stair; measured noise is ~0.01",
            fix="give a number from 0 to below 1, e.g. rel=0.01",
        )
    return float(rel)


# FinetuneConfig's settings as the command line bounds them: (test, what a good value is)
_SETTING_RANGES = {
    "epochs": (lambda v, cfg: v >= 1, "1 or more"),
    "batch_size": (lambda v, cfg: v >= 1, "1 or more"),
    "lr": (lambda v, cfg: 0 < v < math.inf, "above 0 and finite"),
    "momentum": (lambda v, cfg: 0 <= v < math.inf, "0 or more"),
    "weight_decay": (lambda v, cfg: 0 <= v < math.inf, "0 or more"),
    "distill": (lambda v, cfg: 0 <= v <= 1, "between 0 and 1 (0: off)"),
    "temperature": (lambda v, cfg: 0 < v < math.inf, "above 0 and finite"),
    "train_limit": (lambda v, cfg: v >= 0, "0 or more (0: all the images)"),
    "recalibrate": (lambda v, cfg: v >= 0, "0 or more (0: off)"),
    "warmup": (lambda v, cfg: 0 <= v <= cfg["epochs"], "between 0 and epochs"),
}
_SETTING_TYPES = {  # a FinetuneConfig field's annotation: the types it takes, and how to say them
    "int": ((numbers.Integral,), "an integer"),
    "float": ((numbers.Real,), "a number"),
    "bool": ((bool,), "True or False"),
    "bool | None": ((bool, type(None)), "True, False or None"),
    "str": ((str,), "a string"),
}


def _setting_type_ok(value, types: tuple) -> bool:
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _finetune_config(epochs, settings: dict) -> FinetuneConfig:
    """``finetune()``'s ``epochs`` and ``settings`` checked at the door (names, types, ranges): one error naming the
    first wrong one."""
    fields = {f.name: f.type for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise TrtpruneError(
            f"finetune() got unknown settings: {', '.join(unknown)}",
            fix=f"settings are FinetuneConfig fields: {', '.join(fields)}",
        )
    values = {**settings, "epochs": epochs}
    for name, value in values.items():
        types, kind = _SETTING_TYPES[fields[name]]
        if not _setting_type_ok(value, types):
            raise TrtpruneError(
                f"finetune(): {name}={value!r} is a {type(value).__name__}, not {kind}",
                fix=f"give {name} as {kind}",
            )
    for name, (fits, good) in _SETTING_RANGES.items():
        if name in values and not fits(values[name], values):
            raise TrtpruneError(f"finetune(): {name}={values[name]!r} is out of range", fix=f"give {name} {good}")
    return FinetuneConfig(**values)


def task(task=None, *, loss=None, metric=None, metric_name: str | None = None, distill=None) -> Task:
    """The task of the other functions' ``task``/``loss``/``metric``/``metric_name``/``distill`` arguments."""
    return get_task(task, loss=loss, metric=metric, metric_name=metric_name, distill=distill)


def _spec(model: nn.Module, input_shape: Shape, mean, std, name: str | None = None) -> ModelSpec:
    """What the stage functions know of a live model: its name, input shape and normalisation."""
    return ModelSpec(name or type(model).__name__, "<python>", tuple(input_shape), tuple(mean), tuple(std))


def device(name: str | Device) -> Device:
    """A device by name (built-in or from your devices.toml); a Device as it is."""
    return _as_device(name)


def groups(model: nn.Module, input_shape: Shape, *, ignore: Iterable[str] = ()) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (channels that must go together), in module order; modules named
    in ``ignore`` (and everything inside them) keep their output channels, and so do the layers that make the
    model's outputs (its classes, a detector's boxes and scores)."""
    model = _model(model)
    return GroupPruner(model, _shape(input_shape), _ignore(model, ignore)).groups()


def scores(
    model: nn.Module,
    input_shape: Shape,
    *,
    importance: str = DEFAULT_IMPORTANCE,
    data=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    ignore: Iterable[str] = (),
    task=None,
    loss=None,
) -> dict[str, np.ndarray]:
    """One importance score per channel of every group (``trtprune list`` names the criteria); criteria that
    need data (``taylor``, ``fisher``, ``dynamic``) read the first 8 batches of 64 images of ``data``, through the
    task's loss."""
    model, shape, (mean, std) = _model(model), _shape(input_shape), _norm(mean, std)
    ignore = _ignore(model, ignore)
    batches = None
    if needs_data(importance):
        if data is None:
            raise TrtpruneError(f"importance '{importance}' needs training data", fix="pass data=, or use l1/l2/bn")
        batches = list(as_images(data).limit(SCORE_BATCHES * SCORE_BATCH_SIZE).batches(SCORE_BATCH_SIZE, mean, std))
    scoring = get_task(task, loss=loss)
    return GroupPruner(model, shape, ignore).scores(importance, batches, scoring.loss)


def profile(
    model: nn.Module,
    input_shape: Shape,
    device: str | Device = "cpu",
    *,
    lut: str | Path | None = None,
    quick: bool = False,
    rel: float = 0.01,
    ignore: Iterable[str] = (),
) -> dict[str, Stairs]:
    """Each channel group's latency stairs measured on the device's engine (single layers, stored in the latency
    table ``lut``, the user cache's by default): the counts worth keeping are ``stairs.edges``."""
    import onnx

    model, input_shape, dev, rel = _model(model), _shape(input_shape), _as_device(device), _rel(rel)
    found = GroupPruner(model, input_shape, _ignore(model, ignore)).groups()
    with tempfile.TemporaryDirectory(prefix="trtprune-profile-") as tmp, get_backend(dev) as backend, LUT(lut) as table:
        onnx_from_torch(model, Path(tmp) / "model.onnx", input_shape, dev.batch)
        gls = group_layers(found, layers_of(onnx.load(str(Path(tmp) / "model.onnx"))))
        profiler = Profiler(backend, table, protocol="quick" if quick else "full")
        return profile_groups(profiler, profilable(gls, model)[0], Tolerance(rel=rel))


def search(
    model: nn.Module,
    input_shape: Shape,
    device: str | Device = "cpu",
    budget: str | Budget = "0.5x",
    *,
    method: str = "locp",
    data=None,
    importance: str = DEFAULT_IMPORTANCE,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    lut: str | Path | None = None,
    quick: bool = False,
    round_to: int = 1,
    ignore: Iterable[str] = (),
    name: str | None = None,
    depth: bool = True,
    task=None,
    loss=None,
    metric=None,
    metric_name: str | None = None,
) -> Plan:
    """Per-group channel counts that meet ``budget`` ("0.5x" of the dense model's latency, or "1.2ms") on the
    device, measured there, keeping the channels that matter most by ``importance`` on ``data``; ``model`` is
    left as it is. ``method``: locp, knapsack, lap, uniform or flops. With training ``data``, the latency-aware
    methods first remove whole residual blocks (``depth``; scored by the accuracy proxy: BatchNorm re-estimated on
    training batches, then the task's metric), as the command line does; lap's reward is that proxy too."""
    model, shape, dev, (mean, std) = _model(model), _shape(input_shape), _as_device(device), _norm(mean, std)
    budget = budget if isinstance(budget, Budget) else Budget.from_text(budget)
    ignore = _ignore(model, ignore)
    if needs_data(importance) and data is None:
        raise TrtpruneError(f"importance '{importance}' needs training data", fix="pass data=, or use l1/l2/bn")
    scoring = get_task(task, loss=loss, metric=metric, metric_name=metric_name)
    train = as_images(data) if data is not None else None
    with tempfile.TemporaryDirectory(prefix="trtprune-search-") as tmp:
        return runner.search(
            _spec(model, shape, mean, std, name),
            None,
            dev,
            budget,
            method,
            module=model,
            workdir=Path(tmp),
            lut_path=lut,
            importance=importance,
            data=train,
            round_to=round_to,
            protocol="quick" if quick else "full",
            ignore=ignore,
            remove_depth=depth and train is not None,
            proxy=train is not None,
            task=scoring,
        )


def prune(
    model: nn.Module,
    plan: Plan | Mapping[str, int] | str | Path,
    input_shape: Shape,
    *,
    data=None,
    importance: str = DEFAULT_IMPORTANCE,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    ignore: Iterable[str] = (),
    task=None,
    loss=None,
) -> nn.Module:
    """Remove the plan's residual blocks (a :class:`Plan` from ``trtprune search``, or its file), then channels from
    ``model`` in place until every group has the plan's count, the least important first (``importance`` on
    ``data``, through the task's loss); returns the model. The pruning history is ``model.trtprune_history``."""
    model, shape, (mean, std), plan = _model(model), _shape(input_shape), _norm(mean, std), _counts(plan)
    ignore = _ignore(model, ignore)
    keep = plan.keep_channels if isinstance(plan, Plan) else plan
    if isinstance(plan, Plan):
        ignore = ignore or tuple(plan.meta.get("ignore", ()))
        removed = remove_blocks(model, plan.remove_blocks, shape)
        model.trtprune_history = getattr(model, "trtprune_history", []) + removed
    channel_scores = scores(
        model, shape, importance=importance, data=data, mean=mean, std=std, ignore=ignore, task=task, loss=loss
    )
    pruner = GroupPruner(model, shape, ignore)
    pruner.prune_to(keep, scores=channel_scores, complete=isinstance(plan, Plan))
    model.trtprune_history = getattr(model, "trtprune_history", []) + pruner.history()
    return model


def finetune(
    model: nn.Module,
    train,
    val=None,
    *,
    epochs: int = 1,
    teacher: nn.Module | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    checkpoint: str | Path | None = None,
    task=None,
    loss=None,
    metric=None,
    metric_name: str | None = None,
    distill=None,
    **settings,
) -> list[dict]:
    """Fine-tune ``model`` in place on ``train`` (SGD, Nesterov, cosine schedule; distilled from ``teacher`` when
    given: the task's distillation, or ``distill(student_outputs, teacher_outputs)``), scoring it after each epoch
    (the task's metric: top-1 on ``val`` by default, or ``metric(model)``); returns one record per epoch (loss, the
    metric - ``top1``, or ``metric`` for your own - and seconds). ``settings`` are :class:`FinetuneConfig` fields
    (lr, batch_size, distill, precision, ...); ``checkpoint`` (None: a temporary file) is written after every epoch
    and resumed from."""
    model, (mean, std) = _model(model), _norm(mean, std)
    teacher = _model(teacher, "teacher") if teacher is not None else None
    if teacher is not None:
        settings.setdefault("distill", 0.5)
    cfg = _finetune_config(epochs, settings)
    scoring = get_task(task, loss=loss, metric=metric, metric_name=metric_name, distill=distill)
    with tempfile.TemporaryDirectory(prefix="trtprune-finetune-") as tmp:
        return _finetune(
            model,
            train,
            val,
            mean,
            std,
            cfg,
            checkpoint=Path(checkpoint) if checkpoint else Path(tmp) / "finetune.pt",
            base_model=type(model).__name__,
            history=list(getattr(model, "trtprune_history", [])),
            teacher=teacher,
            task=scoring,
        )


def export(model: nn.Module, path: str | Path, input_shape: Shape, *, batch: int = 1) -> Export:
    """ONNX with a static batch, simplified, checked against torch (``max_abs_diff``)."""
    if not isinstance(batch, numbers.Integral) or isinstance(batch, bool) or batch < 1:
        raise TrtpruneError(f"batch={batch!r} is not a batch size", fix="give an integer of 1 or more")
    return onnx_from_torch(_model(model), _path(path, "path"), _shape(input_shape), int(batch))


def build(
    model: nn.Module, input_shape: Shape, device: str | Device = "cpu", out: str | Path = "engines/model.onnx", **kw
) -> Engine:
    """The deployable model for the device at ``out``: ONNX for ONNX Runtime, a TensorRT ``.plan`` built on the
    device. INT8 devices need ``calib=`` images: normalised float32 NCHW as the model takes them, or uint8 NHWC
    pixels (as the data arrays), normalised here with ``mean=``/``std=`` (ImageNet's by default)."""
    unknown = sorted(set(kw) - {"calib", "mean", "std"})
    if unknown:
        raise TrtpruneError(
            f"build() got unknown arguments: {', '.join(unknown)}", fix="build() takes calib=, mean=, std="
        )
    model, shape, dev = _model(model), _shape(input_shape), _as_device(device)
    calib = kw.get("calib")
    if calib is not None:
        calib = _calib(calib, shape, *_norm(kw.get("mean", IMAGENET_MEAN), kw.get("std", IMAGENET_STD)))
    return engine_from_model(model, shape, dev, _path(out, "out"), calib)


def _calib(calib, shape: Shape, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """``build()``'s calibration images checked at the door: float NCHW images of the model's input shape as they
    are; uint8 NHWC pixels normalised with ``mean``/``std``; anything else refused, saying what calib= takes."""
    images = calib.detach().cpu().numpy() if isinstance(calib, torch.Tensor) else calib
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[0] > 0:
        if images.dtype == np.uint8 and images.shape[1:] == (shape[1], shape[2], shape[0]):
            if len(mean) not in (1, shape[0]) or len(std) not in (1, shape[0]):
                raise TrtpruneError(
                    f"mean {mean} / std {std} does not fit {shape[0]}-channel images",
                    fix=f"give one value per channel ({shape[0]})",
                )
            pixels = images.astype(np.float32).transpose(0, 3, 1, 2) / 255
            m, sd = (np.asarray(v, np.float32).reshape(1, -1, 1, 1) for v in (mean, std))
            return np.ascontiguousarray((pixels - m) / sd, dtype=np.float32)
        if images.dtype.kind == "f" and images.shape[1:] == shape:
            return images.astype(np.float32)
    described = (
        f"a {images.dtype} array of shape {images.shape}"
        if isinstance(images, np.ndarray)
        else f"a {type(calib).__name__}"
    )
    c, h, w = shape
    raise TrtpruneError(
        f"calib is {described}, not calibration images for input shape {shape}",
        why="an int8 model's ranges are calibrated on images as the model takes them",
        fix=f"give calib= normalised float32 NCHW images (N, {c}, {h}, {w}), or uint8 pixels NHWC (N, {h}, {w}, {c}) "
        "with mean=/std= to normalise them (ImageNet's by default)",
    )


def measure(
    models: list[str | Path | Engine] | str | Path, device: str | Device = "cpu", *, rounds: int | None = None
) -> list[Timing]:
    """The models (ONNX files or built engines; one alone or a list) timed side by side in one interleaved run on
    the device: median and p90 milliseconds per inference. Compare models only within one call. Each model must be
    in the device's precision (an INT8 Q/DQ model on an int8 device, a float one on a float device)."""
    dev, paths = _as_device(device), _timed(models)
    rounds = None if rounds is None else _positive_int(rounds, "rounds")
    for path in paths:
        if path.suffix != ".plan":  # a TensorRT engine is built in its device's precision
            check_precision(read_onnx(path), path, dev)
    with get_backend(dev) as backend:
        return backend.compare(paths, rounds=rounds or backend.deciding_rounds)


def evaluate(
    model: nn.Module | str | Path,
    data=None,
    *,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    task=None,
    metric=None,
    metric_name: str | None = None,
    like: nn.Module | None = None,
) -> dict[str, float]:
    """The task's figures of a module (torch) or an ONNX file (ONNX Runtime): top-1 (and top-5 with more than 10
    classes) in percent on ``data`` by default; ``{"metric": metric(model)}`` with your own metric. An ONNX file is
    called as a module returning what ``like`` (the torch model it was exported from) returns - a dict stays a dict
    - or, without ``like``, one tensor or a tuple of its outputs in order."""
    scoring = get_task(task, metric=metric, metric_name=metric_name)
    mean, std = _norm(mean, std)
    if scoring.images_metric and data is None:
        raise TrtpruneError(f"evaluating {scoring.metric_name} needs data", fix="pass data=, or metric=")
    if isinstance(model, nn.Module):
        return scoring.evaluate(_model(model), data, mean, std)
    if not isinstance(model, (str, Path)):
        raise TrtpruneError(
            f"model is a {type(model).__name__}", fix="give a torch.nn.Module or the path of an ONNX file"
        )
    read_onnx(model)
    if scoring.metric_key == "top1":
        return accuracy_onnx(model, data, mean, std)
    structure = None
    if like is not None:
        shape = next(i for i in read_onnx(model).graph.input).type.tensor_type.shape.dim
        structure = structure_of(_model(like), tuple(d.dim_value for d in shape[1:]))
    return scoring.evaluate(OnnxModule(model, structure), data, mean, std)


__all__ = [
    "Budget",
    "Device",
    "Engine",
    "Plan",
    "build",
    "device",
    "evaluate",
    "export",
    "finetune",
    "groups",
    "measure",
    "profile",
    "prune",
    "scores",
    "search",
    "task",
]
