"""trtprune from Python: every stage on live objects - your ``nn.Module``, your data loaders, a device name.

These are the functions the command line calls once it has loaded a model by name and weights::

    import trtprune
    plan = trtprune.search(model, (3, 224, 224), device="cpu", budget="0.5x", data=train_loader)
    trtprune.prune(model, plan, (3, 224, 224), data=train_loader)
    trtprune.finetune(model, train_loader, val_loader, epochs=5)
    engine = trtprune.build(model, (3, 224, 224), device="cpu", out="engines/mine.onnx")

``data`` is a ``torch.utils.data.DataLoader`` (or any iterable) of ``(images, labels)`` batches, normalised as
the model expects; or ``(x, y)`` numpy arrays of uint8 NHWC pixels, normalised here with ``mean``/``std``
(ImageNet's by default). ``device`` is a device name (``trtprune list``) or a :class:`Device`.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from torch import nn

from trtprune.config import FinetuneConfig
from trtprune.deploy.build import Engine, engine_from_model
from trtprune.deploy.export import Export, onnx_from_torch
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.latency.base import Timing
from trtprune.latency.devices import Device, get_device
from trtprune.metrics import accuracy_onnx, accuracy_torch
from trtprune.profiling.layers import layers_of
from trtprune.profiling.lut import LUT
from trtprune.profiling.profile import Profiler, group_layers, profilable, profile_groups
from trtprune.profiling.stairs import Stairs, Tolerance
from trtprune.pruning.blocks import remove_blocks
from trtprune.pruning.importance import DEFAULT_IMPORTANCE, needs_data
from trtprune.pruning.prune import ChannelGroup, GroupPruner
from trtprune.searching.plan import Budget, Plan
from trtprune.searching.runner import SCORE_BATCH_SIZE, SCORE_BATCHES, search_module
from trtprune.sources.images import as_images
from trtprune.sources.models import IMAGENET_MEAN, IMAGENET_STD
from trtprune.training.finetune import finetune as _finetune

Shape = tuple[int, int, int]


def _as_device(name: str | Device) -> Device:
    return name if isinstance(name, Device) else get_device(name)


def device(name: str | Device) -> Device:
    """A device by name (built-in or from your devices.toml); a Device as it is."""
    return _as_device(name)


def groups(model: nn.Module, input_shape: Shape, *, ignore: Iterable[str] = ()) -> list[ChannelGroup]:
    """The prunable channel groups of ``model`` (channels that must go together), in module order; modules named
    in ``ignore`` (and everything inside them) keep their output channels."""
    return GroupPruner(model, input_shape, ignore).groups()


def scores(
    model: nn.Module,
    input_shape: Shape,
    *,
    importance: str = DEFAULT_IMPORTANCE,
    data=None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    ignore: Iterable[str] = (),
) -> dict[str, np.ndarray]:
    """One importance score per channel of every group (``trtprune list`` names the criteria); criteria that
    need data (``taylor``, ``fisher``, ``dynamic``) read the first 8 batches of 64 images of ``data``."""
    batches = None
    if needs_data(importance):
        if data is None:
            raise TrtpruneError(f"importance '{importance}' needs training data", fix="pass data=, or use l1/l2/bn")
        batches = list(as_images(data).limit(SCORE_BATCHES * SCORE_BATCH_SIZE).batches(SCORE_BATCH_SIZE, mean, std))
    return GroupPruner(model, input_shape, ignore).scores(importance, batches)


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

    dev = _as_device(device)
    found = GroupPruner(model, input_shape, ignore).groups()
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
) -> Plan:
    """Per-group channel counts that meet ``budget`` ("0.5x" of the dense model's latency, or "1.2ms") on the
    device, measured there, keeping the channels that matter most by ``importance`` on ``data``; ``model`` is
    left as it is. ``method``: locp, knapsack, lap, uniform or flops. Channels only: removing whole residual blocks
    first (the command line's default, trtprune.searching.depth) needs the training images of ``trtprune search``."""
    dev = _as_device(device)
    budget = budget if isinstance(budget, Budget) else Budget.from_text(budget)
    channel_scores = scores(model, input_shape, importance=importance, data=data, mean=mean, std=std, ignore=ignore)
    with tempfile.TemporaryDirectory(prefix="trtprune-search-") as tmp:
        return search_module(
            model,
            tuple(input_shape),
            dev,
            budget,
            method,
            scores=channel_scores,
            workdir=tmp,
            name=name or type(model).__name__,
            lut_path=lut,
            importance=importance,
            round_to=round_to,
            protocol="quick" if quick else "full",
            ignore=ignore,
        )


def prune(
    model: nn.Module,
    plan: Plan | Mapping[str, int],
    input_shape: Shape,
    *,
    data=None,
    importance: str = DEFAULT_IMPORTANCE,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    ignore: Iterable[str] = (),
) -> nn.Module:
    """Remove the plan's residual blocks (a :class:`Plan` from ``trtprune search``), then channels from ``model`` in
    place until every group has the plan's count, the least important first (``importance`` on ``data``); returns
    the model. The pruning history is ``model.trtprune_history``."""
    keep = plan.keep_channels if isinstance(plan, Plan) else dict(plan)
    if isinstance(plan, Plan):
        ignore = tuple(ignore) or tuple(plan.meta.get("ignore", ()))
        model.trtprune_history = getattr(model, "trtprune_history", []) + remove_blocks(model, plan.remove_blocks)
    channel_scores = scores(model, input_shape, importance=importance, data=data, mean=mean, std=std, ignore=ignore)
    pruner = GroupPruner(model, input_shape, ignore)
    pruner.prune_to(keep, scores=channel_scores)
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
    **settings,
) -> list[dict]:
    """Fine-tune ``model`` in place on ``train`` (SGD, Nesterov, cosine schedule; distilled from ``teacher`` when
    given), evaluating on ``val`` after each epoch; returns one record per epoch (loss, top-1, seconds).
    ``settings`` are :class:`FinetuneConfig` fields (lr, batch_size, distill, precision, ...); ``checkpoint``
    (None: a temporary file) is written after every epoch and resumed from."""
    if teacher is not None:
        settings.setdefault("distill", 0.5)
    cfg = FinetuneConfig(epochs=epochs, **settings)
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
        )


