"""Labelled images, read in batches: what fine-tuning, evaluation, importance scoring and calibration read.

Three kinds, one interface (:class:`Images`):

* :class:`ArrayImages`: uint8 NHWC pixels in memory (CIFAR-10 as shipped: 150 MB); training crops with 4 pixels
  of zero padding and flips, as the CIFAR ResNets were trained.
* :class:`FolderImages`: an image folder (``train/<class>/*``, ``val/<class>/*``) of any size and number of
  classes, decoded lazily by a ``torch.utils.data.DataLoader`` with worker processes (never all in memory).
  Images larger than the model's input are read as ImageNet's were: training takes a random crop of 35-100 %
  of the area at an aspect of 3/4..4/3, resized to the input, and flips it; evaluation resizes the shorter
  side to 1/0.875 of the input and takes the centre. Images at the input size are read as CIFAR's were:
  training shifts them by up to 1/8 of a side (zero fill) and flips them; evaluation takes them whole.
* :class:`LoaderImages`: the user's own loader yielding ``(x, y)`` batches, used as given (its transforms,
  normalisation and order are the user's).

``batches(batch_size, mean, std, shuffle=, augment=, seed=)`` yields normalised float32 NCHW tensors and
int64 labels. The order and the augmentation depend on ``seed`` only (and on the image's index), not on
the number of worker processes nor on which process asks, so every process of a distributed fine-tune
draws the same global batch.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.utils._pytree as pytree

from trtprune.cpus import usable_cpus
from trtprune.errors import TrtpruneError
from trtprune.sources import datasets as D
from trtprune.sources import fetch
from trtprune.sources.userfile import user_function

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = D.IMAGE_SUFFIXES
EVAL_CROP = 0.875  # evaluation: resize the shorter side to size / 0.875, then the centre crop (ImageNet practice)
TRAIN_SCALE = (0.35, 1.0)  # training crops: this fraction of the image's area ...
TRAIN_RATIO = (3 / 4, 4 / 3)  # ... at this aspect ratio, resized to the input size


class Images:
    """A labelled image set. ``num_classes`` is None when it cannot be known (a user loader without it)."""

    num_classes: int | None = None
    name = "images"

    def __len__(self) -> int:
        raise NotImplementedError

    def take(self, start: int, stop: int | None = None) -> Images:
        """The images ``start:stop`` (in the set's own order)."""
        raise NotImplementedError

    def batches(
        self, batch_size: int, mean, std, *, shuffle: bool = False, augment: bool = False, seed: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def select(self, indices: Sequence[int]) -> Images:
        """The images at ``indices``."""
        raise NotImplementedError

    def size_hint(self) -> int | None:
        """The number of images where it is known without reading them (a progress bar's total), else None."""
        return len(self)

    def limit(self, n: int) -> Images:
        """The first ``n`` images (all of them for 0)."""
        return self.take(0, n) if n else self

    def about_classes(self) -> tuple[str, str]:
        """Where the number of classes comes from, and another way to fit a head to them (or ""), for messages about
        a head that does not fit them."""
        return "", ""


class ArrayImages(Images):
    def __init__(self, x: np.ndarray, y: np.ndarray, num_classes: int | None = None, name: str = "arrays"):
        self.x, self.y, self.name = x, np.asarray(y, dtype=np.int64), name
        self.num_classes = num_classes or (int(self.y.max()) + 1 if len(self.y) else None)
        self._xt = None

    def __len__(self) -> int:
        return len(self.x)

    def take(self, start: int, stop: int | None = None) -> ArrayImages:
        return ArrayImages(self.x[start:stop], self.y[start:stop], self.num_classes, self.name)

    def select(self, indices) -> ArrayImages:
        return ArrayImages(self.x[indices], self.y[indices], self.num_classes, self.name)

    def batches(self, batch_size, mean, std, *, shuffle=False, augment=False, seed=0):
        if self._xt is None:
            self._xt = D.to_tensor(self.x)
        yield from D.batches(
            self._xt, torch.from_numpy(self.y), batch_size, mean, std, shuffle=shuffle, train_augment=augment, seed=seed
        )


def _train_crop(w: int, h: int, gen: np.random.Generator) -> tuple[int, int, int, int]:
    """A random box (left, top, right, bottom) of TRAIN_SCALE of the area at an aspect in TRAIN_RATIO."""
    area = w * h
    for _ in range(10):
        target = area * gen.uniform(*TRAIN_SCALE)
        ratio = math.exp(gen.uniform(math.log(TRAIN_RATIO[0]), math.log(TRAIN_RATIO[1])))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            left, top = int(gen.integers(0, w - cw + 1)), int(gen.integers(0, h - ch + 1))
            return left, top, left + cw, top + ch
    side = min(w, h)  # a centre square when no random box fits
    return (w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2


def _eval_box(w: int, h: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The centre box that, resized to ``size`` (H, W), is the centre crop after resizing the shorter side."""
    th, tw = size
    scale = min(w / (tw / EVAL_CROP), h / (th / EVAL_CROP))  # source pixels per resized pixel
    cw, ch = min(w, tw * scale), min(h, th * scale)
    left, top = (w - cw) / 2, (h - ch) / 2
    return round(left), round(top), round(left + cw), round(top + ch)


class _Decoded(torch.utils.data.Dataset):
    """Files decoded to uint8 CHW tensors of ``size`` with ``channels`` (3: RGB, 1: grey); index
    ``(i, augment, seed)``; an item is ``(i, tensor, None)``, or ``(i, None, error)`` for a file that cannot be read."""

    def __init__(self, files: Sequence[Path], size: tuple[int, int], channels: int = 3):  # noqa: D107
        self.files, self.size, self.channels = files, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, key):
        try:
            return key[0], self._decode(*key), None
        except Exception as e:  # a damaged or non-image file: skipped by the caller, who names it
            return key[0], None, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"

    def _decode(self, i: int, augment: bool, seed: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = eight_bit(im, self.channels)
            w, h = im.size
            th, tw = self.size
            gen = np.random.default_rng([seed, i]) if augment else None
            if (w, h) == (tw, th):  # at the input size already (CIFAR-like): shifted and flipped, or whole
                if augment:
                    pad = max(1, tw // 8)
                    dx, dy = (int(v) for v in gen.integers(-pad, pad + 1, 2))
                    im = im.crop((dx, dy, dx + tw, dy + th))  # zero fill beyond the edges
            else:
                box = _train_crop(w, h, gen) if augment else _eval_box(w, h, self.size)
                im = im.resize((tw, th), Image.BILINEAR, box=box)
            if augment and gen.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            a = np.asarray(im)
            return torch.from_numpy((a[..., None] if a.ndim == 2 else a).transpose(2, 0, 1).copy())


def depth_change(mode: str) -> str:
    """How :func:`eight_bit` reads an image of PIL ``mode`` with more than 8 bits per pixel ("" for 8-bit modes)."""
    if mode.startswith("I;16"):
        return "scaled from 16 bits to 8 (value >> 8: 65535 is white)"
    if mode == "I":
        return "scaled from 16 (or 32) bits to 8 (value >> 8, or >> 24 where a value is above 65535)"
    if mode == "F":
        return "scaled from floats to 8 bits (x 255 where the values are 0..1, else clipped to 0..255)"
    return ""


def eight_bit(im, channels: int):
    """A decoded PIL image as 8-bit RGB (``channels`` 3) or grey (1). 16-bit, 32-bit and float grey images are
    scaled to 0..255 by their own range first: PIL's ``convert`` clips them (every 16-bit pixel above 255 white)."""
    from PIL import Image

    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im)
        if im.mode == "F":
            a = a * 255.0 if a.size and float(np.nanmax(a)) <= 1 else a
            a = np.nan_to_num(a).clip(0, 255).round()
        else:
            a = np.asarray(a, np.int64).clip(0, None)
            a = a >> (24 if im.mode == "I" and a.size and a.max() > 65535 else 8)
        im = Image.fromarray(a.astype(np.uint8), "L")
    return im.convert("RGB" if channels == 3 else "L")


def _collate(items):
    """A batch of decoded items: ``(indices, uint8 NCHW or None, [(index, error)] of the files skipped)``."""
    good = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, err) for i, x, err in items if x is None]
    return [i for i, _ in good], torch.stack([x for _, x in good]) if good else None, bad


MAX_NAMED = 5  # unreadable files named one by one (per process); beyond them, a count
_named_bad: set[str] = set()


def _warn_unreadable(file: Path, error: str) -> None:
    if str(file) in _named_bad or len(_named_bad) > MAX_NAMED:
        return
    _named_bad.add(str(file))
    if len(_named_bad) > MAX_NAMED:
        log.warning("more unreadable images are skipped: their number is given at the end of each pass")
    else:
        log.warning("skipped an unreadable image '%s' (%s): remove or replace it", file, error)


def _default_workers() -> int:
    return min(4, usable_cpus())


_said: set[tuple[str, int, tuple[int, int]]] = set()


def _say_resized(root: Path, first: Path, channels: int, size: tuple[int, int]) -> None:
    """One line (per folder and shape, per process) when the folder's images are read at another size or with other
    channels than they have: what they are (the first one's), what the model takes, and what is done."""
    from PIL import Image

    try:
        with Image.open(first) as im:
            (w, h), mode = im.size, im.mode
    except Exception:  # a damaged first file: reading it later names it
        return
    th, tw = size
    grey = mode in ("1", "L", "LA", "I", "F") or mode.startswith("I;16")
    changes = []
    if (w, h) != (tw, th):
        changes.append(
            f"resized to {tw}x{th} (bilinear; evaluation takes the centre {EVAL_CROP:.1%} of the shorter side, "
            "training random crops)"
        )
    if depth_change(mode):
        changes.append(depth_change(mode))
    if grey != (channels == 1):
        changes.append("converted to grey" if channels == 1 else "converted to RGB")
    key = (str(root), channels, size)
    if changes and key not in _said:
        _said.add(key)
        log.info(
            "images in '%s' are %dx%d %s (the first one), the model takes %dx%dx%d: %s; give --input-shape to read "
            "them at another size",
            root,
            w,
            h,
            ("16-bit grey" if mode.startswith("I;16") else "grey") if grey else "colour",
            channels,
            th,
            tw,
            " and ".join(changes),
        )


def _classes_note(root: Path, classes: Sequence[str]) -> tuple[str, str]:
    """How an image folder's classes are labelled, and how to relabel them, for a head that does not fit them."""
    splits = [root / s for s in ("train", *SPLIT_FOLDERS["test"]) if (root / s).is_dir()]
    found = sorted({d.name for s in splits for d in s.iterdir() if d.is_dir()} & set(classes))
    names = ", ".join(found[:6]) + (", ..." if len(found) > 6 else "")
    if list(classes) != list(D.CLASSES):
        return f"the image folder '{root}' has {len(classes)} class folders ({names}), labelled in sorted order", ""
    if len(found) == len(classes):
        return "", ""  # CIFAR-10 as an image folder
    labels = ", ".join(str(D.CLASSES.index(n)) for n in found[:6]) + (", ..." if len(found) > 6 else "")
    return (
        f"the image folder '{root}' has {len(found)} class folders ({names}), named as CIFAR-10's classes: they keep "
        f"CIFAR-10's labels ({labels}) of its {len(classes)}",
        f"rename the class folders to names that are not CIFAR-10's: they are then labelled 0..{len(found) - 1} in "
        "sorted order",
    )


class FolderImages(Images):
    """Image files with labels, decoded lazily to ``size`` (H, W) with ``channels`` (3 or 1) by ``workers`` processes
    (0: in this one). Files that cannot be decoded are skipped with a warning naming them."""

    def __init__(
        self,
        files: Sequence[Path],
        labels: np.ndarray,
        classes: Sequence[str],
        size: tuple[int, int],
        workers: int | None = None,
        name: str = "folder",
        channels: int = 3,
        note: tuple[str, str] = ("", ""),
    ):
        self.files, self.y, self.classes, self.size = list(files), np.asarray(labels, np.int64), list(classes), size
        self.num_classes, self.name, self.channels, self.note = len(self.classes), name, channels, note
        self.workers = _default_workers() if workers is None else workers

    def about_classes(self) -> tuple[str, str]:
        return self.note

    @classmethod
    def scan(cls, folder: Path, classes: Sequence[str], shape: tuple[int, ...], workers: int | None = None):
        """Every image under ``folder/<class>/``; labels by position in ``classes``; read at ``shape`` (C, H, W) or
        (H, W) (RGB)."""
        channels, size = (shape[0], tuple(shape[1:])) if len(shape) == 3 else (3, tuple(shape))
        if channels not in (1, 3):
            raise TrtpruneError(
                f"the model takes {channels}-channel images; the image folder '{folder.parent}' gives 3 (RGB) or "
                "1 (grey)",
                fix="give an input shape of 3 or 1 channels (--input-shape 3xHxW), or your own loaders for other "
                "images (--data file.py:function)",
            )
        index = {c: i for i, c in enumerate(classes)}
        files, labels = [], []
        for d in sorted(p for p in folder.iterdir() if p.is_dir()):
            for f in sorted(d.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file():
                    files.append(f)
                    labels.append(index[d.name])
        if not files:
            raise TrtpruneError(
                f"image folder '{folder}' has no images",
                why=f"expected {folder}/<class>/<image> with one of {', '.join(IMAGE_SUFFIXES)}",
                fix="point --data at the folder that holds train/ and val/",
            )
        # in a fixed random order, not class by class: the first (or last) n images sample every class, as
        # CIFAR-10's own order does (importance scores, calibration and the proxy's held-out slice take them)
        order = np.random.default_rng(0).permutation(len(files))
        _say_resized(folder.parent, files[0], channels, size)
        note = _classes_note(folder.parent, classes)
        return cls(
            [files[i] for i in order], np.asarray(labels)[order], classes, size, workers, str(folder), channels, note
        )

    def __len__(self) -> int:
        return len(self.files)

    def take(self, start: int, stop: int | None = None) -> FolderImages:
        return self.select(range(len(self))[start:stop])

    def select(self, indices) -> FolderImages:
        indices = list(indices)
        return FolderImages(
            [self.files[i] for i in indices],
            self.y[indices],
            self.classes,
            self.size,
            self.workers,
            self.name,
            self.channels,
            self.note,
        )

    def batches(self, batch_size, mean, std, *, shuffle=False, augment=False, seed=0):
        gen = torch.Generator().manual_seed(seed)
        order = (torch.randperm(len(self), generator=gen) if shuffle else torch.arange(len(self))).tolist()
        keys = [[(i, augment, seed) for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]
        loader = torch.utils.data.DataLoader(
            _Decoded(self.files, self.size, self.channels),
            batch_sampler=keys,
            num_workers=self.workers,
            collate_fn=_collate,
            persistent_workers=False,
        )
        read, skipped = 0, []
        for indices, xb, bad in loader:
            for i, error in bad:
                _warn_unreadable(self.files[i], error)
            skipped += bad
            if xb is not None:
                read += len(indices)
                yield D.normalize(xb, mean, std), torch.from_numpy(self.y[indices])
        if skipped and not read:
            i, error = skipped[0]
            raise TrtpruneError(
                f"no image of '{self.name}' can be read: '{self.files[i]}': {error}",
                why=f"all {len(skipped)} files read are damaged or not images",
                fix="point --data at a folder of images (train/<class>/*.png, val/<class>/*.png)",
            )
        if len(skipped) > MAX_NAMED:
            log.warning("skipped %d unreadable images of '%s' in this pass", len(skipped), self.name)


class LoaderImages(Images):
    """The user's loader (any iterable of ``(x, y)`` batches), used as given: ``mean``/``std``/``shuffle``/
    ``augment``/``seed`` do not apply, its own transforms do."""

    def __init__(
        self,
        loader: Iterable,
        num_classes: int | None = None,
        start: int = 0,
        stop: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        _read: dict | None = None,
    ):
        self.loader, self.start, self.stop, self.input_shape = loader, start, stop, input_shape
        self._read = {"batches": False} if _read is None else _read  # shared with its parts: has it given a batch?
        dataset = getattr(loader, "dataset", None)
        classes = getattr(dataset, "classes", None)
        self.num_classes = num_classes or (len(classes) if classes is not None else None)
        self.name = type(loader).__name__

    def _total(self) -> int | None:
        """The number of images in the whole loader: its dataset's length, or the count of a pass already read."""
        dataset = getattr(self.loader, "dataset", None)
        try:
            return len(dataset) if dataset is not None else self._read.get("count")
        except TypeError:  # a dataset without a length (an IterableDataset)
            return self._read.get("count")

    def size_hint(self) -> int | None:
        n = self._total()
        return None if n is None else max(0, (n if self.stop is None else min(self.stop, n)) - self.start)

    def __len__(self) -> int:
        if self._total() is None:
            if isinstance(self.loader, Iterator):  # a generator or an iterator: read once, it cannot be counted first
                raise TrtpruneError(
                    f"the data is an iterable without a length (a {self.name}) that can be read only once",
                    why="trtprune needs the number of images here (the steps of an epoch, a slice of the data) and "
                    "reads the data more than once (a check of the first batch, every epoch); a generator can be "
                    "read only once, so it cannot be counted first",
                    fix="give a DataLoader, a list of (x, y) batches, or an object whose __iter__ starts over "
                    "(it is then counted by reading it once)",
                )
            self._read["count"] = sum(len(xb) for xb, _ in LoaderImages(self.loader).batches(1, 0, 1))
        return self.size_hint()

    def select(self, indices) -> LoaderImages:  # a loader reads in its own order: its first images instead
        return self.take(0, len(list(indices)))

    def take(self, start: int, stop: int | None = None) -> LoaderImages:
        a = self.start + start
        b = None if stop is None else self.start + stop
        if self.stop is not None:
            b = self.stop if b is None else min(b, self.stop)
        return LoaderImages(self.loader, self.num_classes, a, b, self.input_shape, self._read)

    def batches(self, batch_size, mean, std, *, shuffle=False, augment=False, seed=0):
        seen, read_before = 0, self._read["batches"]
        for batch in self.loader:
            self._read["batches"] = True
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise TrtpruneError(
                    f"the loader yields {type(batch).__name__}, not (inputs, targets) batches",
                    fix="make it yield (x, y): x float (N, C, H, W) normalised as the model expects, y the targets "
                    "(int labels for classification; any tensors, lists or dicts for your own task's loss)",
                )
            xb, yb = torch.as_tensor(batch[0]), _targets(batch[1])
            if seen == 0:
                _check_loader_inputs(xb, self.name)
                self._check_shape(xb)
            n = len(xb)
            lo, hi = max(self.start - seen, 0), n if self.stop is None else min(n, self.stop - seen)
            seen += n
            if hi > lo:
                part = _rows(yb, lo, hi, n)
                if part is not None:
                    yield xb[lo:hi].float(), part
                elif lo == 0:  # targets that cannot be sliced: the whole batch
                    yield xb.float(), yb
            if self.stop is not None and seen >= self.stop:
                return
        if self.start == 0 and self.stop is None and seen:
            self._read.setdefault("count", seen)  # a whole pass: the loader's length from now on
        if seen == 0 and read_before:
            raise TrtpruneError(
                f"the loader {self.name} gave no batches when read again",
                why="trtprune reads the training data several times (a check of the first batch, timing, every "
                "epoch): a loader that can be read only once (a generator, an iterator) is empty after its first pass",
                fix="give a DataLoader, a list of batches, or any iterable whose iter() starts over",
            )

    def _check_shape(self, xb: torch.Tensor) -> None:
        """Images (N, C, H, W) of another shape than the model's: the model would run at a size it is not measured,
        pruned and exported at (or fail)."""
        if self.input_shape is None or xb.dim() != 4 or tuple(xb.shape[1:]) == tuple(self.input_shape):
            return
        found, want = "x".join(map(str, xb.shape[1:])), "x".join(map(str, self.input_shape))
        raise TrtpruneError(
            f"the loader's images are {found} (C x H x W), but the model takes {want}",
            why="trtprune measures, prunes and exports the model at its input shape: it must see images of that shape",
            fix=f"give --input-shape {found} if the model takes them (API: input_shape=), or make the loader yield "
            f"{want} images",
        )


def _check_loader_inputs(xb: torch.Tensor, name: str) -> None:
    """A loader's first batch of inputs: images channels last cannot go to the model (an error); integer pixels
    reach it unnormalised (a warning: right only for a model that normalises its input itself)."""
    shape = list(xb.shape)
    if xb.dim() == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3):
        raise TrtpruneError(
            f"the loader yields inputs of shape {shape}: images channels last (N, H, W, C)",
            why="a loader's batches go to the model as they are, and the model takes images channels first "
            "(N, C, H, W)",
            fix="make it yield x.permute(0, 3, 1, 2), float and normalised as the model expects (torchvision's "
            "ToTensor() and Normalize(mean, std) do both)",
        )
    if not xb.is_floating_point() and ("loader", name) not in _warned:
        _warned.add(("loader", name))
        log.warning(
            "the loader %s yields %s inputs: they reach the model as floats of the same values (0..255 for pixels), "
            "not normalised (trtprune uses a loader's batches as they are); right only if the model normalises its "
            "input itself, else make the loader yield float tensors normalised as the model expects",
            name,
            str(xb.dtype).removeprefix("torch."),
        )


_warned: set[tuple[str, str]] = set()


def _targets(y):
    """A batch's targets: integer labels as int64 tensors, other tensors and arrays as tensors, structures
    (lists, dicts: a detector's boxes) as they are."""
    if (
        isinstance(y, (torch.Tensor, np.ndarray))
        or isinstance(y, (list, tuple))
        and all(isinstance(v, (int, np.integer)) for v in y)
    ):
        t = torch.as_tensor(y)
        return t.long() if not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool else t
    return y


def _rows(y, lo: int, hi: int, n: int):
    """Rows ``lo:hi`` of a batch's targets: sliced where every tensor in them has one row per input, whole when all
    rows are asked for; None when the targets cannot be sliced (a detector's flat box list): the caller then skips
    a batch begun before ``start`` and takes whole one that ends after ``stop``."""
    if lo == 0 and hi == n:
        return y
    leaves = [v for v in pytree.tree_leaves(y)]
    if leaves and all(isinstance(v, torch.Tensor) and v.dim() and len(v) == n for v in leaves):
        return pytree.tree_map(lambda v: v[lo:hi], y)
    return None


def as_images(data, num_classes: int | None = None) -> Images:
    """``data`` as :class:`Images`: Images as they are, ``(x, y)`` uint8 NHWC arrays (numpy or torch), or a loader of
    batches."""
    if isinstance(data, Images):
        return data
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], (np.ndarray, torch.Tensor)):
        x, y = (v.numpy(force=True) if isinstance(v, torch.Tensor) else v for v in data)
        return ArrayImages(_pixels(x), _labels(y, len(x)), num_classes)
    if isinstance(data, list) and len(data) == 2 and all(isinstance(v, (np.ndarray, torch.Tensor)) for v in data):
        raise TrtpruneError(
            f"the data is a list of two arrays (shapes {tuple(data[0].shape)} and {tuple(data[1].shape)}), read as a "
            "list of batches",
            why="images and labels are given as a tuple (x, y) of arrays; a list is read as a loader: a list of "
            "(x, y) batches",
            fix="give a tuple (x, y) of arrays: (X, Y), not [X, Y]",
        )
    if isinstance(data, Iterable):
        return LoaderImages(data, num_classes)
    raise TrtpruneError(
        f"cannot read images from a {type(data).__name__}",
        fix="give a DataLoader of (x, y) batches, or (x, y) uint8 NHWC numpy arrays",
    )


