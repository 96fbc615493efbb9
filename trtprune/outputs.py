"""What a model returns, whatever its structure: one tensor, or tuples, lists and dicts of tensors, nested.

Classifiers return one tensor of logits; detectors and segmenters return several (ultralytics 8.4's DetectionModel
gives ``(predictions, {"boxes": ..., "scores": ..., "feats": [three feature maps]})`` in eval mode). Every stage
that runs a model reads its outputs through :func:`output_leaves`: export names one ONNX output per tensor (in the
order torch's exporter flattens them), parity compares every one, and pruning keeps the shape of every one.
Targets given with a batch may be any structure too; :func:`to_device` moves them.
"""

from __future__ import annotations

import re

import torch
import torch.utils._pytree as pytree

from trtprune.errors import TrtpruneError

SINGLE_NAME = "logits"  # the ONNX output of a model that returns one tensor (a classifier's logits)


def _name(path) -> str:
    parts = []
    for key in path:
        if isinstance(key, pytree.SequenceKey):
            parts.append(str(key.idx))
        elif isinstance(key, pytree.MappingKey):
            parts.append(re.sub(r"[^0-9A-Za-z_]", "_", str(key.key)))
        else:  # an attribute of a named tuple or dataclass
            parts.append(re.sub(r"[^0-9A-Za-z_]", "_", str(getattr(key, "name", key))))
    name = "_".join(parts)
    return f"output{name}" if not parts or name[0].isdigit() else name


def output_leaves(out, what: str = "the model") -> list[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of ``out``, in the order torch's exporter flattens them; names are ONNX
    output names (``logits`` for a single tensor; ``output0``, ``output1_2``, ``boxes``, ``output1_feats_0`` ...
    otherwise). Anything but tensors in tuples, lists and dicts is an error saying what was found."""
    if isinstance(out, torch.Tensor):
        return [(SINGLE_NAME, out)]
    flat, _ = pytree.tree_flatten_with_path(out)
    bad = [(p, v) for p, v in flat if not isinstance(v, torch.Tensor)]
    if bad or not flat:
        found = f"{type(bad[0][1]).__name__} at output{pytree.keystr(bad[0][0])}" if bad else "nothing"
        raise TrtpruneError(
            f"{what} returns {type(out).__name__} holding {found}",
            why="trtprune reads a model's outputs as one tensor, or tuples, lists and dicts of tensors: each tensor "
            "becomes one output of the exported model",
            fix="make forward() return only tensors (drop None, numbers and strings from its outputs; wrap the model "
            "in an nn.Module whose forward keeps the tensors you deploy)",
        )
    names = [_name(p) for p, _ in flat]
    return list(zip(names, [v for _, v in flat]))


def logits_of(outputs, what: str = "the model") -> torch.Tensor:
    """A classifier's one tensor of logits (alone, or the only tensor of a tuple, list or dict); a model returning
    several is not one."""
    leaves = output_leaves(outputs, what)
    if len(leaves) != 1:
        raise not_logits(f"{what} returns {len(leaves)} tensors", [n for n, _ in leaves])
    return leaves[0][1]


def not_logits(found: str, names) -> TrtpruneError:
    """The error for a model (or ONNX file) with several outputs where classification needs its one tensor of
    logits: ``found`` says what it gives, ``names`` its outputs."""
    return TrtpruneError(
        f"{found} ({', '.join(names)}), not one row of class scores per image",
        why="the classification task (the default) compares the model's logits (its one output) with integer labels",
        fix="give the task of your model (--task file.py:task, API loss=/metric=), or a model returning logits",
    )


def to_device(obj, device, non_blocking: bool = False):
    """``obj`` (a tensor, or tensors in tuples, lists and dicts; anything else as it is) on ``device``."""
    return pytree.tree_map(lambda v: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v, obj)


def to_float(out):
    """Every floating-point tensor of ``out`` in float32 (autocast computes some in bf16; losses want fp32)."""
    return pytree.tree_map(lambda v: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v, out)


def count(batch) -> int:
    """How many samples a batch of inputs holds (its first tensor's first dimension)."""
    leaves = [v for v in pytree.tree_leaves(batch) if isinstance(v, torch.Tensor)]
    return int(leaves[0].shape[0]) if leaves and leaves[0].dim() else 0


_SHAPE_ERRORS = re.compile(
    r"size mismatch|shapes cannot be multiplied|mat1 and mat2|expected input.*channels|to have \d+ channels|"
    r"input size|sizes of tensors must match|must match the size|kernel size can't be greater",
    re.IGNORECASE,
)


def model_failed(
    model: torch.nn.Module, error: Exception, shape, what: str = "the model", zeros: bool = True
) -> TrtpruneError:
    """The error to raise when ``model`` fails on an input of ``shape`` (batch first: zeros, or with ``zeros=False``
    a batch of the data), with the advice that fits what it raised: its dtype, the input shape, or its own code."""
    first = (str(error).strip().splitlines() or [""])[0]
    found = f"{what} fails on an input of shape {tuple(shape)}: {type(error).__name__}: {first}"
    dtypes = sorted({str(p.dtype).replace("torch.", "") for p in model.parameters()} - {"float32"})
    if dtypes:
        return TrtpruneError(
            found,
            why=f"its weights are {', '.join(dtypes)}; trtprune runs, prunes and exports models in float32 (precision "
            "is the device's: fp16 and int8 engines are built from the float32 model)",
            fix="give the float32 model (model.float()); choose the deployed precision with the device",
        )
    if isinstance(error, TypeError) and "required positional argument" in str(error):
        return TrtpruneError(
            found,
            why="its forward() takes more than one input; trtprune exports, measures and prunes models that take one "
            "tensor (a batch of images)",
            fix="wrap it in an nn.Module whose forward(images) makes the other inputs (constants, or computed from "
            "the images) and calls it",
        )
    if _SHAPE_ERRORS.search(str(error)):
        return TrtpruneError(
            found,
            why="the input shape does not fit the model",
            fix="give the image shape the model takes with --input-shape CxHxW (API: input_shape=(C, H, W)), e.g. "
            "3x224x224, or check --model",
        )
    if not zeros:
        return TrtpruneError(
            found,
            why="forward() raised on the first batch of the images",
            fix="run the model on a batch of your data yourself and fix what it raises; run with -v for the traceback",
        )
    return TrtpruneError(
        found,
        why="forward() raised on a batch of one image of zeros",
        fix=f"run model(torch.zeros{tuple(shape)}) yourself and fix what it raises; run with -v for the traceback",
    )


def run_on(model: torch.nn.Module, xb: torch.Tensor, what: str = "the model", first: bool = False):
    """``model(xb)`` on a batch of the data. What it raises on the ``first`` batch, and on any batch an error of
    shapes (a head fixed to another size, other channels), becomes :func:`model_failed`'s error: a user error with
    advice, not a traceback from inside the model."""
    try:
        return model(xb)
    except TrtpruneError:
        raise
    except Exception as e:
        if first or (isinstance(e, RuntimeError) and _SHAPE_ERRORS.search(str(e))):
            raise model_failed(model, e, tuple(xb.shape), what, zeros=False) from e
        raise
