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
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace

import numpy as np
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.latency.base import Backend
from trtprune.log import progress
from trtprune.profiling.layers import Layer, Signature, micro_model, point
from trtprune.profiling.lut import LUT, Entry
from trtprune.profiling.stairs import Stairs, Tolerance, exhaustive, on_multiples, three_point
from trtprune.pruning.prune import ChannelGroup

log = logging.getLogger(__name__)

Point = tuple[Signature, int, int]  # a layer signature at (cin, cout)

# Micro-benchmark protocol: single layers take 5-50 us, so 400 timed runs per point cost ~10 ms. Each
# burst runs in a fresh session (per-session placement effects average out over the rounds). 20 rounds,
# not 10: two exhaustive sweeps of ResNet-56 agreed on 96 % of their stair edges instead of 84-95 %.
# ``span_s``: a batch of few points gets more rounds, so that its runs spread over at least a second.
MICRO = {"rounds": 20, "warmup": 5, "round_ms": 2.0, "max_runs": 20, "renew": True, "span_s": 1.0}
# ``--quick``: a first look in a fraction of the time (5 rounds, no spread), noisier stairs. Its rows are
# kept under their own LUT key (the device's key + "|quick"), so a full profile never reuses them.
QUICK = {"rounds": 5, "warmup": 2, "round_ms": 1.0, "max_runs": 10, "renew": True, "span_s": 0.0}
PROTOCOLS = {"full": MICRO, "quick": QUICK}

# A point counts by a low quantile of all its runs, divided by the same quantile of every reference run
# of the batch: interference on a shared machine only ever adds time, in spells that cover part of a
# batch, so the fast end of the distribution repeats where the median does not. Measured here on
# ResNet-56's stage-3 curves (4 repeats with other work in between, a noisy hour): point-to-point
# differences 0.5-1.4 % with the 5 % quantile over the batch's references, 2.3-3.4 % with per-burst medians
# over the nearest reference bursts. Every latency in the LUT is on that scale.
# It needs a point's runs spread out in time: in a small batch all of a point's bursts fall within a few
# hundred ms, one spell covers them all, and single points came out 5-12 % slow (ResNet-56's stair search
# found 78 % of the exhaustive edges; 97 % with each batch spread over >= 1 s, MICRO's ``span_s``).
QUANTILE = 5  # percent

# The standard candle timed in every batch. Absolute latencies drift by +-15 % from one second to the
# next on a shared machine while ratios inside one interleaved run hold to ~2 %, so every batch is
# rescaled to the reference's first-ever latency on the backend (kept in the LUT).
REFERENCE = (Signature("conv", (3, 3), (1, 1), (1, 1, 1, 1), hw=(16, 16), act="relu"), 32, 32)
REFERENCE_COPIES = 4  # at least; one per 8 points in larger batches
# ... and the canary of a spell that covers a whole batch: once its 5 % quantile came out 17 % above the
# usual (0.0565 vs 0.0483-0.0494 ms in every other batch of a ResNet-56 profile) and the layers beside it
# 32 % slow, so rescaling left them 13 % high. A spell can also spare the reference and slow only some
# kernels (a batch of stage-2 layers came out 3-7 % high beside a normal reference), so a batch also times
# *witnesses*: points already in the LUT of the same signatures as its new ones, nearest in channels. A
# batch whose reference is off its recent latency, or whose witnesses are off their stored values (median),
# by more than SPELL is timed again, up to RETRIES times; then the attempt least off is kept. Witnesses only
# detect: stored values are never rescaled by them (chained corrections drifted by several % here).
SPELL = 0.03  # the reference varied by <= 2.3 % between normal batches, a point by ~0.5 %
RETRIES = 2
WITNESSES = 1  # per signature of the batch's new points


@dataclass(frozen=True)
class GroupLayers:
    group: ChannelGroup
    producers: tuple[Layer, ...]  # layers whose output channels are the group's
    consumers: tuple[Layer, ...]  # layers whose input channels are the group's

    def points(self, c: int) -> list[Point]:
        """The single-layer points that make up the group's latency at ``c`` channels (the other inputs of
        a consumer - a concat's other parts - at their current counts)."""
        g, removed = self.group, self.group.channels - c
        pts = [
            point(p.signature, c if p.signature.depthwise else p.cin - (removed if p.name in g.self_fed else 0), c)
            for p in self.producers
        ]
        return pts + [
            point(q.signature, q.cin - removed * g.fan(q.name), q.cout)
            for q in self.consumers
            if not q.signature.depthwise
        ]


