"""Task files as users write them (``--task tests/task_files.py:detector_task``), over small generated data.

* ``detector_task``: for :class:`tests.task_models.TinyDetector` - each cell of its stride-8 grid holds one of
  three classes decided by the image (which of two colour channels is bright there); the loss is the cross-entropy
  of the class channels of the first output, the metric the share of cells classified right (in percent). A user's
  own loss and metric, over a model returning a tuple.
* ``segmentation_task``: the built-in segmentation task (per-pixel cross-entropy, mIoU) with the user's loaders,
  for :class:`tests.task_models.TinyUNet` (4 classes, one per quadrant colour).
"""

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

CLASS_CHANNELS = slice(16, 19)  # TinyDetector(classes=3, reg=4): 16 box channels, then 3 class channels


def cells(n: int, seed: int, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    y = (x[:, 0, ::8, ::8] > 0).long() + (x[:, 1, ::8, ::8] > 0).long()
    return x, y


def masks(n: int, seed: int, size: int = 32):
    """Images whose pixels are bright in one of 4 channel patterns; the mask is that pattern's class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n, size // 8, size // 8), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    for c in range(3):
        x[:, c] += (y == c + 1).float()
    return x, y


class DetectorTask:
    metric_name = "cell accuracy (%)"

    def __init__(self):
        x, y = cells(256, 0)
        self.train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True)
        self.val = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=32)

    def loaders(self):
        return self.train, self.val

    def loss(self, outputs, targets):
        return F.cross_entropy(outputs[0][:, CLASS_CHANNELS], targets)

    def metric(self, model):
        right = total = 0
        for x, y in self.val:
            right += int((model(x)[0][:, CLASS_CHANNELS].argmax(1) == y).sum())
            total += y.numel()
        return 100.0 * right / total


detector_task = DetectorTask()


class SegmentationTask:
    base = "segmentation"

    def __init__(self):
        x, y = masks(160, 0)
        self.pair = (
            DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32),
            DataLoader(TensorDataset(x[128:], y[128:]), batch_size=32),
        )

    @property
    def loaders(self):
        return self.pair

    loss = metric = None  # the built-in segmentation task's: cross-entropy per pixel, mIoU on the val loader


segmentation_task = SegmentationTask()
