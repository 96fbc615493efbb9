"""Stair-step discovery on a latency curve L(c) over channel counts c = lo..hi (pure: no I/O).

Definitions, used identically for exhaustive sweeps and for the three-point search:

* two latencies are *the same* when they differ by at most ``tol(a, b) = max(rel * max(a, b), abs_ms)``;
* walking down from ``hi`` (always an edge), ``c`` is an **edge** when it is faster than the stair of
  the last edge beyond tolerance: the largest count of a new, lower stair. Edges are the counts worth
  keeping: every other count has an edge at least as large and at least as fast (within tolerance). On
  a smooth slope edges fall every ``tol`` of latency; on stairs, on the last count before each step;
* ``c`` is a **dip** when it is slower than some larger count beyond tolerance: a count the engine runs
  badly (e.g. input channels that are not a multiple of the vector block), never to be chosen.

The three-point search (LOCP, Zhang et al. 2023) measures an interval's two ends and its middle (on
the coarsest block grid inside it) and recurses where the curve is not yet explained. On a TensorRT
device a point is an engine build, so the search spends as few counts as the three shapes an interval
can have allow:

* **slope**: the ends rise by more than a tolerance per count and the middle lies on the line between
  them (within ``SLOPE_FIT`` tolerances). Below a
  vector block every count is an edge (ResNet-56 on an AVX-512 CPU: 1..13 of 16, 32 and 64 channels),
  and measuring them one by one cost half of all points. A slope is taken as one segment: its counts are
  interpolated, and they are edges or not by the same rule as measured ones. Periodic stairs whose tops
  fall on both ends and the middle also look straight (and random stair heights can line up), so a
  slope is accepted only after a *confirmation* count just before the middle: on a slope it is on the
  line and faster than the middle (every count is an edge), on stairs it is on the middle's stair;
* **step** (the middle as slow as the right end): the rise is in (a, m]; block quantization puts it
  right after ``a``. The piece (a, m) is probed at ``a + 1`` and at every interior block multiple, and
  searched again only where a probe is faster than ``L(m)``;
* **plateau** (equal ends): interior counts are taken to be as slow as the right end, or slower (dips);
  a plateau wider than two 4-blocks is probed at its interior multiples of the coarsest block that has
  one, and after a multiple of ``FALLBACK_AFTER`` at the next count (a fallback kernel may run 17..19
  channels cheaper than the blocked kernel pads 20 to 32). A faster probe splits the interval again.

Edges and dips are classified by the same rule as an exhaustive sweep, on the measured counts and the
interpolated counts of slopes (a slope never makes a dip). Measurement requests are batched level by
level, so a caller can time each batch in one interleaved run. What this buys and costs on ResNet-56 is
measured by ``make bench-profile`` (docs/benchmarks.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

ALIGNMENTS = (32, 16, 8, 4)
SLOPE_FIT = 1.5  # a count is on a line when within 1.5 tolerances of it (measured noise ~0.5-1 %)
FALLBACK_AFTER = 4  # plateaus are probed at the count after a multiple of this (the finest block)


@dataclass(frozen=True)
class Tolerance:
    rel: float = 0.01  # relative: fraction of the larger latency (measured noise is ~0.5-1.5 %)
    abs_ms: float = 0.0002  # absolute floor (0.2 us): timer and scheduling noise on tiny layers

    def same(self, a: float, b: float) -> bool:
        return abs(a - b) <= max(self.rel * max(a, b), self.abs_ms)


@dataclass
class Stairs:
    lo: int
    hi: int
    latency: dict[int, float]  # measured points
    edges: tuple[int, ...] = ()  # ascending
    dips: tuple[int, ...] = ()  # ascending
    plateaus: list[tuple[int, int]] = field(default_factory=list)  # (a, b): counts inside at L(b) or slower
    slopes: list[tuple[int, int]] = field(default_factory=list)  # (a, b): counts inside on the line a..b

    def curve(self) -> dict[int, float]:
        """Every count lo..hi: measured; inside a plateau at its right end's latency; elsewhere interpolated
        linearly between the nearest measured counts."""
        out = interpolate(self.latency, self.lo, self.hi)
        for a, b in self.plateaus:
            out.update({c: self.latency[b] for c in range(a + 1, b) if c not in self.latency})
        return out

    def interpolated(self) -> list[int]:
        """The counts whose latency (and edge) comes from a slope's line, not from a measurement."""
        return sorted(c for a, b in self.slopes for c in range(a + 1, b) if c not in self.latency)


