"""The searcher interface and the loop every latency-aware searcher shares: search to a predicted
target, measure the result, tighten the target by what the measurement says, repeat."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Mapping

from trtprune.errors import TrtpruneError
from trtprune.searching.plan import Budget
from trtprune.searching.space import SearchSpace

log = logging.getLogger(__name__)


class Searcher(abc.ABC):
    name = "base"

    def __init__(self, **options):
        self.options = options

    @abc.abstractmethod
    def propose(self, space: SearchSpace, target_ms: float, start: Mapping[str, int]) -> dict[str, int]:
        """Channel counts whose *predicted* latency is at most ``target_ms`` (starting from ``start``)."""

    def search(
        self,
        space: SearchSpace,
        budget: Budget,
        max_rounds: int = 8,
        slack: float = Budget.SLACK,
        band: float = Budget.BAND,
    ) -> dict:
        """Propose, measure whole next to the baseline, adjust, until the measured latency is within
        ``band`` below the budget (``slack`` above it is measurement noise). The target moves by what each
        measurement says, both ways: tighter when the model was optimistic, looser when it was
        pessimistic - a plan far under budget gives away accuracy. Returns the cheapest plan that met
        the budget (least importance removed), and the record of every round."""
        t0 = time.perf_counter()
        target = budget.target_ms(space.baseline_ms)
        self._check_below_baseline(space, target)
        self._check_reachable(space, target)
        keep, history, best, measured = space.full, [], None, []
        for rnd in range(max_rounds):
            keep = self.propose(space, target, keep)
            if keep in measured:  # a plan of a family (uniform, flops) between two stairs: the rounds would cycle
                log.info(
                    "%s round %d | proposes the plan of round %d again: stop", self.name, rnd, measured.index(keep)
                )
                break
            measured.append(dict(keep))
            predicted = space.predict([keep])[0]
            base_ms, sub_ms = space.confirm(keep, f"{self.name}-round{rnd}")
            wanted = budget.target_ms(base_ms)  # the baseline of this run: drift between runs cancels
            met = budget.met(sub_ms, base_ms, slack)
            cost = space.total_cost(keep)
            history.append(
                {
                    "target_ms": target,
                    "predicted_ms": predicted,
                    "baseline_ms": base_ms,
                    "measured_ms": sub_ms,
                    "ratio": sub_ms / base_ms,
                    "met": met,
                    "cost": cost,
                }
            )
            log.info(
                "%s round %d | predicted %.3f ms | measured %.3f ms = %.3fx of %.3f ms (budget %s)%s",
                self.name,
                rnd,
                predicted,
                sub_ms,
                sub_ms / base_ms,
                base_ms,
                budget,
                " met" if met else "",
            )
            if met and (best is None or cost < best["cost"]):
                best = {
                    "keep_channels": dict(keep),
                    "predicted_ms": predicted,
                    "measured_ms": sub_ms,
                    "baseline_ms": base_ms,
                    "cost": cost,
                    "target_ms": target,
                }
            if met and sub_ms >= wanted * (1 - band):
                break
            target *= wanted / sub_ms
            self._check_reachable(space, target)
        if best is None:  # none met: the last plan measured
            best = {
                "keep_channels": measured[-1],
                "predicted_ms": predicted,
                "measured_ms": sub_ms,
                "baseline_ms": base_ms,
                "cost": space.total_cost(measured[-1]),
                "target_ms": target,
            }
        return {
            **best,
            "met": budget.met(best["measured_ms"], best["baseline_ms"], slack),
            "rounds": history,
            "search_s": time.perf_counter() - t0,
            "evaluations": space.evaluations,
        }

    def search_ranked(
        self,
        spaces: list[SearchSpace],
        budget: Budget,
        rank: Callable[[list[tuple[SearchSpace, dict[str, int]]]], list[float]],
        **options,
    ) -> dict:
        """Accuracy inside the search. The loop of :meth:`search` runs on ``spaces[0]``; at the target that met
        the budget, every variant space (another importance criterion or floor: :meth:`SearchSpace.variant`)
        proposes its plan; ``rank([(space, plan), ...])`` scores them (a proxy of accuracy, higher is better: each plan
        pruned by its space's scores), and the loop runs
        again on the best-ranked variant, so its plan is measured too. Of the measured plans that met the budget,
        the better-ranked is returned, with the ranking."""
        first = self.search(spaces[0], budget, **options)
        if not first["met"] or len(spaces) < 2:
            return first
        t0 = time.perf_counter()
        plans = [first["keep_channels"]] + [self.propose(v, first["target_ms"], v.full) for v in spaces[1:]]
        scores = rank(list(zip(spaces, plans)))
        ranking = [
            {"label": v.label, "proxy": score, "predicted_ms": v.predict([p])[0], "keep_channels": p}
            for v, p, score in zip(spaces, plans, scores)
        ]
        top = max(range(len(spaces)), key=lambda i: scores[i])
        log.info(
            "ranked | %s | best: %s",
            " | ".join(f"{r['label']} {r['proxy']:.2f}" for r in ranking),
            ranking[top]["label"],
        )
        chosen, result = 0, first
        if top != 0:
            other = self.search(spaces[top], budget, **options)
            if other["met"]:
                measured = rank([(spaces[top], other["keep_channels"])])[0]
                ranking[top]["proxy_measured_plan"] = measured
                if measured > scores[0]:
                    chosen, result = top, other
        return {
            **result,
            "ranking": ranking,
            "chosen": spaces[chosen].label,
            "ranked_s": time.perf_counter() - t0,
        }

    @staticmethod
    def _check_below_baseline(space: SearchSpace, target_ms: float) -> None:
        if target_ms >= space.baseline_ms:
            raise TrtpruneError(
                f"the budget ({target_ms:.3f} ms) is not below the unpruned model's latency ({space.baseline_ms:.3f} "
                "ms, measured on this device)",
                why="the unpruned model already meets it: a plan would keep every channel",
                fix=f"ask for less than {space.baseline_ms:.3f} ms (e.g. --budget-ms {space.baseline_ms / 2:.3g}), "
                "or a fraction of the baseline (--budget 0.5x)",
            )

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