ARRAYS_WHY = "(x, y) arrays are images as they are stored: uint8 pixels (N, H, W, C), and one integer label per image"


def _pixels(x: np.ndarray) -> np.ndarray:
    """The API's ``x`` checked at the door: pixels 0..255 (uint8, or integers or floats in that range) of shape
    (N, H, W, C); anything else is an error saying what it looks like."""
    shape = tuple(x.shape)
    if x.ndim != 4:
        raise TrtpruneError(
            f"x of shape {shape} is not a batch of images (N, H, W, C)",
            why=ARRAYS_WHY,
            fix="give x of shape (N, H, W, C), e.g. CIFAR-10's (50000, 32, 32, 3)",
        )
    if shape[3] not in (1, 3, 4) and shape[1] in (1, 3, 4):
        raise TrtpruneError(
            f"x of shape {shape} holds images channels first (N, C, H, W)",
            why=ARRAYS_WHY,
            fix="pass x.transpose(0, 2, 3, 1); or, for images already normalised, a DataLoader of (x, y) batches",
        )
    if x.dtype == np.uint8:
        return x
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise TrtpruneError(f"x holds {x.dtype} values, not pixels", why=ARRAYS_WHY, fix="give uint8 pixels")
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if lo < 0 or hi > 255 or not math.isfinite(lo + hi):
        raise TrtpruneError(
            f"x holds {x.dtype} values from {lo:g} to {hi:g}, not pixels 0..255",
            why=ARRAYS_WHY + "; they are normalised here with mean and std (images already normalised would be "
            "normalised twice)",
            fix="give the uint8 pixels; or, for images already normalised, a DataLoader of (x, y) batches",
        )
    if np.issubdtype(x.dtype, np.floating) and 0 < hi <= 1:
        raise TrtpruneError(
            f"x holds {x.dtype} values from {lo:g} to {hi:g}: pixels scaled to 0..1",
            why=ARRAYS_WHY + "; they are divided by 255 here, so 0..1 values would be read as black images",
            fix="pass (x * 255).round().astype(np.uint8)",
        )
    return x


