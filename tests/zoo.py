"""A zoo of small untrained networks that users bring: plain torch.nn, 3x32x32 inputs, 10 classes.

Each factory is loadable as a user factory (``tests/zoo.py:concat_net``); each network is tiny (a few
thousand to ~100k parameters) so that its ONNX exports take a second or two. Together they cover the
structures trtprune must handle beyond the built-in CIFAR models: concatenation (DenseNet), grouped
convolutions with squeeze-excitation and projection shortcuts (ResNeXt), depthwise-separable convs
(MobileNet-V1), a module called twice, SiLU/Hardswish/GELU activations and an MLP head.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve()


def _cbr(cin: int, cout: int, stride: int = 1, groups: int = 1, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


class _DenseBlock(nn.Module):
    """Every layer's output concatenated to its input (DenseNet-BC without the bottleneck)."""

    def __init__(self, cin: int, growth: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(_cbr(cin + i * growth, growth) for i in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = torch.cat([x, layer(x)], 1)
        return x


class ConcatNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.block1 = _DenseBlock(16, 12, 2)  # 16 -> 40
        self.trans = nn.Sequential(nn.Conv2d(40, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(), nn.AvgPool2d(2))
        self.block2 = _DenseBlock(24, 12, 2)  # 24 -> 48
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.block2(self.trans(self.block1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class _SE(nn.Module):
    """Squeeze-excitation: a channel gate from the pooled features, by Linear or by 1x1 conv layers."""

    def __init__(self, channels: int, hidden: int, conv: bool):
        super().__init__()
        self.conv = conv
        if conv:
            self.reduce, self.expand = nn.Conv2d(channels, hidden, 1), nn.Conv2d(hidden, channels, 1)
        else:
            self.reduce, self.expand = nn.Linear(channels, hidden), nn.Linear(hidden, channels)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=self.conv)
        s = torch.sigmoid(self.expand(torch.relu(self.reduce(s))))
        return x * (s if self.conv else s[:, :, None, None])


class _ResNeXtBlock(nn.Module):
    """1x1 reduce -> grouped 3x3 -> 1x1 expand -> SE, plus a 1x1 projection shortcut."""

    def __init__(self, cin: int, width: int, cout: int, groups: int, stride: int, se_conv: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.grouped = _cbr(width, width, stride, groups)
        self.expand = nn.Sequential(nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.se = _SE(cout, max(4, cout // 4), se_conv)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return torch.relu(self.se(self.expand(self.grouped(self.reduce(x)))) + self.shortcut(x))


class ResNeXtSENet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.stage1 = _ResNeXtBlock(16, 32, 32, groups=4, stride=1, se_conv=False)
        self.stage2 = _ResNeXtBlock(32, 64, 64, groups=8, stride=2, se_conv=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.stage2(self.stage1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _dwsep(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        _cbr(cin, cin, stride, groups=cin), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class DWSepNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, 16)
        self.blocks = nn.Sequential(_dwsep(16, 32, 1), _dwsep(32, 64, 2), _dwsep(64, 64, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))


class ReusedNet(nn.Module):
    """``self.mid`` (a conv with no BN of its own) runs twice on the same width, at two resolutions."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = _cbr(3, 24)
        self.mid = nn.Conv2d(24, 24, 3, padding=1)
        self.down = nn.MaxPool2d(2)
        self.head = _cbr(24, 48, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.mid(x))
        x = torch.relu(self.mid(self.down(x)))
        return self.fc(torch.flatten(self.pool(self.head(x)), 1))


class ActNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            _cbr(3, 16, act=nn.SiLU),
            _cbr(16, 32, stride=2, act=nn.Hardswish),
            _cbr(32, 48, stride=2, act=nn.GELU),
            nn.Conv2d(48, 48, 1),  # no BN: the activation follows the conv directly
            nn.SiLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class LinearHeadNet(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(_cbr(3, 16), _cbr(16, 32, stride=2), _cbr(32, 32, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, x):
        return self.head(self.pool(self.features(x)))


def concat_net(num_classes: int = 10) -> nn.Module:
    return ConcatNet(num_classes)


def resnext_se_net(num_classes: int = 10) -> nn.Module:
    return ResNeXtSENet(num_classes)


def dwsep_net(num_classes: int = 10) -> nn.Module:
    return DWSepNet(num_classes)


def reused_net(num_classes: int = 10) -> nn.Module:
    return ReusedNet(num_classes)


def silu_hardswish_net(num_classes: int = 10) -> nn.Module:
    return ActNet(num_classes)


def linear_head_net(num_classes: int = 10) -> nn.Module:
    return LinearHeadNet(num_classes)


ZOO = ["concat_net", "resnext_se_net", "dwsep_net", "reused_net", "silu_hardswish_net", "linear_head_net"]


def spec(name: str) -> str:
    """The ``path/file.py:fn`` form that ``--model`` and :func:`trtprune.sources.models.build_model` accept."""
    return f"{HERE}:{name}"
