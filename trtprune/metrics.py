"""Model size and accuracy: parameters, multiply-accumulates, top-1."""

from __future__ import annotations

import logging

import torch
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.latency.ort import image_dtype, ort_session
from trtprune.log import progress
from trtprune.outputs import logits_of, not_logits, run_on
from trtprune.sources.images import Images, as_images

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


_warned: set[tuple[str, int, int]] = set()


def check_outputs(outputs: tuple[int, ...], what: str, classes: int = 10, images: Images | None = None) -> None:
    """A model scored on ``classes`` classes must give at least that many logits per image: fewer is an error (labels
    beyond them can never be predicted); more is a warning (the extra scores are never the label: a prediction of
    one counts as wrong).
    ``images`` says where the classes come from (an image folder's class folders)."""
    about, relabel = images.about_classes() if hasattr(images, "about_classes") else ("", "")
    n = outputs[-1] if len(outputs) == 2 else None
    if n is None or n < classes:
        raise TrtpruneError(
            f"{what} gives outputs of shape {list(outputs)}, not one row of class scores per image"
            if n is None
            else f"{what} gives {n} class scores per image, but the dataset has {classes} classes",
            why=(f"{about}; " if about else "")
            + "top-1 compares the largest of the model's class scores (logits, one row per image) with the label",
            fix=f"give a model whose last layer has {classes} outputs (e.g. nn.Linear(..., {classes}))"
            + (f", or {relabel}" if relabel else ""),
        )
    if n > classes and (what, n, classes) not in _warned:
        _warned.add((what, n, classes))
        log.warning(
            "%s gives %d class scores per image but the dataset has %d classes%s: its labels 0..%d are read as the "
            "model's classes 0..%d, and a prediction of one of the model's other %d classes counts as wrong (top-1 "
            "is the accuracy of a %d-way choice, not of a choice among the dataset's %d); right if the dataset's "
            "classes are the model's first %d, else give the model a last layer of %d outputs and fine-tune it",
            what,
            n,
            classes,
            f" ({about})" if about else "",
            classes - 1,
            classes - 1,
            n - classes,
            n,
            classes,
            classes,
            classes,
        )


def check_labels(labels: torch.Tensor, outputs: int, what: str, images: Images | None = None) -> None:
    """Every label must name one of the model's ``outputs`` class scores (0..outputs-1): a label beyond them can never
    be predicted (top-1 counts it wrong; the loss fails). Labels must be integer class indices, one per image."""
    _check_label_form(labels, outputs, images)
    if labels.dtype.is_floating_point or labels.dim() != 1 or not len(labels):
        return
    low, high = int(labels.min()), int(labels.max())
    if low >= 0 and high < outputs:
        return
    source = f" of '{images.name}'" if images is not None else ""
    raise TrtpruneError(
        f"a batch{source} has labels {low}..{high}, but {what} gives {outputs} class scores per image",
        why=f"a label is the index of its class's score: labels must be 0..{outputs - 1} for {outputs} scores",
        fix=f"give a model whose last layer has one output per class of the dataset (at least {high + 1}: "
        f"nn.Linear(..., {high + 1}) or more), or data labelled 0..{outputs - 1}",
    )


LABELS_WHY = (
    "classification takes one integer class index per image (N,): top-1 compares it with the index of the highest "
    "score, and the loss (cross-entropy) takes it as the index of the right class"
)