def interpolate(latency: dict[int, float], lo: int, hi: int) -> dict[int, float]:
    known = sorted(latency)
    out = {}
    for a, b in zip(known, known[1:]):
        for c in range(a, b):
            out[c] = latency[a] + (latency[b] - latency[a]) * (c - a) / (b - a)
    out[known[-1]] = latency[known[-1]]
    return {c: v for c, v in out.items() if lo <= c <= hi}


def classify(latency: dict[int, float], tol: Tolerance) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Edges and dips of a curve, by the definitions above."""
    edges, dips = [], []
    level = best = None  # latency of the last edge's stair; fastest among larger counts
    for c in sorted(latency, reverse=True):
        lat = latency[c]
        if level is None or (lat < level and not tol.same(lat, level)):
            edges.append(c)
            level = lat
        elif lat > best and not tol.same(lat, best):
            dips.append(c)
        best = lat if best is None else min(best, lat)
    return tuple(sorted(edges)), tuple(sorted(dips))


def exhaustive(lo: int, hi: int, measure: Callable[[list[int]], dict[int, float]], tol: Tolerance) -> Stairs:
    """Every count measured: the reference the search is judged against."""
    latency = measure(list(range(lo, hi + 1)))
    edges, dips = classify(latency, tol)
    return Stairs(lo, hi, latency, edges, dips, [])


def _probes(a: int, b: int, step: bool, alignments: tuple[int, ...]) -> list[int]:
    """Counts that could hide a lower stair in (a, b): of a step, every interior block multiple; of a
    plateau wider than two finest blocks, the interior multiples of the coarsest alignment that has any;
    and the count after ``a`` (after a step's left end always; after a plateau's when ``a`` is a multiple
    of FALLBACK_AFTER)."""
    out: list[int] = []
    if step:  # every interior block multiple: a rise can hide a stair top on any of them
        out = sorted({c for align in alignments for c in range((a // align + 1) * align, b, align)})
    elif b - a > 2 * min(alignments, default=4):
        for align in alignments:
            out = list(range((a // align + 1) * align, b, align))
            if out:
                break
    if (step or a % FALLBACK_AFTER == 0) and a + 1 < b and a + 1 not in out:
        out.append(a + 1)
    return out


def three_point(
    lo: int,
    hi: int,
    measure: Callable[[list[int]], dict[int, float]],
    tol: Tolerance,
    alignments: Iterable[int] = ALIGNMENTS,
) -> Stairs:
    """Stairs from few measurements: an interval is a slope, a step or a plateau (see the module's text).

    ``measure(counts) -> {count: latency}`` is called once per level with every count that level needs.
    """
    alignments = tuple(alignments)
    lat: dict[int, float] = {}

    def need(counts: Iterable[int]) -> None:
        todo = sorted({c for c in counts if c not in lat})
        if todo:
            lat.update(measure(todo))

    def faster(x: int, y: int) -> bool:  # x faster than y beyond tolerance
        return lat[x] < lat[y] and not tol.same(lat[x], lat[y])

    def on_line(a: int, b: int, x: int) -> bool:
        if not lat[b] - lat[a] > (b - a) * max(tol.rel * lat[b], tol.abs_ms):
            return False  # a slope is a rise of more than a tolerance per count: every count on it is an edge
        line = lat[a] + (lat[b] - lat[a]) * (x - a) / (b - a)
        return abs(lat[x] - line) <= max(SLOPE_FIT * tol.rel * max(lat[x], line), tol.abs_ms)

    need({lo, hi})
    queue: list[tuple[str, int, int]] = [("open", lo, hi)]
    plateaus: list[tuple[int, int]] = []
    slopes: list[tuple[int, int]] = []
    while queue:
        work, counts = [], set()
        for kind, a, b in queue:
            if b - a <= 1:
                continue
            if kind == "confirm":
                xs = [_middle(a, b, alignments) - 1]
            elif kind == "open" and faster(a, b):
                kind, xs = "rise", [_middle(a, b, alignments)]
            else:  # a step or a plateau: interior at L(b) or slower unless a probe is faster
                kind, xs = "flat", _probes(a, b, faster(a, b), alignments)
            work.append((kind, a, b, xs))
            counts.update(xs)
        need(counts)
        queue = []
        for kind, a, b, xs in work:
            if kind == "confirm":
                m = _middle(a, b, alignments)
                if on_line(a, b, m - 1) and faster(m - 1, m):
                    slopes.append((a, b))
                else:
                    queue += [("open", a, m), ("open", m, b)]
            elif kind == "rise":
                m = xs[0]
                if faster(a, m) and faster(m, b) and on_line(a, b, m):  # on a slope, distinct from both ends
                    if m - 1 > a and not (m - 1 in lat and faster(m - 1, m)):
                        queue.append(("confirm", a, b))
                    else:
                        slopes.append((a, b))
                elif not faster(m, b):  # the middle as slow as the right end: the rise is in (a, m]
                    queue += [("flat", a, m), ("flat", m, b)]
                elif not faster(a, m):  # the left end as slow as the middle: the rise is in (m, b)
                    queue += [("flat", a, m), ("open", m, b)]
                else:
                    queue += [("open", a, m), ("open", m, b)]
            else:
                inner = sorted(c for c in xs if faster(c, b))
                if not inner:
                    plateaus.append((a, b))
                    continue
                cuts = [a, *inner, b]
                queue += [("open", x, y) for x, y in zip(cuts, cuts[1:])]
    curve = dict(lat)
    for a, b in slopes:
        for c, v in interpolate({c: v for c, v in lat.items() if a <= c <= b}, a, b).items():
            curve.setdefault(c, v)
    edges, dips = classify(curve, tol)
    return Stairs(lo, hi, lat, edges, dips, sorted(plateaus), sorted(slopes))


def on_multiples(
    search: Callable[..., Stairs],
    lo: int,
    hi: int,
    multiple: int,
    measure: Callable[[list[int]], dict[int, float]],
    tol: Tolerance,
) -> Stairs:
    """``search`` over the multiples of ``multiple`` in ``lo..hi`` only (a grouped conv keeps a multiple of its
    groups): the search sees units, ``measure`` and the result see channel counts."""
    m = multiple
    if m == 1:
        return search(lo, hi, measure, tol)

    def units(us: list[int]) -> dict[int, float]:
        got = measure([u * m for u in us])
        return {u: got[u * m] for u in us}

    s = search(max(1, math.ceil(lo / m)), hi // m, units, tol)
    scale = lambda counts: tuple(c * m for c in counts)  # noqa: E731
    return Stairs(
        s.lo * m,
        s.hi * m,
        {c * m: v for c, v in s.latency.items()},
        scale(s.edges),
        scale(s.dips),
        [(a * m, b * m) for a, b in s.plateaus],
        [(a * m, b * m) for a, b in s.slopes],
    )


def _middle(a: int, b: int, alignments: tuple[int, ...]) -> int:
    """The interior count nearest the middle on the coarsest alignment grid that has one: midpoints on
    block multiples land on stair edges and avoid dips."""
    for align in (*alignments, 2, 1):
        inside = range((a // align + 1) * align, b, align)
        if len(inside):
            return min(inside, key=lambda c: (abs(2 * c - a - b), c))
    raise ValueError(f"no count strictly between {a} and {b}")


def agreement(found: Iterable[int], reference: Iterable[int]) -> float:
    """Fraction of the reference edges that were found identically."""
    reference = set(reference)
    return len(reference & set(found)) / len(reference) if reference else 1.0
