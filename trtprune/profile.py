"""Per-layer profiling: a group's latency curve from single-layer measurements kept in the LUT.

A channel group's count ``c`` is the output count of its producers and the input count of its
consumers, so its curve is ``L(c) = sum_p L_p(cin_p, c) + sum_q L_q(c, cout_q)`` with every other
count at its current width. Each term is a layer signature at a (Cin, Cout) point; identical points -
the nine identical blocks of a ResNet stage, or the same layer in another model or run - are looked
up in the LUT and measured once (*latency sharing*). Points missing from the LUT are measured in one
interleaved run per batch and stored at once, so an interrupted profile resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from .latency.base import Backend
from .layers import Layer, Signature, micro_model
from .lut import LUT, Entry
from .prune import ChannelGroup
from .stairs import Stairs, Tolerance, exhaustive, three_point

log = logging.getLogger(__name__)

Point = tuple[Signature, int, int]  # a layer signature at (cin, cout)

# Micro-benchmark protocol: single layers take 5-50 us, so 200 timed runs per point cost ~5 ms. Each
# burst runs in a fresh session (per-session placement effects average out over the rounds).
MICRO = {"rounds": 10, "warmup": 5, "round_ms": 2.0, "max_runs": 20, "renew": True}

# The standard candle timed in every batch. Absolute latencies drift by +-15 % from one second to the
# next on a shared machine while ratios inside one interleaved run hold to ~2 %, so every batch is
# rescaled to the reference's first-ever latency on the backend (kept in the LUT).
REFERENCE = (Signature("conv", (3, 3), (1, 1), (1, 1, 1, 1), hw=(16, 16), act="relu"), 32, 32)
REFERENCE_COPIES = 4  # at least; one per 8 points in larger batches
NEAREST = 4  # reference bursts nearest in time that scale a burst


@dataclass(frozen=True)
class GroupLayers:
    group: ChannelGroup
    producers: tuple[Layer, ...]  # layers whose output channels are the group's
    consumers: tuple[Layer, ...]  # layers whose input channels are the group's

    def points(self, c: int) -> list[Point]:
        """The single-layer points that make up the group's latency at ``c`` channels."""
        pts = [(p.signature, c if p.signature.depthwise else p.cin, c) for p in self.producers]
        return pts + [(q.signature, c, q.cout) for q in self.consumers if not q.signature.depthwise]


def group_layers(groups: Iterable[ChannelGroup], layers: dict[str, Layer]) -> list[GroupLayers]:
    """Map each channel group to the engine layers whose Cout (producers) or Cin (consumers) it sets."""
    out = []
    for g in groups:
        prods = tuple(layers[n] for n in g.producers if n in layers)
        cons = tuple(layers[n] for n in g.consumers if n in layers)
        out.append(GroupLayers(g, prods, cons))
    return out


@dataclass
class Profiler:
    """Measures points through a LUT. ``share=False`` measures every requested point afresh (the
    exhaustive reference of the benchmark); its results are not stored."""

    backend: Backend
    lut: LUT
    share: bool = True
    micro: dict = field(default_factory=lambda: dict(MICRO))
    measured: int = 0  # points timed by this profiler
    requested: int = 0  # points asked for, with repeats (what a profiler without sharing would time)
    seconds: float = 0.0  # wall time spent measuring
    _seen: dict = field(default_factory=dict, repr=False)  # entries already read or timed in this process

    def _time(self, points: list[Point]) -> list[Entry]:
        """Time points in one interleaved run with copies of the reference, on the reference scale.

        Each burst of a point is divided by the reference bursts nearest to it in time, so drift of
        the machine within the run cancels as well as drift between runs.
        """
        sig, cin, cout = REFERENCE
        ref = (replace(sig, batch=self.backend.device.batch), cin, cout)
        copies = max(REFERENCE_COPIES, len(points) // 8)
        models = [micro_model(*p) for p in points] + [micro_model(*ref)] * copies
        bursts = self.backend.bursts(models, **self.micro)
        ref_bursts = sorted((b.start_s, b.median_ms) for bs in bursts[len(points) :] for b in bs)
        ref_t = np.array([t for t, _ in ref_bursts])
        ref_ms = np.array([m for _, m in ref_bursts])
        nominal = self.lut.reference(self.backend.key(), f"{ref[0].key()}|{cin}|{cout}", float(np.median(ref_ms)))
        out = []
        for model, bs in zip(models, bursts[: len(points)]):
            ratios = [b.median_ms / np.median(ref_ms[np.argsort(np.abs(ref_t - b.start_s))[:NEAREST]]) for b in bs]
            out.append(
                Entry(
                    float(np.median(ratios)) * nominal,
                    float(np.percentile(ratios, 90)) * nominal,
                    sum(len(b.samples_ms) for b in bs),
                    self.backend.kernel(model),
                )
            )
        self.measured += len(points)
        return out

    def entries(self, points: list[Point]) -> list[Entry]:
        """The LUT entry of each point (on the LUT's scale), measuring what the LUT does not hold."""
        self.requested += len(points)
        t0 = time.perf_counter()
        result = self._shared(points) if self.share else self._time(points)
        self.seconds += time.perf_counter() - t0
        return result

    def latencies(self, points: list[Point]) -> list[float]:
        """Milliseconds of each point (see ``entries``)."""
        return [e.median_ms for e in self.entries(points)]

    def _shared(self, points: list[Point]) -> list[Entry]:
        """Look points up (in memory, then in the LUT); time the missing ones in one batch, store them."""
        key = self.backend.key()
        rows = [(s.key(), ci, co) for s, ci, co in points]
        missing = [r for r in rows if r not in self._seen]
        if missing:
            self._seen.update(self.lut.get_many(key, missing))
            todo = {r: p for r, p in zip(rows, points) if r not in self._seen}
            if todo:
                new = dict(zip(todo, self._time(list(todo.values()))))
                self.lut.put_many(key, new)
                self._seen.update(new)
        return [self._seen[r] for r in rows]

    def curve(self, gl: GroupLayers, counts: list[int]) -> dict[int, float]:
        """The group's latency (sum of its layers) at each count, measured in one batch."""
        points = [p for c in counts for p in gl.points(c)]
        lat = self.latencies(points)
        out, i = {}, 0
        for c in counts:
            k = len(gl.points(c))
            out[c] = sum(lat[i : i + k])
            i += k
        return out

    def stairs(self, gl: GroupLayers, tol: Tolerance, method: str = "three_point", lo: int = 1) -> Stairs:
        search = {"three_point": three_point, "exhaustive": exhaustive}[method]
        return search(lo, gl.group.channels, lambda counts: self.curve(gl, counts), tol)