def _check_label_form(labels: torch.Tensor, outputs: int, images: Images | None) -> None:
    """Labels as rows of scores (one-hot, probabilities) or as floats are refused, not converted: a loader's
    batches are used as given, and float or row targets may mean something else (soft labels, a regression)."""
    source = f" of '{images.name}'" if images is not None else ""
    shape, dtype = tuple(labels.shape), str(labels.dtype).removeprefix("torch.")
    if labels.dim() == 2 and labels.shape[1] > 1:
        raise TrtpruneError(
            f"a batch{source} has labels of shape {shape}: a row per image (one-hot or class probabilities), not "
            "one class index per image",
            why=LABELS_WHY,
            fix="make the loader yield y.argmax(1) as the labels",
        )
    if labels.dim() == 2 and labels.shape[1] == 1 or labels.dim() > 2:
        raise TrtpruneError(
            f"a batch{source} has labels of shape {shape}, not one class index per image (N,)",
            why=LABELS_WHY,
            fix="make the loader yield y.reshape(-1) as the labels" if labels.dim() == 2 else "yield labels (N,)",
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        whole = labels.is_floating_point() and bool(torch.all(labels == labels.round()))
        raise TrtpruneError(
            f"a batch{source} has {dtype} labels" + (" (whole numbers)" if whole else ""),
            why=LABELS_WHY + "; it must be an integer tensor",
            fix="make the loader yield y.long() as the labels"
            if whole
            else f"make the loader yield each image's class index (0..{outputs - 1}) as an integer tensor",
        )


def _batches(images, batch_size: int) -> int | None:
    """A progress bar's number of batches (None where the number of images is not known before reading them)."""
    n = images.size_hint()
    return None if n is None else -(-n // batch_size)


class _Counter:
    """Top-1, and top-5 where there are more than 10 classes, in percent."""

    def __init__(self, images: Images, what: str):
        self.images, self.what, self.n, self.correct = images, what, 0, {1: 0, 5: 0}

    def add(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        if self.n == 0:  # the first batch: the head fits the data
            check_outputs(tuple(logits.shape), self.what, self.images.num_classes or logits.shape[-1], self.images)
        check_labels(labels, logits.shape[-1], self.what, self.images)  # every batch: a loader's labels are unknown
        for k in self.correct:
            if k <= logits.shape[1]:
                top = logits.topk(k, 1).indices
                self.correct[k] += int((top == labels[:, None]).any(1).sum())
        self.n += len(labels)

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise TrtpruneError(f"no images to evaluate {self.what} on", fix="give a dataset with images")
        out = {"top1": 100.0 * self.correct[1] / self.n}
        if (self.images.num_classes or 0) > 10:
            out["top5"] = 100.0 * self.correct[5] / self.n
        return out


def accuracy_torch(model: nn.Module, images, mean, std, batch_size: int = 500, desc: str = "eval") -> dict:
    """``{"top1": %, ["top5": %]}`` of ``model`` on ``images`` (see :func:`trtprune.sources.images.as_images`)."""
    images = as_images(images)
    model.eval()
    device = model_device(model)
    counter = _Counter(images, "the model")
    with torch.no_grad():
        for xb, yb in progress(
            images.batches(batch_size, mean, std), total=_batches(images, batch_size), desc=desc, unit="batch"
        ):
            out = run_on(model, xb.to(device), first=counter.n == 0)
            counter.add(logits_of(out).float().cpu(), yb)
    return counter.result()


def model_device(model: nn.Module) -> torch.device:
    """Where the model is (a GPU while fine-tuning on one): its first parameter's or buffer's device; the CPU for a
    model without either (nn.Flatten, an ONNX model behind a module)."""
    first = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    return first.device if first is not None else torch.device("cpu")


def top1_torch(model: nn.Module, images, mean, std, batch_size: int = 500, desc: str = "eval") -> float:
    """Top-1 accuracy in percent of ``model`` on ``images`` (Images, (x, y) uint8 NHWC arrays, or a loader)."""
    return accuracy_torch(model, images, mean, std, batch_size, desc)["top1"]


def accuracy_onnx(path, images, mean, std, threads: int = 2, desc: str = "eval") -> dict:
    """Top-1 (and top-5) of an ONNX model with ONNX Runtime; its static batch is filled by padding the last one."""
    images = as_images(images)
    sess = ort_session(path, threads)
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise TrtpruneError(
            f"'{path}' takes {len(inputs)} inputs ({', '.join(i.name for i in inputs)}), not one batch of images",
            why="trtprune evaluates image classifiers: one input of shape (batch, C, H, W)",
            fix="evaluate the ONNX export of a model with one image input (trtprune export --model ...)",
        )
    inp, outputs = inputs[0], sess.get_outputs()
    dtype = image_dtype(inp, path)
    if len(outputs) != 1:
        raise not_logits(f"'{path}' gives {len(outputs)} outputs", [o.name for o in outputs])
    batch = inp.shape[0] if isinstance(inp.shape[0], int) else 256
    counter = _Counter(images, f"'{path}'")
    for xb, yb in progress(images.batches(batch, mean, std), total=_batches(images, batch), desc=desc, unit="batch"):
        if len(inp.shape) != 4 or tuple(inp.shape[1:]) != tuple(xb.shape[1:]):
            raise TrtpruneError(
                f"'{path}' takes input '{inp.name}' of shape {list(inp.shape)}, but the images are "
                f"{list(xb.shape[1:])} (C, H, W)",
                fix="evaluate the ONNX export of a model made for these images (trtprune export --model ...)",
            )
        n = len(xb)
        if n < batch:
            xb = torch.cat([xb, xb.new_zeros(batch - n, *xb.shape[1:])])
        logits = sess.run(None, {inp.name: xb.numpy().astype(dtype, copy=False)})[0][:n]
        counter.add(torch.from_numpy(logits).float(), yb)
    return counter.result()


def top1_onnx(path, images, mean, std, threads: int = 2, desc: str = "eval") -> float:
    return accuracy_onnx(path, images, mean, std, threads, desc)["top1"]
