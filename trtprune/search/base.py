"""The searcher interface and the loop every latency-aware searcher shares: search to a predicted
target, measure the result, tighten the target by what the measurement says, repeat."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Mapping

from ..errors import TrtpruneError
from .plan import Budget
from .space import SearchSpace

log = logging.getLogger(__name__)


class Searcher(abc.ABC):
    name = "base"

    def __init__(self, **options):
        self.options = options

    @abc.abstractmethod
    def propose(self, space: SearchSpace, target_ms: float, start: Mapping[str, int]) -> dict[str, int]:
        """Channel counts whose *predicted* latency is at most ``target_ms`` (starting from ``start``)."""

    def search(self, space: SearchSpace, budget: Budget, max_rounds: int = 5, slack: float = 0.01) -> dict:
        """Propose, measure whole next to the baseline, tighten, until the measured ratio meets the budget
        (within ``slack`` of measurement noise). Returns the plan and its record."""
        t0 = time.perf_counter()
        target = budget.target_ms(space.baseline_ms)
        self._check_reachable(space, target)
        keep, history = space.full, []
        for rnd in range(max_rounds):
            keep = self.propose(space, target, keep)
            predicted = space.predict([keep])[0]
            base_ms, sub_ms = space.confirm(keep, f"{self.name}-round{rnd}")
            wanted = budget.target_ms(base_ms)  # the baseline of this run: drift between runs cancels
            history.append(
                {
                    "target_ms": target,
                    "predicted_ms": predicted,
                    "baseline_ms": base_ms,
                    "measured_ms": sub_ms,
                    "ratio": sub_ms / base_ms,
                }
            )
            log.info(
                "%s round %d | predicted %.3f ms | measured %.3f ms = %.3fx of %.3f ms (budget %s)",
                self.name,
                rnd,
                predicted,
                sub_ms,
                sub_ms / base_ms,
                base_ms,
                budget,
            )
            if sub_ms <= wanted * (1 + slack):
                break
            target *= wanted / sub_ms  # the model was optimistic by this much: ask for that much more
            self._check_reachable(space, target)
        return {
            "keep_channels": keep,
            "predicted_ms": predicted,
            "measured_ms": sub_ms,
            "baseline_ms": base_ms,
            "rounds": history,
            "search_s": time.perf_counter() - t0,
            "met": sub_ms <= wanted * (1 + slack),
            "cost": space.total_cost(keep),
            "evaluations": space.evaluations,
        }

    @staticmethod
    def _check_reachable(space: SearchSpace, target_ms: float) -> None:
        floor = {g: c[0] for g, c in space.candidates.items()}
        smallest = space.predict([floor])[0]
        if smallest > target_ms:
            raise TrtpruneError(
                f"the budget ({target_ms:.3f} ms) is below the smallest latency reachable ({smallest:.3f} ms, "
                f"predicted, with every group at its smallest candidate)",
                why=f"the baseline is {space.baseline_ms:.3f} ms on this device",
                fix=f"ask for at least {smallest / space.baseline_ms:.2f}x of the baseline",
            )
