"""HALP-style search (Shen et al., NeurIPS 2022): a grouped knapsack over stair-edge candidates.

Each group picks one candidate count; its value is the importance kept, its weight the latency it
saves with the other groups held at the current plan (a LUT estimate). The multiple-choice knapsack is
solved exactly by dynamic programming over discretised savings, then re-linearised around the new
plan a few times, since savings are not exactly additive.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from trtprune.searching.base import Searcher
from trtprune.searching.space import SearchSpace


class Knapsack(Searcher):
    name = "knapsack"

    def propose(
        self, space: SearchSpace, target_ms: float, start: Mapping[str, int], iterations: int = 4, resolution: int = 400
    ) -> dict[str, int]:
        # from the full model every time, not from ``start``: savings are measured against the current plan
        # and options slower than it are never taken, so starting from a tighter plan could not loosen it
        origin = keep = dict(space.full)
        for _ in range(iterations):
            current = space.predict([keep])[0]
            need = current - target_ms
            if need <= 0 and keep != origin:
                break
            options = {g: [k for k in cands] for g, cands in space.candidates.items()}
            plans = [({**keep, g: k}, g, k) for g, ks in options.items() for k in ks]
            lats = space.predict([p for p, _, _ in plans])
            items: dict[str, list[tuple[float, float, int]]] = {}
            for (_, g, k), lat in zip(plans, lats):
                items.setdefault(g, []).append((current - lat, space.cost(g, k), k))  # (saving, cost, count)
            keep = self._solve(items, max(need, 0.0), resolution) or keep
        return keep

    @staticmethod
    def _solve(items, need_ms: float, resolution: int) -> dict[str, int] | None:
        """Least total cost with total saving >= need; savings in units of need/resolution, saturating."""
        cap = resolution if need_ms > 0 else 0
        q = need_ms / resolution if need_ms > 0 else 1.0
        best = np.full(cap + 1, np.inf)
        best[0] = 0.0
        back = []  # per group: for each state after it, (state before, option index)
        for opts in items.values():
            nxt = np.full(cap + 1, np.inf)
            pred = np.zeros((cap + 1, 2), dtype=int)
            for i, (saving, cost, _) in enumerate(opts):
                if saving < 0:
                    continue  # slower than now: never worth it
                units = min(cap, int(saving / q))
                for state in np.flatnonzero(np.isfinite(best)):
                    after = min(cap, state + units)
                    if best[state] + cost < nxt[after]:
                        nxt[after] = best[state] + cost
                        pred[after] = (state, i)
            back.append(pred)
            best = nxt
        if not np.isfinite(best[cap]):
            return None
        keep, state = {}, cap
        for (g, opts), pred in zip(reversed(list(items.items())), reversed(back)):
            state, i = pred[state]
            keep[g] = opts[i][2]
        return keep
