"""CIFAR-10 from any of the forms users have it in, and batches for training and evaluation.

Looked for under a data root (``--data`` or ``TRTPRUNE_DATA``), in this order, directly or in a
``cifar10/`` subfolder:

* ``cifar10_train.npz`` / ``cifar10_test.npz``: ``x`` uint8 (N, 32, 32, 3) RGB, ``y`` uint8 (N,) 0..9;
* ``cifar-10-batches-py/``: the official python batches (``data_batch_1..5``, ``test_batch``);
* ``cifar-10-python.tar.gz``: the official tarball, read without extracting;
* ``train/<class>/*.png`` and ``test/<class>/*.png``: an image folder, one folder per class
  (CIFAR class names map to their standard labels; other names are labelled in sorted order).

The official batches are pickles: they are read with an unpickler that only rebuilds numpy arrays,
so a tampered file cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trtprune.errors import TrtpruneError
from trtprune.sources import fetch

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SPLITS = ("train", "test")
_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
# the image files every reader takes (data folders, calibration folders and lists): one list
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how Python 3 stores bytes in protocol-2 pickles
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")
        return super().find_class(module, name)


def _unpickle_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.asarray(d[b"labels"])
    except Exception as e:
        raise TrtpruneError(
            f"'{source}' is not a valid CIFAR-10 python batch: {e}",
            fix="re-download the official cifar-10-python.tar.gz",
        ) from e
    return np.ascontiguousarray(x), y


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            return f["x"], f["y"]
    except Exception as e:
        raise TrtpruneError(
            f"cannot read '{path}': {type(e).__name__}: {e}",
            why="expected an .npz with arrays 'x' (N,32,32,3) uint8 and 'y' (N,)",
        ) from e


def _read_batches_dir(folder: Path, split: str):
    xs, ys = [], []
    for name in _BATCHES[split]:
        p = folder / name
        if not p.is_file():
            raise TrtpruneError(f"'{folder}' lacks '{name}'", fix="extract the complete official tarball there")
        x, y = _unpickle_batch(p.read_bytes(), str(p))
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def _read_tarball(path: Path, split: str):
    xs, ys = [], []
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for name in _BATCHES[split]:
                if name not in members:
                    raise TrtpruneError(f"'{path}' has no '{name}'", fix="use the official cifar-10-python.tar.gz")
                x, y = _unpickle_batch(tar.extractfile(members[name]).read(), f"{path}:{name}")
                xs.append(x)
                ys.append(y)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise TrtpruneError(
            f"cannot read tarball '{path}': {e}",
            why="it is truncated or not a .tar.gz",
            fix="delete it and download it again",
        ) from e
    return np.concatenate(xs), np.concatenate(ys)


def _read_image_folder(folder: Path):
    from PIL import Image  # installed with matplotlib

    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir())
    # one label map for both splits, even where a split lacks a class
    siblings = [folder.parent / s for s in SPLITS if (folder.parent / s).is_dir()]
    names = sorted({d.name for s in siblings for d in s.iterdir() if d.is_dir()} | {d.name for d in class_dirs})
    label_of = (
        {n: CLASSES.index(n) for n in names} if set(names) <= set(CLASSES) else {n: i for i, n in enumerate(names)}
    )
    xs, ys = [], []
    for d in class_dirs:
        for f in sorted(d.iterdir()):
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("RGB")))
            ys.append(label_of[d.name])
    if not xs:
        raise TrtpruneError(
            f"image folder '{folder}' has no images",
            why=f"expected <split>/<class>/<image> with one of {', '.join(IMAGE_SUFFIXES)}",
        )
    shapes = {x.shape for x in xs}
    if len(shapes) != 1:
        raise TrtpruneError(
            f"images in '{folder}' have different sizes: {sorted(shapes)[:3]}",
            fix="resize them all to the model's input size (32x32 for CIFAR models)",
        )
    return np.stack(xs), np.asarray(ys)


def _candidates(root: Path, split: str):
    for base in (root, root / "cifar10"):
        yield base / f"cifar10_{split}.npz", _read_npz
        yield base / "cifar-10-batches-py", lambda p: _read_batches_dir(p, split)
        yield base / "cifar-10-python.tar.gz", lambda p: _read_tarball(p, split)
        yield base / split, _read_image_folder


def find_cifar10(root: str | Path, split: str) -> Path | None:
    """The first CIFAR-10 source for ``split`` under ``root``, or None."""
    return next((p for p, _ in _candidates(Path(root), split) if p.exists()), None)


def load_cifar10(root: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)``: x uint8 (N, H, W, 3) RGB, y int64 (N,) in 0..9. Validated."""
    if split not in SPLITS:
        raise TrtpruneError(f"unknown split '{split}'", fix="use 'train' or 'test'")
    root = Path(root)
    if not root.is_dir():
        raise TrtpruneError(
            f"data folder '{root}' does not exist", fix="point --data or TRTPRUNE_DATA at the folder holding CIFAR-10"
        )
    for path, reader in _candidates(root, split):
        if path.exists():
            x, y = reader(path)
            return validate(x, y, str(path))
    looked = ", ".join(str(p) for p, _ in _candidates(root, split))
    raise TrtpruneError(
        f"no CIFAR-10 {split} set under '{root}'",
        why=f"looked for {looked}",
        fix="put cifar10_{train,test}.npz, the official tarball, or an image folder there",
    )