def _labels(y, n: int) -> np.ndarray:
    """The API's ``y``: one integer label (0 or more) per image of ``x``."""
    y = np.asarray(y)
    if y.ndim == 2 and len(y) == n and y.shape[1] > 1:
        raise TrtpruneError(
            f"y of shape {tuple(y.shape)} holds a row per image (one-hot or scores), not one label per image",
            why=ARRAYS_WHY,
            fix="pass y.argmax(1)",
        )
    if y.ndim != 1 or len(y) != n:
        raise TrtpruneError(
            f"y of shape {tuple(y.shape)} does not hold one label per image of x ({n})",
            why=ARRAYS_WHY,
            fix="give y of shape (N,) with the labels of x's images, in order",
        )
    integral = np.issubdtype(y.dtype, np.integer) or (
        np.issubdtype(y.dtype, np.floating) and bool(np.all(np.isfinite(y)) and np.all(y == np.round(y)))
    )
    if not integral or (len(y) and y.min() < 0):
        raise TrtpruneError(
            f"y holds {y.dtype} values that are not class labels 0, 1, 2 ...",
            why=ARRAYS_WHY,
            fix="give each image's class index (0 ... classes - 1)",
        )
    return y


# -- finding a dataset -------------------------------------------------------------------------------
SPLIT_FOLDERS = {"train": ("train",), "test": ("val", "test")}


