"""MobileNetV2 (Sandler et al. 2018) for 32x32 inputs: stride 1 in the stem and in the second
stage, so the last feature map is 4x4 as in the common CIFAR adaptations."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

# (expansion t, output channels c, repeats n, stride s of the first block); stage 2 uses s=1 on CIFAR
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu(in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_ch * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn_relu(in_ch, hidden, 1))
        layers += [
            _conv_bn_relu(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_ch == out_ch

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, last_channels: int = 1280):
        super().__init__()
        in_ch = 32
        blocks: list[nn.Module] = [_conv_bn_relu(3, in_ch, 3, 1)]
        for t, c, n, s in SETTINGS:
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, s if i == 0 else 1, t))
                in_ch = c
        blocks.append(_conv_bn_relu(in_ch, last_channels, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(last_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        x = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.classifier(x)


def mobilenet_v2(num_classes: int = 10) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes)
