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
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import numpy as np

from .errors import TrtpruneError
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


@dataclass(frozen=True)
class Timed:
    """One batch of points timed on one device, on the scale of the reference timed beside them.

    ``ratios[i]`` = (median, p90 of point i's bursts / nearest reference bursts, runs, kernel). The
    caller rescales by the reference's nominal latency kept in the LUT; ``key`` names the device that
    timed them, so rows are never stored under another device's key.
    """

    key: str
    ref_point: str
    ref_ms: float
    ratios: tuple[tuple[float, float, int, str], ...]


def time_points(backend: Backend, points: list[Point], micro: dict) -> Timed:
    """Time points in one interleaved run with copies of the reference (runs wherever the device is).

    Each burst of a point is divided by the reference bursts nearest to it in time, so drift of the
    machine within the run cancels as well as drift between runs.
    """
    sig, cin, cout = REFERENCE
    ref = (replace(sig, batch=backend.device.batch), cin, cout)
    copies = max(REFERENCE_COPIES, len(points) // 8)
    models = [micro_model(*p) for p in points] + [micro_model(*ref)] * copies
    bursts = backend.bursts(models, **micro)
    ref_bursts = sorted((b.start_s, b.median_ms) for bs in bursts[len(points) :] for b in bs)
    ref_t = np.array([t for t, _ in ref_bursts])
    ref_ms = np.array([m for _, m in ref_bursts])
    ratios = []
    for model, bs in zip(models, bursts[: len(points)]):
        r = [b.median_ms / np.median(ref_ms[np.argsort(np.abs(ref_t - b.start_s))[:NEAREST]]) for b in bs]
        n = sum(len(b.samples_ms) for b in bs)
        ratios.append((float(np.median(r)), float(np.percentile(r, 90)), n, backend.kernel(model)))
    return Timed(backend.key(), f"{ref[0].key()}|{cin}|{cout}", float(np.median(ref_ms)), tuple(ratios))


@dataclass
class Profiler:
    """Measures points through a LUT. ``share=False`` measures every requested point afresh (the
    exhaustive reference of the benchmark); its results are not stored.

    Points are timed by ``backend`` here, or by a ``fleet`` of workers elsewhere (``trtprune.fleet``):
    anything with ``key()`` and ``time_points(points, micro) -> Timed``. The profiler is thread-safe:
    group searches may run in threads (see :func:`profile_groups`); a point two threads need at once
    is timed once, and only this object writes to the LUT.
    """

    backend: Backend | None
    lut: LUT
    share: bool = True
    micro: dict = field(default_factory=lambda: dict(MICRO))
    fleet: object | None = None
    measured: int = 0  # points timed by this profiler
    requested: int = 0  # points asked for, with repeats (what a profiler without sharing would time)
    seconds: float = 0.0  # wall time spent measuring (summed over threads)
    _seen: dict = field(default_factory=dict, repr=False)  # entries already read or timed in this process
    _pending: dict = field(default_factory=dict, repr=False)  # row -> Future of a point being timed
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def on(cls, measurer, lut: LUT, **options) -> Profiler:
        """A profiler timing on ``measurer``: a backend here, or a ``trtprune.fleet.Fleet``."""
        if isinstance(measurer, Backend):
            return cls(measurer, lut, **options)
        return cls(None, lut, fleet=measurer, **options)

    def key(self) -> str:
        return self.fleet.key() if self.fleet is not None else self.backend.key()

    def _time(self, points: list[Point]) -> list[Entry]:
        """Time points in one interleaved run; values on the LUT's reference scale."""
        if self.fleet is not None:
            timed = self.fleet.time_points(points, self.micro)
        else:
            timed = time_points(self.backend, points, self.micro)
        key = self.key()
        if timed.key != key:  # a worker on another device (or engine version) never writes under this key
            raise TrtpruneError(f"a batch was timed on '{timed.key}', not on '{key}'; it was not stored")
        with self._lock:
            nominal = self.lut.reference(key, timed.ref_point, timed.ref_ms)
            self.measured += len(points)
        return [Entry(m * nominal, p90 * nominal, n, kernel) for m, p90, n, kernel in timed.ratios]

    def entries(self, points: list[Point]) -> list[Entry]:
        """The LUT entry of each point (on the LUT's scale), measuring what the LUT does not hold."""
        t0 = time.perf_counter()
        with self._lock:
            self.requested += len(points)
        result = self._shared(points) if self.share else self._time(points)
        with self._lock:
            self.seconds += time.perf_counter() - t0
        return result

    def latencies(self, points: list[Point]) -> list[float]:
        """Milliseconds of each point (see ``entries``)."""
        return [e.median_ms for e in self.entries(points)]

    def _shared(self, points: list[Point]) -> list[Entry]:
        """Look points up (in memory, then in the LUT); time the missing ones in one batch, store them.

        A point another thread is timing right now is waited for, not timed twice.
        """
        key = self.key()
        rows = [(s.key(), ci, co) for s, ci, co in points]
        with self._lock:
            missing = [r for r in rows if r not in self._seen]
            if missing:
                self._seen.update(self.lut.get_many(key, missing))
            waits = {r: self._pending[r] for r in rows if r not in self._seen and r in self._pending}
            todo = {r: p for r, p in zip(rows, points) if r not in self._seen and r not in self._pending}
            mine = {r: Future() for r in todo}
            self._pending.update(mine)
        try:
            if todo:
                new = dict(zip(todo, self._time(list(todo.values()))))
                with self._lock:
                    self.lut.put_many(key, new)
                    self._seen.update(new)
        except BaseException as e:
            for f in mine.values():
                f.set_exception(e)
            raise
        else:
            for f in mine.values():
                f.set_result(None)
        finally:
            with self._lock:
                for r in mine:
                    self._pending.pop(r, None)
        for f in waits.values():
            f.result()  # the other thread's error, if it failed
        with self._lock:
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


def profile_groups(
    profiler: Profiler,
    gls: list[GroupLayers],
    tol: Tolerance,
    method: str = "three_point",
    parallel: int | None = None,
    desc: str = "profiling groups",
) -> dict[str, Stairs]:
    """Each group's stairs, by group name in the order given; ``parallel`` groups searched at once
    (default: what the profiler's fleet keeps busy, else 1).

    With ``parallel > 1`` (a fleet of workers) each group's search runs in a thread whose measurement
    batches go to whichever worker is free. Ctrl-C stops the threads after their current batch; what
    was stored stays stored.
    """
    from .log import progress

    if parallel is None:
        parallel = profiler.fleet.parallel if profiler.fleet is not None else 1
    if parallel <= 1:
        return {gl.group.name: profiler.stairs(gl, tol, method) for gl in progress(gls, desc=desc, unit="group")}
    done: dict[str, Stairs] = {}
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="trtprune-profile")
    try:
        futures = {pool.submit(profiler.stairs, gl, tol, method): gl.group.name for gl in gls}
        for f in progress(as_completed(futures), total=len(futures), desc=desc, unit="group"):
            done[futures[f]] = f.result()
    except BaseException:
        if profiler.fleet is not None:
            profiler.fleet.stop()  # threads waiting on a worker give up
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return {gl.group.name: done[gl.group.name] for gl in gls}
