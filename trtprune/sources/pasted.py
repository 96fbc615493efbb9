"""A detection (and segmentation) set made from a classification set: objects pasted onto canvases.

Real photos with real classes, and boxes and masks known exactly: each canvas is one image of the set enlarged as
the background (with its colours shifted, so that it is no object of its class), and 1-4 other images pasted at
random scales and positions (at most 20 % of a pasted image hidden by a later one). Everything follows from
``seed`` and the image's index, so the set is the same on every machine and needs no storage: images are made
when read. Made from CIFAR-10's training images for training and its test images for validation, the two share no
photo.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

OBJECTS = (1, 4)  # pasted objects per canvas, inclusive
SCALE = (0.2, 0.5)  # a pasted object's side, as a fraction of the canvas side
MAX_HIDDEN = 0.2  # the most of an earlier object a later one may cover


def _resize(img: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(img[None], size=(side, side), mode="bilinear", align_corners=False)[0]


class PastedObjects(Dataset):
    """``n`` canvases of ``size`` x ``size`` from ``x`` (uint8 NHWC photos) with labels ``y``: item ``i`` is
    ``(image float32 CHW in 0..1, {"boxes": (k, 4) xyxy pixels, "labels": (k,), "mask": (size, size) class per
    pixel, 255 for the background})``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n: int, size: int = 320, seed: int = 0):
        self.x, self.y, self.n, self.size, self.seed = x, np.asarray(y, np.int64), n, size, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        s = self.size
        photo = lambda j: torch.from_numpy(self.x[j]).permute(2, 0, 1).float() / 255  # noqa: E731
        canvas = _resize(photo(int(rng.integers(len(self.x)))), s)[torch.from_numpy(rng.permutation(3))]
        mask = torch.full((s, s), 255, dtype=torch.long)
        boxes: list[list[float]] = []
        labels: list[int] = []
        for _ in range(int(rng.integers(OBJECTS[0], OBJECTS[1] + 1))):
            for _try in range(10):
                side = int(s * rng.uniform(*SCALE))
                x0, y0 = int(rng.integers(0, s - side + 1)), int(rng.integers(0, s - side + 1))
                if all(_hidden(b, (x0, y0, x0 + side, y0 + side)) <= MAX_HIDDEN for b in boxes):
                    break
            else:
                continue
            j = int(rng.integers(len(self.x)))
            canvas[:, y0 : y0 + side, x0 : x0 + side] = _resize(photo(j), side)
            mask[y0 : y0 + side, x0 : x0 + side] = int(self.y[j])
            boxes.append([x0, y0, x0 + side, y0 + side])
            labels.append(int(self.y[j]))
        target = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.long),
            "mask": mask,
        }
        return canvas.clamp(0, 1), target


def _hidden(earlier, later) -> float:
    """The fraction of box ``earlier`` that box ``later`` covers."""
    w = max(0, min(earlier[2], later[2]) - max(earlier[0], later[0]))
    h = max(0, min(earlier[3], later[3]) - max(earlier[1], later[1]))
    return w * h / max((earlier[2] - earlier[0]) * (earlier[3] - earlier[1]), 1)
