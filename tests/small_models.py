"""Models for tests that export many sub-nets: small members of the CIFAR ResNet family.

Loaded as user factories (``tests/small_models.py:resnet8``), so the tests that use them also drive that path.
* ResNet-8 (one block per stage): its ONNX export takes about a third of ResNet-20's, and the searchers still see
  stem, block and stage groups; ``resnet8_narrow`` is the same at half the width (8/16/32 channels: half the
  channel counts to profile).
* ResNet-14 (two blocks per stage): the smallest with a removable block in every stage, for the depth search.
"""

from pathlib import Path

from trtprune.sources.models.resnet_cifar import CifarResNet

HERE = Path(__file__).resolve()
RESNET8, RESNET8_NARROW, RESNET14 = (f"{HERE}:{name}" for name in ("resnet8", "resnet8_narrow", "resnet14"))


def resnet8(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(8, num_classes)


def resnet8_narrow(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(8, num_classes, widths=(8, 16, 32))


def resnet14(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(14, num_classes)