def export(model: nn.Module, path: str | Path, input_shape: Shape, *, batch: int = 1) -> Export:
    """ONNX with a static batch, simplified, checked against torch (``max_abs_diff``)."""
    return onnx_from_torch(model, path, input_shape, batch)


def build(
    model: nn.Module, input_shape: Shape, device: str | Device = "cpu", out: str | Path = "engines/model.onnx", **kw
) -> Engine:
    """The deployable model for the device at ``out``: ONNX for ONNX Runtime, a TensorRT ``.plan`` built on the
    device (``calib=`` normalised float32 NCHW images for INT8 devices)."""
    return engine_from_model(model, tuple(input_shape), _as_device(device), out, kw.get("calib"))


def measure(
    models: list[str | Path | Engine], device: str | Device = "cpu", *, rounds: int | None = None
) -> list[Timing]:
    """The models (ONNX files or built engines) timed side by side in one interleaved run on the device: median
    and p90 milliseconds per inference. Compare models only within one call."""
    dev = _as_device(device)
    paths = [m.path if isinstance(m, Engine) else Path(m) for m in models]
    with get_backend(dev) as backend:
        return backend.compare(paths, rounds=rounds or backend.deciding_rounds)


def evaluate(model: nn.Module | str | Path, data, *, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> dict[str, float]:
    """Top-1 (and top-5 with more than 10 classes) in percent of a module (torch) or an ONNX file (ONNX Runtime)."""
    if isinstance(model, nn.Module):
        return accuracy_torch(model, data, mean, std)
    return accuracy_onnx(model, data, mean, std)


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
]