def group_layers(groups: Iterable[ChannelGroup], layers: dict[str, Layer]) -> list[GroupLayers]:
    """Map each channel group to the engine layers whose Cout (producers) or Cin (consumers) it sets; a
    module called more than once is one layer per call."""
    out = []
    for g in groups:
        prods = tuple(layer for n in g.producers for layer in layers.values() if layer.name == n)
        cons = tuple(layer for n in g.consumers for layer in layers.values() if layer.name == n)
        out.append(GroupLayers(g, prods, cons))
    return out


@dataclass(frozen=True)
class Timed:
    """One batch of points timed on one device, on the scale of the reference timed beside them.

    ``ratios[i]`` = (``QUANTILE`` and 90 % quantiles of point i's runs / the ``QUANTILE`` of the reference's
    runs, runs, kernel). The caller rescales by the reference's nominal latency kept in the LUT; ``key``
    names the device that timed them, so rows are never stored under another device's key.
    """

    key: str
    ref_point: str
    ref_ms: float
    ratios: tuple[tuple[float, float, int, str], ...]
    timed: int = 0  # points timed, witnesses and every attempt included
    witness_off: float = 0.0  # median |measured / stored - 1| of the witnesses
    runs: int = 1  # interleaved runs of the backend (one per attempt): one resident-timer start on TensorRT


Witness = tuple[Point, float]  # a point already in the LUT, and its stored ms / the reference's nominal ms


def time_points(
    backend: Backend,
    points: list[Point],
    micro: dict,
    usual_ref_ms: float | None = None,
    witnesses: Sequence[Witness] = (),
) -> Timed:
    """Time points in one interleaved run with copies of the reference and the witnesses (runs wherever the
    device is).

    Each point's runs are divided by the reference's runs timed among them (see ``QUANTILE``), so drift of
    the machine during the run cancels as well as drift between runs. A batch timed during a spell - its
    reference off ``usual_ref_ms`` (the reference's recent latency) or its witnesses off their stored
    values by more than ``SPELL`` - is timed again.
    """
    attempts, offs = [], []
    for _ in range(1 + RETRIES):
        t = _time_once(backend, points, micro, witnesses)
        ref_off = abs(t.ref_ms / usual_ref_ms - 1) if usual_ref_ms else 0.0
        attempts.append(t)
        offs.append(max(ref_off, t.witness_off))
        if offs[-1] <= SPELL:
            break
        log.debug(
            "reference %.1f %% off its usual, witnesses %.1f %% off their stored latency: a spell; timing the "
            "batch again",
            100 * ref_off,
            100 * t.witness_off,
        )
    best = attempts[int(np.argmin(offs))]
    return replace(best, timed=sum(a.timed for a in attempts), runs=len(attempts))


