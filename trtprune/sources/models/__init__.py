"""Built-in models and user factories, by name.

``build_model("resnet56")`` or ``build_model("path/to/file.py:factory")``. A user file is imported only
when it is named, and its factory is called without arguments.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from trtprune.errors import TrtpruneError
from trtprune.sources.userfile import user_function

log = logging.getLogger(__name__)

# The shared CIFAR ResNet checkpoints were trained on pixels/255 normalised with ImageNet statistics;
# with them the published accuracies reproduce exactly. Built-ins trained here use the same.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What the pipeline needs to know about a model besides its modules."""

    name: str
    factory_path: str  # "module:function" for built-ins, "file.py:function" for user models
    input_shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    num_classes: int = 10
    pretrained: str | None = None  # key in trtprune.sources.fetch.RESOURCES
    extra: dict = field(default_factory=dict, compare=False)


_R = "trtprune.sources.models.resnet_cifar"
_I = "trtprune.sources.models.imagenet"
BUILTIN: dict[str, ModelSpec] = {
    "resnet20": ModelSpec("resnet20", f"{_R}:resnet20", pretrained="resnet20"),
    "resnet32": ModelSpec("resnet32", f"{_R}:resnet32", pretrained="resnet32"),
    "resnet44": ModelSpec("resnet44", f"{_R}:resnet44"),
    "resnet56": ModelSpec("resnet56", f"{_R}:resnet56", pretrained="resnet56"),
    "resnet110": ModelSpec("resnet110", f"{_R}:resnet110"),
    "vgg16_bn": ModelSpec("vgg16_bn", "trtprune.sources.models.vgg_cifar:vgg16_bn"),
    "mobilenet_v2": ModelSpec("mobilenet_v2", "trtprune.sources.models.mobilenetv2_cifar:mobilenet_v2"),
    # ImageNet layouts at 224x224 (architectures only: bring the weights)
    "resnet18": ModelSpec("resnet18", f"{_I}:resnet18", (3, 224, 224), num_classes=1000),
    "mobilenet_v2_imagenet": ModelSpec(
        "mobilenet_v2_imagenet", f"{_I}:mobilenet_v2_imagenet", (3, 224, 224), num_classes=1000
    ),
}


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"3x224x224"`` (C x H x W) as a tuple; a clear error otherwise."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise TrtpruneError(
            f"input shape '{text}' is not C x H x W",
            why="one image's channels, height and width, in pixels; the batch comes from the device",
            fix="write it like 3x224x224",
        )
    return shape


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    """``"0.485,0.456,0.406"`` as a tuple of finite numbers."""
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if not values or not all(math.isfinite(v) for v in values):
        raise TrtpruneError(
            f"{what} '{text}' is not a list of numbers", fix=f"write it like --{what} 0.485,0.456,0.406"
        )
    return values


def model_spec(
    name: str | ModelSpec,
    *,
    input_shape: str | tuple[int, ...] | None = None,
    mean: str | tuple[float, ...] | None = None,
    std: str | tuple[float, ...] | None = None,
) -> ModelSpec:
    """The spec of a built-in model or of a user factory ``path/file.py:function`` (or ``name`` itself, a spec),
    with the input shape (C, H, W) and the normalisation the user gives in place of the model's defaults."""
    spec = name if isinstance(name, ModelSpec) else _named(name)
    changes = {}
    if input_shape is not None:
        changes["input_shape"] = parse_shape(input_shape) if isinstance(input_shape, str) else tuple(input_shape)
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            changes[key] = parse_floats(value, key) if isinstance(value, str) else tuple(map(float, value))
    spec = dataclasses.replace(spec, **changes) if changes else spec
    if "input_shape" in changes:
        _check_order(spec.input_shape)
    check_normalisation(spec.mean, spec.std)
    channels = spec.input_shape[0]
    if "input_shape" in changes and (spec.factory_path in _BUILTIN_PATHS or len(spec.mean) not in (1, channels)):
        _check_channels(spec)
    if len(spec.mean) not in (1, channels) or len(spec.std) not in (1, channels):
        raise TrtpruneError(
            f"normalisation mean {spec.mean} / std {spec.std} does not fit {channels}-channel images",
            fix=f"give one value per channel ({channels}) to --mean and --std",
        )
    return spec


_BUILTIN_PATHS = {s.factory_path for s in BUILTIN.values()}


