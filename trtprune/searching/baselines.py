"""What users do today, matched to the same measured latency as the latency-aware searches.

* ``uniform``: one ratio for every group (kept counts rounded to ``round_to``); the smallest ratio
  whose latency meets the target is used.
* ``flops``: Torch-Pruning-style global magnitude pruning to a MACs target: every channel's L2 group
  magnitude, normalised by its group's mean (Torch-Pruning's default), one global threshold, kept
  counts rounded to ``round_to`` (none, 8 or 16); the largest MACs target whose latency meets the
  target is used. Users pick a MACs target; here it is chosen so both methods spend the same latency.

Both scan their one parameter on a fine grid, predict every plan from the LUT, take the least pruning
that fits, and go through the same measure-and-tighten loop as the other searchers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from trtprune.profiling.layers import macs
from trtprune.searching.base import Searcher
from trtprune.searching.space import SearchSpace


def _round(keep: float, channels: int, round_to: int, multiple: int = 1) -> int:
    """``keep`` rounded to the nearest multiple of ``round_to`` and of the group's own ``multiple`` (the
    groups of a grouped conv it touches), within 1..channels."""
    if multiple > 1:
        step = math.lcm(round_to, multiple) if channels % math.lcm(round_to, multiple) == 0 else multiple
        return max(step, min(channels, step * math.floor(keep / step + 0.5)))
    if round_to <= 1:
        return max(1, min(channels, int(round(keep))))
    return (
        max(round_to, min(channels, round_to * math.floor(keep / round_to + 0.5))) if channels >= round_to else channels
    )


class _OneParameter(Searcher):
    """A family of plans indexed by one number, least pruning first."""

    def family(self, space: SearchSpace) -> list[dict[str, int]]:
        raise NotImplementedError

    def propose(self, space: SearchSpace, target_ms: float, start: Mapping[str, int]) -> dict[str, int]:
        plans = self.family(space)
        lats = space.predict(plans)
        for plan, lat in zip(plans, lats):
            if lat <= target_ms:
                return plan
        return plans[int(np.argmin(lats))]


class Uniform(_OneParameter):
    name = "uniform"

    def family(self, space: SearchSpace) -> list[dict[str, int]]:
        round_to = int(self.options.get("round_to", 1))
        full = space.full
        multiple = {g.name: g.multiple for g in space.predictor.groups}
        plans = []
        for ratio in np.arange(0.0, 0.96, 0.01):
            plan = {g: _round(c * (1 - ratio), c, round_to, multiple[g]) for g, c in full.items()}
            if plan not in plans:
                plans.append(plan)
        return plans


class Flops(_OneParameter):
    name = "flops"

    def family(self, space: SearchSpace) -> list[dict[str, int]]:
        round_to = int(self.options.get("round_to", 1))
        magnitude = self.options["magnitude"]  # group name -> per-channel L2 group magnitude
        normalised = {g: m / m.mean() for g, m in magnitude.items()}
        full = space.full
        multiple = {g.name: g.multiple for g in space.predictor.groups}
        plans = []
        for t in np.quantile(np.concatenate(list(normalised.values())), np.linspace(0, 0.95, 200)):
            plan = {g: _round(float((normalised[g] >= t).sum()), full[g], round_to, multiple[g]) for g in full}
            if plan not in plans:
                plans.append(plan)
        return sorted(plans, key=lambda p: -plan_macs(space, p))


def plan_macs(space: SearchSpace, keep: Mapping[str, int]) -> int:
    return sum(macs(*p) for p in space.predictor.points(keep))