def _time_once(backend: Backend, points: list[Point], micro: dict, witnesses: Sequence[Witness]) -> Timed:
    sig, cin, cout = REFERENCE
    ref = (replace(sig, batch=backend.device.batch), cin, cout)
    timed = [*points, *(p for p, _ in witnesses)]
    copies = max(REFERENCE_COPIES, len(timed) // 8)
    qdq = backend.device.int8_form  # int8 devices run Q/DQ models only, each in its engine's form
    models = [micro_model(*p, qdq=qdq) for p in timed] + [micro_model(*ref, qdq=qdq)] * copies
    bursts = backend.bursts(models, **micro)
    runs = [np.concatenate([b.samples_ms for b in bs]) for bs in bursts]
    ref_ms = float(np.percentile(np.concatenate(runs[len(timed) :]), QUANTILE))
    ratios = [float(np.percentile(x, QUANTILE)) / ref_ms for x in runs[: len(timed)]]
    witness_off = float(np.median([abs(r / s - 1) for r, (_, s) in zip(ratios[len(points) :], witnesses)] or [0.0]))
    out = tuple(
        (r, float(np.percentile(x, 90)) / ref_ms, x.size, backend.kernel(m))
        for r, m, x in zip(ratios, models, runs[: len(points)])
    )
    return Timed(backend.key(), f"{ref[0].key()}|{cin}|{cout}", ref_ms, out, len(timed), witness_off)


def choose_witnesses(points: Sequence[Point], known: Mapping[Point, float], per_signature: int = WITNESSES):
    """Known points to time beside new ``points``: per signature of the new ones, the ``per_signature``
    known points of that signature nearest in (Cin, Cout) to one of them."""
    mine: dict[Signature, list[Point]] = {}
    for p in points:
        mine.setdefault(p[0], []).append(p)
    new, out = set(points), []
    for sig, pts in mine.items():
        near = sorted(
            (k for k in known if k[0] == sig and k not in new),
            key=lambda k, pts=pts: (min(abs(k[1] - c) + abs(k[2] - o) for _, c, o in pts), k[1], k[2]),
        )
        out += [(k, known[k]) for k in near[:per_signature]]
    return out


@dataclass
class Profiler:
    """Measures points through a LUT. ``share=False`` measures every requested point afresh (the
    exhaustive reference of the benchmark); its results are not stored.

    Points are timed by ``backend`` here, or by a ``fleet`` of workers elsewhere (``trtprune.profiling.fleet``):
    anything with ``key()`` and ``time_points(points, micro, usual_ref_ms, witnesses) -> Timed``. The
    profiler is thread-safe: group searches may run in threads (see :func:`profile_groups`); a point two
    threads need at once is timed once, and only this object writes to the LUT.
    """

    backend: Backend | None
    lut: LUT
    share: bool = True
    micro: dict = field(default_factory=lambda: dict(MICRO))
    fleet: object | None = None
    protocol: str = "full"  # a key of PROTOCOLS; any other than "full" replaces ``micro`` and tags the LUT key
    measured: int = 0  # points timed by this profiler
    runs: int = 0  # interleaved runs of the backend those took (batches, and batches timed again in spells)
    retimed: int = 0  # witnesses timed, and points timed again because their batch ran in a spell (see SPELL)
    requested: int = 0  # points asked for, with repeats (what a profiler without sharing would time)
    seconds: float = 0.0  # wall time spent measuring (summed over threads)
    _seen: dict = field(default_factory=dict, repr=False)  # entries already read or timed in this process
    _pending: dict = field(default_factory=dict, repr=False)  # row -> Future of a point being timed
    _refs: list = field(default_factory=list, repr=False)  # the reference's ms in recent batches
    _timed_here: dict = field(default_factory=dict, repr=False)  # Point -> Entry timed by this profiler
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def on(cls, measurer, lut: LUT, **options) -> Profiler:
        """A profiler timing on ``measurer``: a backend here, or a ``trtprune.profiling.fleet.Fleet``."""
        if isinstance(measurer, Backend):
            return cls(measurer, lut, **options)
        return cls(None, lut, fleet=measurer, **options)

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise TrtpruneError(f"unknown profiling protocol '{self.protocol}'", fix=f"use one of {list(PROTOCOLS)}")
        if self.protocol != "full":
            self.micro = dict(PROTOCOLS[self.protocol])

    def device_key(self) -> str:
        """The key of the device that times the points (engine, version, hardware, threads, batch...)."""
        return self.fleet.key() if self.fleet is not None else self.backend.key()

    def key(self) -> str:
        """The LUT key of this profiler's rows: the device's, tagged with the protocol unless it is "full"."""
        return self.device_key() + ("" if self.protocol == "full" else f"|{self.protocol}")

    def _time(self, points: list[Point]) -> list[Entry]:
        """Time points in one interleaved run; values on the LUT's reference scale."""
        key = self.key()
        with self._lock:  # the reference's latency of late in this process, else the LUT's first
            usual = float(np.median(self._refs[-8:])) if self._refs else self.lut.reference_ms(key)
            # witnesses from this profiler's own batches: rows stored days ago may sit a few % off today's
            # machine for some kernels, and would make every batch look like a spell
            scale = self.lut.reference_ms(key)
            known = {p: e.ms / scale for p, e in self._timed_here.items()} if self.share and scale else {}
        witnesses = choose_witnesses(points, known)
        if self.fleet is not None:
            timed = self.fleet.time_points(points, self.micro, usual, witnesses)
        else:
            timed = time_points(self.backend, points, self.micro, usual, witnesses)
        if timed.key != self.device_key():  # a worker on another device (or engine version) never writes here
            raise TrtpruneError(f"a batch was timed on '{timed.key}', not on '{self.device_key()}'; it was not stored")
        with self._lock:
            nominal = self.lut.reference(key, timed.ref_point, timed.ref_ms)
            self._refs.append(timed.ref_ms)
            self.measured += len(points)
            self.retimed += max(0, timed.timed - len(points))
            self.runs += timed.runs
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
        return [e.ms for e in self.entries(points)]

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
                entries = self._time(list(todo.values()))
                new = dict(zip(todo, entries))
                with self._lock:
                    self.lut.put_many(key, new)
                    self._seen.update(new)
                    self._timed_here.update(zip(todo.values(), entries))
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

    def default_method(self) -> str:
        """How stairs are found when nobody says: the three-point search where a point is an engine build
        (TensorRT: seconds to minutes each), else every count (ONNX Runtime: a point is milliseconds, and big
        batches of shared points beat the search's many small ones in wall time - ResNet-56 on an AVX-512
        CPU: 663 points in 21 s against the search's 308 in 82 s, `make bench-profile`)."""
        device = self.fleet.device if self.fleet is not None else self.backend.device
        return "three_point" if device.backend == "tensorrt" else "exhaustive"

    def stairs(self, gl: GroupLayers, tol: Tolerance, method: str = "auto", lo: int = 1) -> Stairs:
        """The group's stairs over counts ``lo..channels``; a group that must keep multiples of ``m`` (grouped
        convs) is searched over the multiples only. ``method``: three_point, exhaustive or auto
        (:meth:`default_method`)."""
        if method == "auto":
            method = self.default_method()
        search = {"three_point": three_point, "exhaustive": exhaustive}[method]
        g = gl.group
        return on_multiples(search, lo, g.channels, g.multiple, lambda counts: self.curve(gl, counts), tol)


def profilable(gls: list[GroupLayers], model: nn.Module) -> tuple[list, dict[str, list[str]]]:
    """The groups with at least one layer the profiler can time, and the conv/linear modules it cannot time
    (not a Conv or Gemm with constant weights in the exported graph), which are left out with a warning."""
    timeable = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    kept, left_out = [], {}
    for gl in gls:
        found = {layer.name for layer in (*gl.producers, *gl.consumers)}
        missing = [n for n in (*gl.group.producers, *gl.group.consumers) if n in timeable and n not in found]
        if missing:
            left_out[gl.group.name] = missing
            log.warning(
                "group %s: %s not found as Conv/Gemm with constant weights in the exported graph: %s",
                gl.group.name,
                ", ".join(missing),
                "profiled without them" if found else "group not profiled",
            )
        if found:
            kept.append(gl)
    if not kept:
        raise TrtpruneError(
            "no channel group of the model has a layer the profiler can time",
            why="the profiler times Conv and Gemm layers with constant weights, found by the torch module names of "
            "their weights in the exported ONNX graph",
            fix="use plain nn.Conv2d / nn.Linear modules whose weights are used as they are",
        )
    return kept, left_out


def profile_groups(
    profiler: Profiler,
    gls: list[GroupLayers],
    tol: Tolerance,
    method: str = "auto",
    parallel: int | None = None,
    desc: str = "profiling groups",
) -> dict[str, Stairs]:
    """Each group's stairs, by group name in the order given; ``parallel`` groups searched at once
    (default: what the profiler's fleet keeps busy, else 1).

    With ``parallel > 1`` (a fleet of workers) each group's search runs in a thread whose measurement
    batches go to whichever worker is free. Ctrl-C stops the threads after their current batch; what
    was stored stays stored.
    """

    if parallel is None:
        parallel = profiler.fleet.parallel if profiler.fleet is not None else 1
    t0, total = time.perf_counter(), len(gls)

    def report(name: str, stairs: Stairs, i: int) -> Stairs:  # a line per group: progress where no bar shows
        log.info(
            "profile   | %-24s | %4d ch | edges %s | %d/%d groups, %d points measured, %.0f s",
            name,
            stairs.hi,
            ", ".join(map(str, stairs.edges[-6:])) + (" ..." if len(stairs.edges) > 6 else ""),
            i,
            total,
            profiler.measured,
            time.perf_counter() - t0,
        )
        return stairs

    if parallel <= 1:
        return {
            gl.group.name: report(gl.group.name, profiler.stairs(gl, tol, method), i + 1)
            for i, gl in enumerate(progress(gls, desc=desc, unit="group"))
        }
    done: dict[str, Stairs] = {}
    pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="trtprune-profile")
    try:
        futures = {pool.submit(profiler.stairs, gl, tol, method): gl.group.name for gl in gls}
        for f in progress(as_completed(futures), total=len(futures), desc=desc, unit="group"):
            done[futures[f]] = report(futures[f], f.result(), len(done) + 1)
    except BaseException:
        if profiler.fleet is not None:
            profiler.fleet.stop()  # threads waiting on a worker give up
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return {gl.group.name: done[gl.group.name] for gl in gls}
