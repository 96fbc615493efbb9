"""Latency-budgeted searches, one registry: ``SEARCHERS[name]`` is ``"module:Class"`` (imported on use).

Every searcher works on a :class:`SearchSpace` (stair-edge candidates, importance costs, a LUT latency
model) and shares the measure-and-tighten loop of :class:`Searcher`.
"""

from __future__ import annotations

import importlib

from trtprune.errors import TrtpruneError
from trtprune.searching.plan import Budget, Plan

SEARCHERS: dict[str, str] = {
    "locp": "trtprune.searching.locp:LOCP",  # stair edges + two-stage benefit assessment (default)
    "knapsack": "trtprune.searching.knapsack:Knapsack",  # HALP-style grouped knapsack
    "lap": "trtprune.searching.lap:LAP",  # DDPG agent with latency sensitivity (LAP/AMC)
    "uniform": "trtprune.searching.baselines:Uniform",  # one ratio everywhere (round_to)
    "flops": "trtprune.searching.baselines:Flops",  # global magnitude to a MACs target (round_to)
}


def get_searcher(name: str, **options):
    if name not in SEARCHERS:
        raise TrtpruneError(f"unknown search method '{name}'", fix=f"use one of {', '.join(SEARCHERS)}")
    module, cls = SEARCHERS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)


__all__ = ["SEARCHERS", "Budget", "Plan", "get_searcher"]
