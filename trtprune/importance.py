"""Which channels of a group to remove: importance criteria, by name.

Each criterion maps a Torch-Pruning group (all channels of one group) to one score per channel;
the lowest scores are removed first.

* ``l1``: sum over every conv/linear/BN in the group of the L1 norm of the channel's weights (the
  producers' filters and the consumers' input slices), Torch-Pruning's group magnitude with p=1.
* ``l2``: the same with the L2 norm.
* ``bn``: the absolute BN scale (gamma) of the channel, summed over the group's BNs (Liu et al. 2017).
"""

from __future__ import annotations

from .errors import TrtpruneError

# name -> (Torch-Pruning class, keyword arguments); classes are looked up only when used
IMPORTANCE: dict[str, tuple[str, dict]] = {
    "l1": ("GroupMagnitudeImportance", {"p": 1, "group_reduction": "sum", "normalizer": None}),
    "l2": ("GroupMagnitudeImportance", {"p": 2, "group_reduction": "sum", "normalizer": None}),
    "bn": ("BNScaleImportance", {"group_reduction": "sum", "normalizer": None}),
}


def get_importance(name: str):
    """A callable ``scorer(group) -> tensor[channels]`` for a criterion name."""
    import torch_pruning as tp

    if name not in IMPORTANCE:
        raise TrtpruneError(f"unknown importance criterion '{name}'", fix=f"use one of {', '.join(IMPORTANCE)}")
    cls, kwargs = IMPORTANCE[name]
    return getattr(tp.importance, cls)(**kwargs)