def validate(x: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise TrtpruneError(
            f"images in '{source}' have shape {x.shape} and dtype {x.dtype}",
            why="expected uint8 (N, H, W, 3) RGB pixels 0..255",
            fix=_pixels_fix(x),
        )
    if y.ndim != 1 or len(y) != len(x):
        raise TrtpruneError(
            f"labels in '{source}' have shape {y.shape} for {len(x)} images",
            why="expected one label per image",
            fix="store y.ravel()"
            if y.ndim == 2 and y.shape[1:] == (1,) and len(y) == len(x)
            else "store y.argmax(1) (the class index of each row)"
            if y.ndim == 2 and len(y) == len(x)
            else "store one class index per image of x, in order",
        )
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and (y.min() < 0 or y.max() >= len(CLASSES))):
        low, high = (f"{y.min():g}", f"{y.max():g}") if len(y) else ("-", "-")
        raise TrtpruneError(
            f"labels in '{source}' are not integers in 0..9",
            why=f"found dtype {y.dtype}, range {low}..{high}; CIFAR-10's files hold its 10 classes, labelled 0..9 "
            "(integers)",
            fix=_labels_fix(y),
        )
    return x, y.astype(np.int64)


def _labels_fix(y: np.ndarray) -> str:
    """How to store labels (N,) that are not integers 0..9 as such."""
    whole = np.issubdtype(y.dtype, np.integer) or bool(
        np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y))
    )
    if not whole:
        return "store each image's class index 0..9, as integers (np.uint8)"
    if len(y) and y.min() < 0:
        return "remove the images labelled below 0 (unlabelled?), or label them 0..9"
    if len(y) and y.max() >= len(CLASSES):
        return (
            "for a dataset of other classes give an image folder (train/<class>/*.png, val/<class>/*.png) or your "
            "own loaders (--data file.py:function)"
        )
    return "store the labels as integers (np.uint8): y.astype(np.uint8)"


def _pixels_fix(x: np.ndarray) -> str:
    """How to store images that are not uint8 (N, H, W, 3) as such."""
    if x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3):
        return "store x.transpose(0, 2, 3, 1) (channels last: N, H, W, C)"
    if x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 1):
        return (
            "store grey images as RGB: np.repeat(x.reshape(*x.shape[:3], 1), 3, axis=3); or, for a 1-channel model, "
            "give an image folder of grey PNGs (--input-shape 1xHxW)"
        )
    if x.ndim != 4 or x.shape[-1] != 3:
        return "store x as uint8 (N, H, W, 3): N RGB images of H x W pixels"
    high = float(x.max()) if x.size else 0.0
    if np.issubdtype(x.dtype, np.floating):
        if high <= 1:
            return "store (x * 255).round().astype(np.uint8) (pixels 0..1 scaled to 0..255)"
        return "store x.round().clip(0, 255).astype(np.uint8)"
    if np.issubdtype(x.dtype, np.integer) and high > 255:
        return "store (x >> 8).astype(np.uint8) (16-bit pixels scaled to 8 bits)"
    return "store x.astype(np.uint8)"


def synthetic_cifar10(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random images whose class is visible in the mean colour: learnable, for tests only."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    base = (np.stack([y * 25, 255 - y * 25, (y % 3) * 100], 1)[:, None, None, :]).astype(np.int16)
    x = np.clip(base + rng.integers(-40, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
    return x, y.astype(np.int64)


# -- batches ----------------------------------------------------------------------------------------
def to_tensor(x: np.ndarray) -> torch.Tensor:
    """uint8 NHWC numpy -> uint8 NCHW tensor (kept in uint8 until a batch is drawn)."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def normalize(xb: torch.Tensor, mean, std) -> torch.Tensor:
    """``(pixels / 255 - mean) / std`` per channel of a uint8 (or 0..255 float) NCHW batch."""
    channels = xb.shape[1]
    if len(mean) not in (1, channels) or len(std) not in (1, channels):
        raise TrtpruneError(
            f"normalisation mean {tuple(mean)} / std {tuple(std)} does not fit {channels}-channel images",
            why="images are normalised channel by channel: one mean and one std per channel (or one for all)",
            fix=f"give {channels} values to mean and std (--mean and --std), or images of {len(mean)} channels",
        )
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (xb.float() / 255.0 - m) / s


def augment(xb: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, per image (uint8 NCHW)."""
    n, c, h, w = xb.shape
    padded = F.pad(xb, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


def batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    mean,
    std,
    *,
    shuffle: bool = False,
    train_augment: bool = False,
    seed: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Normalised float batches from uint8 NCHW ``x``; shuffled and augmented when asked."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=gen) if shuffle else torch.arange(len(x))
    for i in range(0, len(x), batch_size):
        idx = order[i : i + batch_size]
        xb = x[idx]
        if train_augment:
            xb = augment(xb, gen)
        yield normalize(xb, mean, std), y[idx]


def ensure_cifar10(root: Path, may_download: bool, *, resources=None) -> Path:
    """A root that holds CIFAR-10 (train and test), downloading the official tarball if allowed."""
    if (find_cifar10(root, "train") and find_cifar10(root, "test")) or not may_download:
        return root  # if absent, load_cifar10 names every place it looked
    fetch.ensure_resource("cifar10", root, may_download, resources=resources)
    return root


def load_split(data: str | None, split: str, limit: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` under ``data`` (None: TRTPRUNE_DATA or the cache), its first ``limit`` images."""
    root, may_download = fetch.data_root(data)
    x, y = load_cifar10(ensure_cifar10(root, may_download), split)
    return (x[:limit], y[:limit]) if limit else (x, y)
