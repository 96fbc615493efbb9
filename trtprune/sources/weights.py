"""Loading and saving weights: published checkpoints, plain state dicts, and pruned models.

Every load uses ``torch.load(..., weights_only=True)``: a checkpoint cannot run code, unless the caller
opts in with ``with unsafe_pickle():`` (the CLI's ``--unsafe-pickle``), for files the user trusts. A pruned model
is saved as the dense architecture's name, its replayable pruning history and the state dict; it is
rebuilt by replaying the history on a fresh dense model.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.fsutil import atomic_path
from trtprune.pruning.prune import replay
from trtprune.sources import fetch
from trtprune.sources.images import is_loaders_spec
from trtprune.sources.models import build_model, model_argument, model_spec
from trtprune.sources.userfile import check_user_file

log = logging.getLogger(__name__)

PRUNED_FORMAT = "trtprune.pruned/1"
# Only these may be absent from a checkpoint (old BN checkpoints predate the counter).
OPTIONAL_SUFFIXES = ("num_batches_tracked",)


_UNSAFE_PICKLE = contextvars.ContextVar("trtprune_unsafe_pickle", default=False)


@contextlib.contextmanager
def unsafe_pickle():
    """Within this block checkpoints that need full unpickling (``torch.save(model)``) are loaded too.

    Unpickling can run any code the file contains: only for files the user trusts and asked for.
    """
    token = _UNSAFE_PICKLE.set(True)
    try:
        yield
    finally:
        _UNSAFE_PICKLE.reset(token)


def _not_a_checkpoint(path: Path, error: Exception) -> None:
    """When torch cannot load ``path``: a clear error if the file is empty, a zip archive cut short (every
    ``torch.save`` file is a zip), or an ONNX model; nothing when it is something else."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4)
    if size == 0:
        raise TrtpruneError(
            f"weights file '{path}' is empty (0 bytes)",
            why="it was not written to the end: an interrupted save, copy or download",
            fix="save, copy or download the checkpoint again",
        ) from error
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise TrtpruneError(
            f"weights file '{path}' is a truncated PyTorch checkpoint ({size:,} bytes)",
            why="torch.save writes a zip archive, and this one lacks its end (the zip directory): it was cut short by "
            "an interrupted save, copy or download",
            fix="save, copy or download the checkpoint again",
        ) from error
    _not_a_torch_file(path, error)
    if head[:1] == b"\x08":  # an ONNX file starts with its ir_version field
        import onnx

        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception:
            return
        if model.ir_version > 0 and len(model.graph.node) > 0:
            raise TrtpruneError(
                f"'{path}' is an ONNX model, not a PyTorch checkpoint",
                why="--weights takes the state dict or checkpoint (.pt, .pth, .th) of the PyTorch --model",
                fix="use the ONNX file with the commands that take ONNX (eval --onnx, measure, quantize), and give "
                "--weights the PyTorch checkpoint",
            ) from error


_FIX_WEIGHTS = "give --weights the PyTorch checkpoint (.pt, .pth, .th: torch.save(model.state_dict(), path))"


