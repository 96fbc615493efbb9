"""VGG-16 with batch norm for 32x32 inputs (the CIFAR variant used in pruning papers)."""

from __future__ import annotations

from torch import nn

# channels per 3x3 conv, "M" = 2x2 max-pool; five pools take 32x32 down to 1x1
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class CifarVGG(nn.Module):
    def __init__(self, cfg=VGG16, num_classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(in_ch, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg16_bn(num_classes: int = 10) -> CifarVGG:
    return CifarVGG(VGG16, num_classes)