def image_folder(root: Path) -> tuple[Path, Path] | None:
    """``(train, val)`` folders of an image-folder dataset under ``root``, or None if it is not one."""
    train = root / "train"
    val = next((root / s for s in SPLIT_FOLDERS["test"] if (root / s).is_dir()), None)
    if train.is_dir() and val is not None and any(p.is_dir() for p in train.iterdir()):
        return train, val
    return None


def folder_classes(train: Path, val: Path) -> list[str]:
    """One label map for both splits (even where one lacks a class): CIFAR-10's class names keep their
    standard labels; other names are labelled in sorted order."""
    names = sorted({d.name for s in (train, val) for d in s.iterdir() if d.is_dir()})
    if set(names) <= set(D.CLASSES):
        return list(D.CLASSES)
    return names


def user_loaders(spec: str) -> tuple[Iterable, Iterable]:
    """``file.py:function`` returning ``(train_loader, val_loader)``."""
    file, _, fn = spec.rpartition(":")
    make = user_function(file, fn, "user_data", "loaders file", "the function that returns the loaders")
    argv, sys.argv = sys.argv, [file]
    try:
        loaders = make()
    except TrtpruneError:
        raise
    except (Exception, SystemExit) as e:
        raise TrtpruneError(
            f"the data loaders of '{spec}' failed: {type(e).__name__}: {e}",
            fix=f"run {fn}() from '{file}' on its own and fix what it raises",
        ) from e
    finally:
        sys.argv = argv
    if not (isinstance(loaders, (tuple, list)) and len(loaders) == 2):
        raise TrtpruneError(
            f"{spec} returned {type(loaders).__name__}, not (train_loader, val_loader)",
            fix="return a pair of loaders of (x, y) batches",
        )
    return loaders[0], loaders[1]


