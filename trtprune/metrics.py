"""Model size and accuracy: parameters, multiply-accumulates, top-1."""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from . import data as D
from .errors import TrtpruneError
from .log import progress

log = logging.getLogger(__name__)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of convs and linears for one input of ``input_shape`` (batch 1)."""
    total = 0

    def hook(m, inputs, output):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += output.numel() * (m.in_channels // m.groups) * kh * kw
        elif isinstance(m, nn.Linear):
            total += output.numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return int(total)


_warned: set[tuple[str, int]] = set()


def check_outputs(outputs: tuple[int, ...], what: str, classes: int = len(D.CLASSES)) -> None:
    """A model scored on ``classes`` classes must give at least that many logits per image: fewer is an error (labels
    beyond them can never be predicted); more is a warning (a model made for another dataset scores near 0 %)."""
    n = outputs[-1] if len(outputs) == 2 else None
    if n is None or n < classes:
        raise TrtpruneError(
            f"{what} gives outputs of shape {list(outputs)}, not one row of class scores per image"
            if n is None
            else f"{what} gives {n} class scores per image, but the dataset has {classes} classes",
            why=f"top-1 compares the largest of the model's {classes} class scores (logits, one row per image) with "
            "the label",
            fix=f"give a model whose last layer has {classes} outputs (e.g. nn.Linear(..., {classes}))",
        )
    if n > classes and (what, n) not in _warned:
        _warned.add((what, n))
        log.warning(
            "%s gives %d class scores per image but the dataset has %d classes: it was made for another dataset, "
            "so its accuracy here is meaningless (near 0 %%); give it a last layer of %d outputs and train it",
            what,
            n,
            classes,
            classes,
        )


def top1_torch(
    model: nn.Module, x: np.ndarray, y: np.ndarray, mean, std, batch_size: int = 500, desc: str = "eval"
) -> float:
    """Top-1 accuracy in percent of ``model`` on uint8 NHWC images ``x`` with labels ``y``."""
    model.eval()
    device = next(model.parameters()).device  # where the model is (a GPU while fine-tuning on one)
    xt, yt = D.to_tensor(x), torch.from_numpy(y)
    correct = 0
    with torch.no_grad():
        for xb, yb in progress(
            D.batches(xt, yt, batch_size, mean, std), total=-(-len(x) // batch_size), desc=desc, unit="batch"
        ):
            logits = model(xb.to(device))
            if not correct:  # until the first hit: cheap, and the first batch is always checked
                check_outputs(tuple(logits.shape), "the model")
            correct += int((logits.argmax(1).cpu() == yb).sum())
    return 100.0 * correct / len(x)


def top1_onnx(path, x: np.ndarray, y: np.ndarray, mean, std, threads: int = 2, desc: str = "eval") -> float:
    """Top-1 of an ONNX model with ONNX Runtime; its static batch is filled by padding the last one."""
    from .latency.ort import ort_session

    sess = ort_session(path, threads)
    if len(sess.get_inputs()) != 1:
        raise TrtpruneError(
            f"'{path}' takes {len(sess.get_inputs())} inputs ({', '.join(i.name for i in sess.get_inputs())}), "
            "not one batch of images",
            why="trtprune evaluates image classifiers: one input of shape (batch, C, H, W)",
            fix="evaluate the ONNX export of a model with one image input (trtprune export --model ...)",
        )
    inp = sess.get_inputs()[0]
    image = (x.shape[3], *x.shape[1:3]) if x.ndim == 4 else tuple(x.shape[1:])  # NHWC images -> C, H, W
    if len(inp.shape) != 4 or tuple(inp.shape[1:]) != image:
        raise TrtpruneError(
            f"'{path}' takes input '{inp.name}' of shape {list(inp.shape)}, but the images are {list(image)} (C, H, W)",
            fix="evaluate the ONNX export of a model made for these images (trtprune export --model ...)",
        )
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 256
    xt, yt = D.to_tensor(x), torch.from_numpy(y)
    correct = 0
    for xb, yb in progress(D.batches(xt, yt, batch, mean, std), total=-(-len(x) // batch), desc=desc, unit="batch"):
        n = len(xb)
        if n < batch:
            xb = torch.cat([xb, xb.new_zeros(batch - n, *xb.shape[1:])])
        logits = sess.run(None, {inp.name: xb.numpy()})[0]
        if not correct:
            check_outputs(logits.shape, f"'{path}'")
        logits = logits[:n]
        correct += int((logits.argmax(1) == yb.numpy()).sum())
    return 100.0 * correct / len(x)
