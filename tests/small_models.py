"""A model for tests that export many sub-nets: the ResNet-8 of the CIFAR family (one block per stage).

Loaded as a user factory (``tests/small_models.py:resnet8``), so the tests that use it also drive that path.
Its ONNX export takes about a third of ResNet-20's, and the searchers still see stem, block and stage groups.
"""

from pathlib import Path

from trtprune.sources.models.resnet_cifar import CifarResNet

RESNET8 = f"{Path(__file__).resolve()}:resnet8"


def resnet8(num_classes: int = 10) -> CifarResNet:
    return CifarResNet(8, num_classes)
