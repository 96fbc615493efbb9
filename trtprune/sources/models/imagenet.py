"""ImageNet-layout reference networks in plain ``torch.nn`` (no torchvision), for 224x224 inputs.

* ``resnet18``: He et al. 2016, the ImageNet ResNet-18: a 7x7 stride-2 stem and a 3x3 stride-2 max-pool, four
  stages of two BasicBlocks (64/128/256/512 channels) whose first block in stages 2-4 halves the resolution with
  a 1x1 projection shortcut (conv + BN), global average pooling and a linear head.
* ``mobilenet_v2_imagenet``: Sandler et al. 2018 at width 1.0: the CIFAR module's inverted residuals with
  ImageNet's strides (2 in the stem and in the second stage), 1280 features, dropout 0.2 and a linear head.

Both are the architectures only (random weights): trtprune profiles, searches and prunes them; bring the
weights you trained with ``--weights``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from trtprune.sources.models.mobilenetv2_cifar import SETTINGS, InvertedResidual, _conv_bn_relu


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.downsample = None
        if stride != 1 or in_ch != out_ch:  # a projection shortcut: its output channels join the block's
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 1000, widths=(64, 128, 256, 512)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_ch, stages = widths[0], []
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(BasicBlock(in_ch, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)))
            in_ch = w
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 1000, last_channels: int = 1280, dropout: float = 0.2):
        super().__init__()
        in_ch = 32
        blocks: list[nn.Module] = [_conv_bn_relu(3, in_ch, 3, 2)]
        for k, (t, c, n, s) in enumerate(SETTINGS):
            stride = 2 if k == 1 else s  # ImageNet: the second stage halves the resolution too
            for i in range(n):
                blocks.append(InvertedResidual(in_ch, c, stride if i == 0 else 1, t))
                in_ch = c
        blocks.append(_conv_bn_relu(in_ch, last_channels, 1))
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last_channels, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def resnet18(num_classes: int = 1000) -> ResNet18:
    return ResNet18(num_classes)


def mobilenet_v2_imagenet(num_classes: int = 1000) -> MobileNetV2:
    return MobileNetV2(num_classes)