def _check_order(shape: tuple[int, ...]) -> None:
    """An input shape written H x W x C (32x32x3, as numpy and PIL give it) would be read as 32-channel images."""
    c, h, w = shape
    if w in (1, 3, 4) and c > 4 and h > 4:
        fixed = f"{w}x{c}x{h}"
        raise TrtpruneError(
            f"input shape {c}x{h}x{w} is in H x W x C order (height, width, channels last)",
            why="trtprune takes the input shape as C x H x W, channels first (PyTorch's order): "
            f"{c}x{h}x{w} would be {c}-channel images of {h}x{w} pixels",
            fix=f"give --input-shape {fixed} (API: input_shape=({w}, {c}, {h}))",
        )


def first_conv_channels(model) -> tuple[str, int] | None:
    """The name and ``in_channels`` of the model's first convolution (the channels of the images it takes), or
    None if it has none."""
    from torch import nn

    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return name, m.in_channels
    return None


@functools.lru_cache(maxsize=32)
def _first_conv(factory_path: str, num_classes: int) -> tuple[str, int] | None:
    """:func:`first_conv_channels` of a fresh model from the factory (once per factory: a built-in is checked at
    every model_spec with an input shape)."""
    try:
        return first_conv_channels(build_model(ModelSpec("check", factory_path, num_classes=num_classes)))
    except Exception:  # a factory that cannot be built here: its own error comes where it is built
        return None


def _check_channels(spec: ModelSpec) -> None:
    """An input shape whose channels are not the model's (its first convolution's in_channels): said as such,
    rather than as a normalisation or a shape error further on."""
    first = _first_conv(spec.factory_path, spec.num_classes)
    c, h, w = spec.input_shape
    if first is None or first[1] == c:
        return
    name, want = first
    raise TrtpruneError(
        f"input shape {c}x{h}x{w} gives {c}-channel images, but model '{spec.name}' takes {want}: its first "
        f"convolution ({name}) has in_channels={want}",
        why="the input shape's first number is the channels of the images the model is given",
        fix=f"give --input-shape {want}x{h}x{w} (an image folder's {'grey' if want == 3 else 'colour'} images "
        f"are then converted to {'RGB' if want == 3 else 'grey'}), or a model whose first convolution takes {c}",
    )


# The smallest plausible std: the pixel std of real datasets is 0.2..0.35 in 0..1 units (ImageNet 0.229, CIFAR-10
# 0.2..0.25, MNIST 0.31) and 0.5 for models taking -1..1; below 0.06 the whole dataset would vary by less than
# +-15 grey levels, and the usual values with a misplaced decimal point (0.0229, 0.025, 0.05) all fall below it.
STD_LOW = 0.06


def _check_std(std: tuple[float, ...]) -> None:
    """A std of 0 or below cannot normalise (an error); a very small one multiplies the inputs far out of the range
    the model was trained on (a warning, once: usually a misplaced decimal point)."""
    shown = ", ".join(f"{v:g}" for v in std)
    if not all(v > 0 for v in std):  # also NaN
        raise TrtpruneError(
            f"normalisation std {shown}: std must be above 0",
            why="trtprune divides each channel by its std after subtracting the mean",
            fix="give each channel's pixel std in 0..1 units, e.g. --std 0.229,0.224,0.225 (ImageNet's)",
        )
    if min(std) < STD_LOW and std not in _warned_std:
        _warned_std.add(std)
        log.warning(
            "normalisation std %s is below %g: it multiplies every input by more than %d, far beyond what a model "
            "trained on real images sees; usual values are 0.229,0.224,0.225 (ImageNet), 0.2 to 0.25 (CIFAR-10), "
            "0.5 (models taking -1..1): check for a misplaced decimal point (0.229, not 0.0229)",
            shown,
            STD_LOW,
            int(1 / STD_LOW),
        )


_warned_std: set[tuple[float, ...]] = set()


