"""What every latency-aware searcher works on: groups, candidate counts, costs and a latency model.

* **Candidates** of a group are the edges of its measured stairs (the largest count on each latency
  stair, other groups at full width), above a floor (``min_fraction`` of the channels) - counts inside
  a stair or on a dip buy no latency. The full width is always a candidate.
* **Cost** of keeping ``k`` channels is the importance of the channels removed: the sum of the
  ``C - k`` smallest scores (Taylor scores are in units of loss, so costs add across groups).
* **Latency** of a plan is predicted from the LUT with every layer at its joint (Cin, Cout), so the
  coupling between a producer group and its consumers is in every estimate; ``confirm`` measures the
  sub-net whole next to the baseline, in one interleaved run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from trtprune.profiling.engine_stairs import EngineProfiler
from trtprune.profiling.predict import Predictor, layer_sums
from trtprune.profiling.profile import group_layers, profile_groups
from trtprune.profiling.stairs import Tolerance
from trtprune.pruning.prune import uniform_plan

log = logging.getLogger(__name__)


def floored(edges: Mapping[str, list[int]], channels: Mapping[str, int], min_fraction: float) -> dict[str, list[int]]:
    """Candidates: each group's edges at or above ``min_fraction`` of its channels, and its full width."""
    out = {}
    for g, c in channels.items():
        floor = max(1, math.ceil(min_fraction * c))
        out[g] = sorted({e for e in edges.get(g, []) if e >= floor} | {c})
    return out


@dataclass
class SearchSpace:
    predictor: Predictor
    scores: dict[str, np.ndarray]  # importance per channel, per group
    candidates: dict[str, list[int]]  # ascending, ending with the full width
    baseline_ms: float  # the dense model, measured whole
    evaluations: int = 0  # latency predictions made
    edges: dict[str, list[int]] = field(default_factory=dict)  # every stair edge per group, before the floor
    label: str = ""  # what distinguishes this space from its variants (e.g. "fisher, floor 25 %")
    # plan -> accuracy proxy (top-1 %, higher is better) where the caller has training images; lap's reward uses it
    accuracy: Callable[[Mapping[str, int]], float] | None = field(default=None, repr=False)
    _cost_cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(
        cls,
        predictor: Predictor,
        scores: Mapping[str, np.ndarray],
        tol: Tolerance | None = None,
        min_fraction: float = 0.1,
        calibration: list | None = None,
        stairs_from: str = "layers",
    ) -> SearchSpace:
        """Profile every group's stairs (LUT, shared; or, with ``stairs_from="engine"`` on a TensorRT device, from
        the per-layer profiles of whole-model engines), then calibrate the latency model on the dense model and
        a few uniform prunes measured whole."""

        groups, tol = predictor.groups, tol or Tolerance()
        gls = group_layers(groups, predictor.layers)
        if stairs_from == "engine":
            p = predictor
            engine = EngineProfiler(p.backend, p.dense, p.input_shape, p.workdir / "engines", p.ignore)
            stairs = {gl.group.name: engine.stairs(gl.group, tol) for gl in gls}
            log.info("search space | stairs from %d whole-model engine profiles", engine.builds)
        else:
            stairs = profile_groups(predictor.profiler, gls, tol)  # a log line per group: progress in any log
        edges = {gl.group.name: list(stairs[gl.group.name].edges) for gl in gls}
        candidates = floored(edges, {gl.group.name: gl.group.channels for gl in gls}, min_fraction)
        # the dense model, two uniform prunes, and two random plans over the candidates: the latter put
        # layers on every kind of kernel the candidates use, so the model learns how each kind adds up
        rng = np.random.default_rng(0)
        plans = calibration or (
            [{g.name: g.channels for g in groups}]
            + [uniform_plan(groups, r, 8) for r in (0.3, 0.6)]
            + [{g: int(rng.choice(c)) for g, c in candidates.items()} for _ in range(2)]
        )
        measured = predictor.calibrate(plans)
        log.info(
            "search space | %d groups, %d candidates | baseline %.3f ms | overhead %s",
            len(groups),
            sum(map(len, candidates.values())),
            measured[0],
            predictor.overhead,
        )
        return cls(predictor, dict(scores), candidates, measured[0], edges=edges)

    def variant(self, label: str, scores: Mapping[str, np.ndarray] | None = None, min_fraction: float | None = None):
        """The same device, latency model and measurements with another cost (``scores``) or floor: for plans
        that a proxy of accuracy then ranks. Predictions are shared; nothing is measured again."""
        candidates = self.candidates if min_fraction is None else floored(self.edges, self.full, min_fraction)
        return SearchSpace(
            self.predictor,
            dict(scores if scores is not None else self.scores),
            candidates,
            self.baseline_ms,
            edges=self.edges,
            label=label,
            accuracy=self.accuracy,
        )

    @property
    def full(self) -> dict[str, int]:
        return {g: c[-1] for g, c in self.candidates.items()}

    def cost(self, group: str, keep: int) -> float:
        """Importance removed by keeping ``keep`` channels of ``group``."""
        key = (group, keep)
        if key not in self._cost_cache:
            s = np.sort(self.scores[group])
            self._cost_cache[key] = float(s[: len(s) - keep].sum())
        return self._cost_cache[key]

    def total_cost(self, keep: Mapping[str, int]) -> float:
        return sum(self.cost(g, k) for g, k in keep.items())

    def predict(self, plans: list[Mapping[str, int]]) -> list[float]:
        """Predicted whole-network ms of each plan; every missing LUT point timed in one batch."""
        p = self.predictor
        self.evaluations += len(plans)
        return [p.overhead(s) for s in layer_sums(p.profiler, [p.points(k) for k in plans])]

    def confirm(self, keep: Mapping[str, int], tag: str, rounds: int | None = None) -> tuple[float, float]:
        """(baseline ms, sub-net ms), both measured whole in one interleaved run (the backend's deciding rounds)."""
        p = self.predictor
        path = p.subnet(keep, p.workdir / f"{tag}.onnx")
        base, sub = p.backend.compare([p.workdir / "dense.onnx", path], rounds=rounds or p.backend.deciding_rounds)
        return base.median_ms, sub.median_ms
