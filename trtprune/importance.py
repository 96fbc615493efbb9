"""Which channels of a group to remove: importance criteria, by name.

Each criterion maps a Torch-Pruning group (all channels of one group) to one score per channel;
the lowest scores are removed first.

* ``l1``: sum over every conv/linear/BN in the group of the L1 norm of the channel's weights (the
  producers' filters and the consumers' input slices), Torch-Pruning's group magnitude with p=1.
* ``l2``: the same with the L2 norm.
* ``bn``: the absolute BN scale (gamma) of the channel, summed over the group's BNs (Liu et al. 2017).
* ``taylor``: first-order Taylor estimate of the loss change when the channel is removed (Molchanov
  et al. 2019), ``|sum over the channel's weights of w * dL/dw|`` summed over the group, with the
  gradient of the cross-entropy accumulated over a few training batches (eval-mode BN). Unlike the
  magnitudes it is in units of loss, so scores compare across groups: the latency searches use it.

Sums, not means, over a group's layers: a channel that feeds many layers carries more.
"""

from __future__ import annotations

from .errors import TrtpruneError

# name -> (Torch-Pruning class, keyword arguments); classes are looked up only when used
IMPORTANCE: dict[str, tuple[str, dict]] = {
    "l1": ("GroupMagnitudeImportance", {"p": 1, "group_reduction": "sum", "normalizer": None}),
    "l2": ("GroupMagnitudeImportance", {"p": 2, "group_reduction": "sum", "normalizer": None}),
    "bn": ("BNScaleImportance", {"group_reduction": "sum", "normalizer": None}),
    "taylor": ("GroupTaylorImportance", {"group_reduction": "sum", "normalizer": None, "multivariable": True}),
}
NEEDS_GRADIENTS = {"taylor"}


def get_importance(name: str):
    """A callable ``scorer(group) -> tensor[channels]`` for a criterion name."""
    import torch_pruning as tp

    if name not in IMPORTANCE:
        raise TrtpruneError(f"unknown importance criterion '{name}'", fix=f"use one of {', '.join(IMPORTANCE)}")
    cls, kwargs = IMPORTANCE[name]
    return getattr(tp.importance, cls)(**kwargs)


def accumulate_gradients(model, batches) -> None:
    """Sum the cross-entropy gradient over ``batches`` into ``param.grad`` (BN in eval mode)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for xb, yb in batches:
            F.cross_entropy(model(xb), yb, reduction="sum").backward()
