"""Fast accuracy proxies for searchers: a sub-net's accuracy (or its task's metric) without fine-tuning it.

``adaptive_bn_top1`` is EagleEye's (Li et al., ECCV 2020): pruning leaves BN running statistics that
belong to the unpruned network, so they are re-estimated on a few training batches (train-mode
forward passes, no gradient) before the sub-net is evaluated on a held-out slice of the *training*
set - the test set is never used to choose a plan.
"""

from __future__ import annotations

import torch
from torch import nn

from trtprune.metrics import top1_torch
from trtprune.sources.images import Images, as_images

HELD_OUT = 5000  # the last images of the training set: the proxy's validation slice
CALIBRATION_BATCHES = 20  # batches of 100 for re-estimating BN statistics


def held_out(train, n: int = HELD_OUT) -> tuple[Images, Images]:
    """(calibration part, validation part) of the training images; the validation part is their last ``n`` (a
    fifth of a set not larger than ``n``)."""
    train = as_images(train)
    if n >= len(train):
        n = max(1, len(train) // 5)
    return train.take(0, len(train) - n), train.take(len(train) - n)


def recalibrate_bn(
    model: nn.Module,
    images,
    mean,
    std,
    batches: int = CALIBRATION_BATCHES,
    batch_size: int = 100,
    seed: int = 0,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> None:
    """Re-estimate every BN's running mean and variance (cumulative average) from ``batches`` batches."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average: every batch weighs the same
    model.train()
    try:
        with torch.no_grad():
            for i, (xb, _) in enumerate(as_images(images).batches(batch_size, mean, std, shuffle=True, seed=seed)):
                if i >= batches:
                    break
                model(xb.to(device).contiguous(memory_format=memory_format))
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.eval()


def adaptive_bn_metric(
    model: nn.Module,
    train,
    mean,
    std,
    task=None,
    held_out_n: int = HELD_OUT,
    limit: int | None = None,
    batches: int = CALIBRATION_BATCHES,
) -> float:
    """The task's metric (top-1 % for classification) after BN recalibration (model changed in place): on the
    held-out training slice (its first ``limit`` images; None: all) after recalibrating on ``batches`` batches of
    the rest; for a task that holds its own validation data (a user's ``metric(model)``), after recalibrating on
    ``batches`` batches of the training images."""
    if task is None or task.images_metric:
        calibration, validation = held_out(train, held_out_n)
        if limit is not None:
            validation = validation.take(0, limit)
        recalibrate_bn(model, calibration, mean, std, batches=batches)
        if task is None:
            return top1_torch(model, validation, mean, std, desc="proxy")
        return task.metric(model, validation, mean, std)
    recalibrate_bn(model, train, mean, std, batches=batches)
    return task.metric(model, None, mean, std)


def adaptive_bn_top1(
    model: nn.Module,
    train,
    mean,
    std,
    held_out_n: int = HELD_OUT,
    limit: int | None = None,
    batches: int = CALIBRATION_BATCHES,
) -> float:
    """Top-1 (%) on the held-out training slice (its first ``limit`` images; None: all) after BN recalibration on
    ``batches`` batches of the rest (model changed in place)."""
    return adaptive_bn_metric(model, train, mean, std, None, held_out_n, limit, batches)
