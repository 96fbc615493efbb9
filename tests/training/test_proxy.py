import copy

import torch

from trtprune.sources.datasets import synthetic_cifar10
from trtprune.sources.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from trtprune.training.proxy import adaptive_bn_top1, held_out, recalibrate_bn


def test_held_out_is_the_end_of_the_training_set():
    x, y = synthetic_cifar10(100)
    calibration, validation = held_out((x, y), 30)
    assert len(calibration) == 70 and len(validation) == 30
    assert (validation.x == x[70:]).all() and (validation.y == y[70:]).all() and (calibration.x == x[:70]).all()


def test_recalibration_replaces_the_bn_statistics_and_keeps_the_momentum():
    torch.manual_seed(0)
    model = build_model("resnet20")
    x, y = synthetic_cifar10(200)
    before = copy.deepcopy(model.bn1.running_mean)
    recalibrate_bn(model, (x, y), IMAGENET_MEAN, IMAGENET_STD, batches=2)
    assert not torch.allclose(before, model.bn1.running_mean)
    assert model.bn1.momentum == 0.1 and not model.training
    assert int(model.bn1.num_batches_tracked) == 2


def test_proxy_accuracy_is_a_percentage():
    torch.manual_seed(0)
    acc = adaptive_bn_top1(build_model("resnet20"), synthetic_cifar10(300), IMAGENET_MEAN, IMAGENET_STD, 100)
    assert 0.0 <= acc <= 100.0
