"""Small networks shaped like the detectors and segmenters people deploy, for tests that must run in seconds.

* :class:`TinyDetector`: a YOLO-style detector - a C2f-like block (one conv's output split in two halves, one half
  through a bottleneck, all three concatenated), an SPPF-like block (three max-pools concatenated), an upsample +
  concat neck, and a head per scale returning several tensors (a tuple, a list, or a dict, by ``returns``).
* :class:`TinyUNet`: a two-level U-Net returning per-pixel class scores (N, classes, H, W).

Loaded as user factories (``tests/task_models.py:detector``), so the tests that use them drive that path too.
"""

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve()
DETECTOR, DETECTOR_DICT, UNET = (f"{HERE}:{name}" for name in ("detector", "detector_dict", "unet"))


def cbr(cin: int, cout: int, k: int = 3, s: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Split(nn.Module):
    """C2f-like: ``cv1``'s channels split in two, the second half through a residual bottleneck, all concatenated."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.half = cout // 2
        self.cv1 = cbr(cin, cout, 1)
        self.m = nn.Sequential(cbr(self.half, self.half), cbr(self.half, self.half))
        self.cv2 = cbr(3 * self.half, cout, 1)

    def forward(self, x):
        a, b = self.cv1(x).chunk(2, 1)
        return self.cv2(torch.cat([a, b, b + self.m(b)], 1))


class Pools(nn.Module):
    """SPPF-like: three chained max-pools concatenated with their input."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.cv1 = cbr(cin, cin // 2, 1)
        self.cv2 = cbr(cin * 2, cout, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)

    def forward(self, x):
        y = [self.cv1(x)]
        y += [self.pool(y[-1]) for _ in range(3)]
        return self.cv2(torch.cat(y, 1))


class TinyDetector(nn.Module):
    """Two scales (strides 8 and 16), ``4 * reg`` box channels and ``classes`` class channels per cell."""

    def __init__(self, classes: int = 3, reg: int = 4, returns: str = "tuple"):
        super().__init__()
        self.classes, self.reg, self.returns = classes, reg, returns
        self.stem = nn.Sequential(cbr(3, 16, 3, 2), cbr(16, 32, 3, 2))
        self.p3 = nn.Sequential(cbr(32, 32, 3, 2), Split(32, 32))
        self.p4 = nn.Sequential(cbr(32, 64, 3, 2), Split(64, 64), Pools(64, 64))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.neck = Split(96, 32)
        self.box = nn.ModuleList(nn.Sequential(cbr(c, 32), nn.Conv2d(32, 4 * reg, 1)) for c in (32, 64))
        self.cls = nn.ModuleList(nn.Sequential(cbr(c, 32), nn.Conv2d(32, classes, 1)) for c in (32, 64))

    def forward(self, x):
        p3 = self.p3(self.stem(x))
        p4 = self.p4(p3)
        p3 = self.neck(torch.cat([self.up(p4), p3], 1))
        heads = [torch.cat([self.box[i](f), self.cls[i](f)], 1) for i, f in enumerate((p3, p4))]
        if self.returns == "dict":
            return {"p3": heads[0], "p4": heads[1]}
        return tuple(heads) if self.returns == "tuple" else heads


class TinyUNet(nn.Module):
    def __init__(self, classes: int = 4, width: int = 16):
        super().__init__()
        w = width
        self.enc1, self.enc2 = cbr(3, w), nn.Sequential(nn.MaxPool2d(2), cbr(w, 2 * w), cbr(2 * w, 2 * w))
        self.bottom = nn.Sequential(nn.MaxPool2d(2), cbr(2 * w, 4 * w))
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2), cbr(4 * w, 2 * w)
        self.up1, self.dec1 = nn.Upsample(scale_factor=2, mode="bilinear"), cbr(3 * w, w)
        self.head = nn.Conv2d(w, classes, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        d2 = self.dec2(torch.cat([self.up2(self.bottom(e2)), e2], 1))
        return self.head(self.dec1(torch.cat([self.up1(d2), e1], 1)))


def detector(classes: int = 3) -> TinyDetector:
    return TinyDetector(classes)


def detector_dict(classes: int = 3) -> TinyDetector:
    return TinyDetector(classes, returns="dict")


def unet(classes: int = 4) -> TinyUNet:
    return TinyUNet(classes)