def check_normalisation(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """The command line's and the API's check of a normalisation: in 0..1 units, std above 0 and plausible."""
    _check_units(mean, std)
    _check_std(std)


def _check_units(mean: tuple[float, ...], std: tuple[float, ...]) -> None:
    """trtprune scales pixels to 0..1 before it normalises them: a mean or std above 1 is in 0..255 units, and would
    feed the model near-constant inputs (a silently wrong accuracy). A mean above 1 cannot be right: an error; a std
    above 1 alone is unusual but possible: a warning, once."""
    if max(mean) <= 1:
        if max(std) > 1 and std not in _warned_std:
            _warned_std.add(std)
            log.warning(
                "normalisation std %s is above 1: trtprune scales pixels to 0..1 first, so this squeezes every input "
                "towards the mean; if it is in 0..255 pixel units, divide it by 255",
                ", ".join(f"{v:g}" for v in std),
            )
        return
    scaled = [", ".join(f"{v / 255:.4g}" for v in values) for values in (mean, std)]
    raise TrtpruneError(
        f"normalisation mean {', '.join(f'{v:g}' for v in mean)} / std {', '.join(f'{v:g}' for v in std)} is in "
        "0..255 pixel units",
        why="trtprune scales pixels to 0..1 before subtracting the mean and dividing by the std, so both are in 0..1 "
        "units (a mean above 1 cannot be the mean of any image)",
        fix=f"divide them by 255: --mean {scaled[0].replace(' ', '')} --std {scaled[1].replace(' ', '')} (API: "
        "mean=, std=); the result is the same normalisation",
    )


def _named(name: str) -> ModelSpec:
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" in name and name.split(":", 1)[0].endswith(".py"):
        file, fn = name.rsplit(":", 1)
        return ModelSpec(Path(file).stem + "." + fn, f"{file}:{fn}")
    if name.endswith(".py"):
        raise TrtpruneError(
            f"model '{name}' is a Python file without ':factory'",
            why="a model file is given as path/file.py:factory, naming the function that returns the nn.Module",
            fix=f"name the factory after ':', e.g. --model {name}:make_model",
        )
    raise TrtpruneError(
        f"unknown model '{name}'",
        why=f"built-in models are {', '.join(BUILTIN)}",
        fix="pick one of them, or give your own as path/to/file.py:factory_function",
    )


def model_argument(name: str) -> str:
    """How to give the model of spec name ``name`` to --model: a built-in's name, or for a user factory (spec name
    ``file.factory``) ``path/to/file.py:factory``, since the spec name does not keep the file's folder."""
    if name in BUILTIN or "." not in name:
        return name
    file, fn = name.rsplit(".", 1)
    return f"path/to/{file}.py:{fn}"


def _load_user_factory(file: str, fn: str):
    return user_function(file, fn, "user", "model file", "the factory that returns the nn.Module")


def build_model(spec: ModelSpec | str):
    """A fresh ``nn.Module`` (random weights) for a spec or name."""
    from torch import nn

    if isinstance(spec, str):
        spec = model_spec(spec)
    where, fn = spec.factory_path.rsplit(":", 1)
    if where.endswith(".py"):
        factory = _load_user_factory(where, fn)
        try:
            model = factory()
        except (Exception, SystemExit) as e:
            raise TrtpruneError(
                f"the factory '{spec.factory_path}' failed: {type(e).__name__}: {e}",
                fix="it is called without arguments and must return the model",
            ) from e
    else:
        model = getattr(importlib.import_module(where), fn)(num_classes=spec.num_classes)
    if not isinstance(model, nn.Module):
        raise TrtpruneError(
            f"factory '{spec.factory_path}' returned {type(model).__name__}, not a torch.nn.Module",
            fix="return the model instance from the factory",
        )
    return float32_model(model, spec.factory_path).eval()


FLOAT32_WHY = (
    "trtprune runs, prunes, fine-tunes and exports models in float32; the deployed precision is the device's: its "
    "fp16 and int8 engines are built from the float32 model"
)
_converted: set[str] = set()


def other_floats(model) -> list[str]:
    """The floating-point dtypes other than float32 of ``model``'s parameters and buffers ("float16", ...)."""
    import itertools

    tensors = itertools.chain(model.parameters(), model.buffers())
    return sorted({str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point()} - {"float32"})


def float32_model(model, name: str):
    """``model`` (built by the command line from the factory ``name``) in float32: a factory returning
    ``model.half()`` or ``.double()`` is converted, saying so once, instead of failing on float32 images."""
    dtypes = other_floats(model)
    if dtypes:
        if name not in _converted:
            _converted.add(name)
            log.warning("model '%s' has %s weights: converted to float32; %s", name, " and ".join(dtypes), FLOAT32_WHY)
        model.float()
    return model
