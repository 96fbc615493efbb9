"""Depth before width: which residual blocks to remove on the way to a latency budget.

Each removable block (:mod:`trtprune.pruning.blocks`) is scored by what removing it alone costs on the accuracy
proxy (adaptive BatchNorm top-1 on held-out training images, EagleEye) and by the time it saves on the device
(one model per block signature with that block removed, measured with the dense one in one interleaved run:
blocks of one signature are the same layers on the same input). Blocks are taken in order of proxy drop per
millisecond saved while the network, measured whole, stays above the budget; the channel search then closes
the rest of the gap on the shallower network, so the budget is spent on width rather than left unused.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import nn

from trtprune.profiling.predict import export_timed
from trtprune.pruning.blocks import Block, removable_blocks, remove_blocks
from trtprune.searching.plan import Budget
from trtprune.training.proxy import adaptive_bn_metric

log = logging.getLogger(__name__)

SENSITIVITY_IMAGES = 2000  # held-out training images scoring each removal
SENSITIVITY_BATCHES = 10  # batches of 100 re-estimating BatchNorm before each score


@dataclass
class Depth:
    """The blocks chosen for removal and what was measured on the way."""

    removed: list[str] = field(default_factory=list)
    baseline_ms: float | None = None  # the dense network, measured in the same run as measured_ms
    measured_ms: float | None = None  # the network without the removed blocks
    drop: dict[str, float] = field(default_factory=dict)  # proxy points lost by removing each block alone
    saving_ms: dict[str, float] = field(default_factory=dict)  # measured per signature, given per block
    steps: list[dict] = field(default_factory=list)  # each whole-network measurement: blocks removed, ratio
    seconds: float = 0.0

    def channel_budget(self, budget: Budget) -> Budget:
        """The budget left for the channel search on the shallower network, as a fraction of its own latency
        (both measured in one run; the removals stop above the budget, so the fraction is below 1)."""
        if not self.removed:
            return budget
        return Budget(fraction=min(budget.target_ms(self.baseline_ms) / self.measured_ms, 0.999))

    def to_dict(self) -> dict:
        return asdict(self)


def _without(model: nn.Module, names: Iterable[str]) -> nn.Module:
    out = copy.deepcopy(model)
    remove_blocks(out, names)
    return out


class DepthSearch:
    """Chooses blocks to remove from ``model`` (left as it is) toward a budget on ``backend``'s device."""

    def __init__(self, model: nn.Module, input_shape, backend, workdir: str | Path, ignore: Iterable[str] = ()):
        self.model, self.input_shape, self.backend = model, tuple(input_shape), backend
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.blocks: list[Block] = removable_blocks(model, self.input_shape, ignore)
        self._dense_path: Path | None = None
        self.dense_ms: float | None = None

    @property
    def _dense(self) -> Path:
        if self._dense_path is None:
            self._dense_path = self._export(self.model, "depth-dense")
        return self._dense_path

    def _export(self, model: nn.Module, tag: str) -> Path:
        return export_timed(model, self.workdir / f"{tag}.onnx", self.input_shape, self.backend)

    def _measure(self, names: list[str], tag: str) -> tuple[float, float]:
        path = self._export(_without(self.model, names), tag)
        base, sub = self.backend.compare([self._dense, path], rounds=self.backend.deciding_rounds)
        return base.median_ms, sub.median_ms

    def savings(self) -> dict[str, float]:
        """Milliseconds each block saves, measured once per signature (all in one interleaved run); the dense
        model's time of that run is kept in ``dense_ms``."""
        first: dict[str, str] = {}
        for b in self.blocks:
            first.setdefault(b.signature, b.name)
        paths = [self._export(_without(self.model, [n]), f"depth-one{i}") for i, n in enumerate(first.values())]
        timings = self.backend.compare([self._dense, *paths], rounds=self.backend.deciding_rounds)
        self.dense_ms = timings[0].median_ms
        per_signature = {s: timings[0].median_ms - t.median_ms for s, t in zip(first, timings[1:])}
        return {b.name: per_signature[b.signature] for b in self.blocks}

    def sensitivity(self, train, mean, std, task=None) -> dict[str, float]:
        """Proxy points (of the task's metric; top-1 by default) lost by removing each block alone."""

        def proxy(model: nn.Module) -> float:  # changes the model it is given: give it a copy
            return adaptive_bn_metric(
                model, train, mean, std, task, limit=SENSITIVITY_IMAGES, batches=SENSITIVITY_BATCHES
            )

        base = proxy(copy.deepcopy(self.model))
        drop = {}
        for b in self.blocks:
            drop[b.name] = base - proxy(_without(self.model, [b.name]))
            log.info("%-24s | depth    | proxy %+.2f points without it", b.name, -drop[b.name])
        return drop

    def search(self, budget: Budget, train, mean, std, task=None) -> Depth:
        """The longest prefix of the blocks (by proxy drop per ms saved) whose removal, measured, leaves the network
        above ``budget``; the channel search spends the rest."""
        t0 = time.perf_counter()
        if not self.blocks:
            return Depth()
        saving = self.savings()
        drop = self.sensitivity(train, mean, std, task)
        order = sorted(self.blocks, key=lambda b: drop[b.name] / max(saving[b.name], 1e-6))
        names = [b.name for b in order]
        depth = Depth(drop=drop, saving_ms=saving)
        measured: dict[int, tuple[float, float]] = {}

        def above(k: int) -> bool:
            if k not in measured:
                measured[k] = self._measure(names[:k], f"depth{k}")
                base, sub = measured[k]
                depth.steps.append({"removed": k, "baseline_ms": base, "measured_ms": sub, "ratio": sub / base})
                log.info("depth    | %d blocks removed: %.3f of %.3f ms measured (%.3fx)", k, sub, base, sub / base)
            base, sub = measured[k]
            return k == 0 or sub > budget.target_ms(base)

        dense_ms, k, saved = self.dense_ms, 0, 0.0
        measured[0] = (dense_ms, dense_ms)  # nothing removed: the dense model, as the savings' run measured it
        while k < len(names) and dense_ms - saved - saving[names[k]] > budget.target_ms(dense_ms):
            saved += saving[names[k]]
            k += 1  # the first guess, from the per-block savings; measurement decides
        if above(k):
            while k < len(names) and above(k + 1):
                k += 1
        else:
            while not above(k - 1):
                k -= 1
            k -= 1
        depth.removed, (depth.baseline_ms, depth.measured_ms) = names[:k], measured[k]
        depth.seconds = time.perf_counter() - t0
        return depth