def is_loaders_spec(data: str | os.PathLike | None) -> bool:
    return isinstance(data, str) and ":" in data and data.rpartition(":")[0].endswith(".py")


def open_images(
    data: str | os.PathLike | None,
    split: str,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    limit: int = 0,
    *,
    check: bool = True,
) -> Images:
    """The ``split`` ("train" or "test") of the dataset named by ``data``: a ``file.py:loaders`` function, an
    image folder (``train/``, ``val/`` or ``test/``), or CIFAR-10 in any of its forms (see datasets); None
    means TRTPRUNE_DATA or the user cache. Image-folder images are read at ``input_shape``'s H x W. Data already
    opened is taken as it is: :class:`Images`, or a ``(train, val)`` pair of loaders (a task's). Arrays of another
    shape are an error (:func:`check_arrays`) unless ``check`` is False (the caller checks them: an ONNX file's
    evaluation names the file)."""
    if split not in D.SPLITS:
        raise TrtpruneError(f"unknown split '{split}'", fix="use 'train' or 'test'")
    if isinstance(data, Images):  # already opened (the Python API's data, a task's loader)
        return data.limit(limit)
    if isinstance(data, (tuple, list)) and len(data) == 2 and not isinstance(data[0], np.ndarray):
        images = as_images(data[0] if split == "train" else data[1])  # (train, val) loaders
        if isinstance(images, LoaderImages):
            images.input_shape = tuple(input_shape)
        return images.limit(limit)
    if is_loaders_spec(data):
        train, val = user_loaders(str(data))
        loader = train if split == "train" else val
        if loader is None:
            raise TrtpruneError(
                f"the loaders function '{data}' returned None for {'train' if split == 'train' else 'val'}",
                why=f"this command reads the {'training' if split == 'train' else 'validation'} split: the "
                f"{'first' if split == 'train' else 'second'} of the (train_loader, val_loader) pair it returns",
                fix="return a loader of (x, y) batches in its place (the other one's loader, to try a command out)",
            )
        return LoaderImages(loader, input_shape=tuple(input_shape)).limit(limit)
    root, may_download = fetch.data_root(data)
    folders = image_folder(root)
    if folders is not None:
        classes = folder_classes(*folders)
        folder = folders[0] if split == "train" else folders[1]
        return FolderImages.scan(folder, classes, tuple(input_shape)).limit(limit)
    _check_layout(root, split)
    source = D.find_cifar10(root, split)
    x, y = D.load_cifar10(D.ensure_cifar10(root, may_download), split)
    name = f"CIFAR-10 {split}"
    if check:
        check_arrays(x, input_shape, f"the {name} images in '{source or root}'")
    return ArrayImages(x, y, len(D.CLASSES), name=name).limit(limit)


