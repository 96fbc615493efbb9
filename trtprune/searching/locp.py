"""LOCP (Zhang et al., J. Supercomputing 2023): stair-edge candidates and a two-stage benefit assessment.

Stage 1 walks down from the full model: at every step each group may jump to any lower stair edge;
the move with the most latency saved per unit of importance removed wins (latency predicted from the
LUT with every layer at its joint (Cin, Cout), so producer/consumer coupling is priced in). Stage 2
re-assesses with the coupled estimates: channels are given back, best importance regained per
latency spent first, while the prediction stays within the target. The shared loop in ``base``
then measures the whole network and tightens the target until the measurement meets the budget.
"""

from __future__ import annotations

from collections.abc import Mapping

from trtprune.searching.base import Searcher
from trtprune.searching.space import SearchSpace


class LOCP(Searcher):
    name = "locp"

    def propose(self, space: SearchSpace, target_ms: float, start: Mapping[str, int]) -> dict[str, int]:
        keep = walk_down(space, start, target_ms)  # stage 1
        lat = space.predict([keep])[0]
        while True:  # stage 2: give channels back where the coupled prediction leaves room
            ups = [(g, k) for g, cands in space.candidates.items() for k in cands if k > keep[g]]
            best = None
            for (g, k), new in zip(ups, space.predict([{**keep, g: k} for g, k in ups])):
                if new > target_ms:
                    continue
                regained = space.cost(g, keep[g]) - space.cost(g, k)
                spent = max(new - lat, 1e-9)
                if regained > 0 and (best is None or regained / spent > best[0]):
                    best = (regained / spent, g, k, new)
            if best is None:
                return keep
            _, g, k, lat = best
            keep[g] = k


def walk_down(space: SearchSpace, start: Mapping[str, int], target_ms: float) -> dict[str, int]:
    """LOCP's stage 1 from ``start``: while the coupled prediction is over ``target_ms``, take the move to a
    lower stair edge with the most latency saved per unit of importance removed."""
    keep = dict(start)
    lat = space.predict([keep])[0]
    while lat > target_ms:
        moves = [(g, k) for g, cands in space.candidates.items() for k in cands if k < keep[g]]
        if not moves:
            break
        best = None
        for (g, k), new in zip(moves, space.predict([{**keep, g: k} for g, k in moves])):
            saved = lat - new
            if saved <= 0:
                continue
            lost = space.cost(g, k) - space.cost(g, keep[g])
            benefit = saved / lost if lost > 0 else float("inf")
            if best is None or benefit > best[0]:
                best = (benefit, g, k, new)
        if best is None:
            break  # nothing lower is faster: the caller reports what is reachable
        _, g, k, lat = best
        keep[g] = k
    return keep