def _text(head: bytes) -> str | None:
    """``head`` (a file's first bytes) as text, or None if it is binary (a character cut at its end is text)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:
            return None
        text = head[: e.start].decode("utf-8")
    return None if "\0" in text else text


def _zip_or_pickle(path: Path) -> bool:
    """Whether ``path`` starts as torch.save writes: a zip archive, or (the legacy format) a pickle."""
    with open(path, "rb") as f:
        head = f.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def _not_a_torch_file(path: Path, error: Exception) -> None:
    """A file torch cannot load that is plainly something else: an SQLite database (a latency table), JSON (a plan,
    a result) or other text. It is said what it is; --unsafe-pickle (for pickles) would not help."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"SQLite format 3\0"):
        raise TrtpruneError(
            f"weights file '{path}' is an SQLite database, not a PyTorch checkpoint",
            why="trtprune writes its latency tables (--lut, lut.sqlite) as SQLite; --weights takes the model's weights",
            fix=_FIX_WEIGHTS,
        ) from error
    if _zip_or_pickle(path):
        return
    text = _text(head)
    if text is None:
        return
    kind = "a JSON file" if text.lstrip()[:1] in ("{", "[") else "a text file"
    if kind == "a JSON file" and '"trtprune.plan/' in text:
        kind = "a trtprune plan (JSON)"
    raise TrtpruneError(
        f"weights file '{path}' is {kind}, not a PyTorch checkpoint",
        why="--weights takes the state dict or checkpoint that torch.save wrote (a zip archive of tensors)"
        + ("; a plan is given to prune --plan" if "plan" in kind else ""),
        fix=_FIX_WEIGHTS,
    ) from error


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The dict stored in a checkpoint file, loaded without executing code (see :func:`unsafe_pickle`)."""
    path = Path(path)
    if not path.exists():
        raise TrtpruneError(f"weights file '{path}' does not exist", fix="check the path given to --weights")
    if not path.is_file():
        raise TrtpruneError(f"weights path '{path}' is not a file", fix="give the checkpoint file, not a folder")
    unsafe = _UNSAFE_PICKLE.get()
    if unsafe:
        log.warning("loading '%s' with full unpickling (--unsafe-pickle): the file can run code", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not unsafe)
    except Exception as e:
        _not_a_checkpoint(path, e)  # empty, cut short, or an ONNX model: say so, not "pickled objects"
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().split("\n")[0]  # torch colours its messages
        pickled = not unsafe and first.startswith("Weights only load failed") and _zip_or_pickle(path)
        if pickled:
            first = "it holds pickled Python objects, not only tensors (e.g. a model saved by torch.save(model))"
        elif not _zip_or_pickle(path):
            first = "it is neither torch.save's zip archive nor a pickle"
        raise TrtpruneError(
            f"cannot read weights file '{path}': {type(e).__name__}: {first}",
            why="trtprune loads checkpoints with weights_only=True: tensors and plain containers only, "
            "never pickled code or whole-model objects"
            if pickled
            else "it is truncated or not a PyTorch checkpoint",
            fix="save the model's state_dict() (torch.save(model.state_dict(), path)) and load that"
            + ("; or, only for a file you trust, pass --unsafe-pickle" if pickled else ""),
        ) from e
    if unsafe and isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict):
        raise TrtpruneError(f"weights file '{path}' holds a {type(obj).__name__}, not a state dict")
    return obj


def state_dict_of(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint, with a DataParallel ``module.`` prefix stripped."""
    sd = checkpoint.get("state_dict", checkpoint)
    if not isinstance(sd, dict):
        raise TrtpruneError("the checkpoint's 'state_dict' entry is not a dict")
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state(model: nn.Module, sd: dict[str, torch.Tensor], source: str) -> None:
    """Load ``sd`` into ``model`` strictly; a mismatch is a clear error, listing what differs."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith(OPTIONAL_SUFFIXES)]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and tuple(sd[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape (file vs model)", wrong)):
            if items:
                parts.append(f"{len(items)} {label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}")
        raise TrtpruneError(
            f"weights '{source}' do not fit the model",
            why="; ".join(parts),
            fix="pass the weights trained for this exact architecture (--model), "
            "or a trtprune pruned checkpoint together with its base model",
        )
    model.load_state_dict(sd, strict=False)  # only OPTIONAL_SUFFIXES can be absent here


def save_pruned(path: str | os.PathLike, model: nn.Module, base_model: str, history: list, **meta) -> None:
    """Atomically write a pruned checkpoint: base model name, pruning history, weights, metadata."""
    payload = {
        "format": PRUNED_FORMAT,
        "base_model": base_model,
        "history": history,
        "state_dict": model.state_dict(),
        **meta,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def is_pruned_checkpoint(path: str | os.PathLike) -> bool:
    return read_checkpoint(path).get("format") == PRUNED_FORMAT


def load_model(model: str, weights: str | os.PathLike | None = None):
    """Build ``model`` (a built-in name or ``file.py:factory``) and load ``weights`` into it.

    ``weights`` may be a published checkpoint, a plain state dict, or a trtprune pruned checkpoint
    (its pruning history is replayed on the dense model first). Returns ``(module, spec)``.
    """

    spec = model_spec(model)
    net = build_model(spec)
    if weights is None:
        return net, spec
    ckpt = read_checkpoint(weights)
    if ckpt.get("format") == PRUNED_FORMAT:
        if ckpt.get("base_model") != spec.name:
            raise TrtpruneError(
                f"'{weights}' was pruned from '{ckpt.get('base_model')}', not from '{spec.name}'",
                fix=f"use --model {model_argument(str(ckpt.get('base_model')))}",
            )
        replay(net, spec.input_shape, ckpt["history"])
    load_state(net, state_dict_of(ckpt), str(weights))
    return net.eval(), spec


def resolve_weights(model_name: str, weights: str | None, data: str | None) -> Path:
    """The weights to start from: the given file, or the model's published checkpoint."""
    if weights:
        return Path(weights)
    spec = model_spec(model_name)
    file = spec.factory_path.rsplit(":", 1)[0]
    if file.endswith(".py"):  # say that first, not that it has no weights
        check_user_file(file, "model file")
    if spec.pretrained is None:
        raise TrtpruneError(
            f"model '{model_name}' has no published weights",
            fix="train it first and pass the state dict with --weights",
        )
    # --data file.py:loaders (or a task's loaders) names the user's loaders, not a folder: the published weights
    # come from the cache
    folder = isinstance(data, (str, os.PathLike)) and not is_loaders_spec(data)
    root, may_download = fetch.data_root(data if folder else None)
    return fetch.ensure_resource(spec.pretrained, root, may_download)