def check_images(data, split: str, input_shape: tuple[int, int, int]) -> None:
    """That the dataset named by ``data`` opens and fits ``input_shape``, before a long command starts: the checks
    of :func:`open_images` (a user's loaders are only checked when they are read; a dataset still to be downloaded,
    when it is)."""
    if data is not None and not (isinstance(data, (str, os.PathLike)) and not is_loaders_spec(data)):
        return
    root, may_download = fetch.data_root(data)
    if may_download and image_folder(root) is None and D.find_cifar10(root, split) is None:
        return
    open_images(data, split, input_shape, limit=1)


def check_arrays(x: np.ndarray, input_shape: tuple[int, int, int], source: str) -> None:
    """Arrays of images (N, H, W, C) are read as they are: not resized, nor converted to other channels. Images of
    another shape than the model takes are an error: the model would be evaluated and trained at a size (or on
    channels) other than the one it is measured, pruned and exported at."""
    c, h, w = input_shape
    ih, iw, ic = x.shape[1:]
    if (ic, ih, iw) == (c, h, w):
        return
    raise TrtpruneError(
        f"{source} are {ic}x{ih}x{iw} (C x H x W), but the model takes {c}x{h}x{w}",
        why="trtprune reads CIFAR-10's arrays as they are (it does not resize them or change their channels), and "
        "measures, prunes and exports the model at its input shape",
        fix=f"give --input-shape {ic}x{ih}x{iw} if the model takes these images (an ONNX file: export it at that "
        f"shape); for {c}x{h}x{w} give an image "
        "folder (--data with train/<class>/ and val/<class>/, read at the input shape) or your own loaders "
        "(--data file.py:function)",
    )


def _check_layout(root: Path, split: str) -> None:
    """A folder that looks like an image folder but is not a whole one (no val/, no class folders): say what the
    layout is and what was found, rather than that CIFAR-10 is missing."""
    if not root.is_dir() or D.find_cifar10(root, split) is not None:
        return
    train, tests = root / "train", [root / s for s in SPLIT_FOLDERS["test"]]
    if not (train.is_dir() or any(t.is_dir() for t in tests)):
        return
    found = []
    for d in (train, *tests):
        if d.is_dir():
            classes = [p for p in d.iterdir() if p.is_dir()]
            loose = [p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            found.append(
                f"{d.name}/ with {len(classes)} class folder(s)"
                + (f" and {len(loose)} loose image(s)" if loose else "")
            )
    missing = [] if train.is_dir() else ["train/"]
    missing += [] if any(t.is_dir() for t in tests) else ["val/"]
    raise TrtpruneError(
        f"'{root}' is not a whole image folder: it has {', '.join(found)}"
        + (f"; no {' or '.join(missing)}" if missing else ""),
        why="an image-folder dataset holds train/<class>/<image> and val/<class>/<image> (or test/<class>/): one "
        "folder per class in each split, the images inside them",
        fix="move the images into one folder per class under train/ and under val/ (a few of each class in val/)",
    )
