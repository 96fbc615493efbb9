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
the coarsest block grid inside it) and recurses only into halves whose ends differ. An interval with
equal ends is taken as a plateau after *alignment probes*: its interior multiples of 32, 16, 8 and 4,
and the count after an aligned left end, are measured. A probe faster than the plateau (a lower stair
that equal ends hid, e.g. a fallback kernel running 17..19 channels cheaper than the blocked kernel
pads 20 to 32) splits the interval again; a slower probe is a dip, recorded and not searched. Edges
and dips are classified on the measured counts by the same rule as an exhaustive sweep; on a smooth
stretch the recursion measures every count whose neighbours differ beyond tolerance. Unmeasured counts
are estimated by linear interpolation (flat on a plateau). Measurement requests are batched level by
level, so a caller can time each batch in one interleaved run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

ALIGNMENTS = (32, 16, 8, 4)


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
    plateaus: list[tuple[int, int]] = field(default_factory=list)  # (a, b): every count in [a, b] ~ L(b)

    def curve(self) -> dict[int, float]:
        """Every count lo..hi: measured, or interpolated linearly between the nearest measured ones."""
        return interpolate(self.latency, self.lo, self.hi)


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


def _probes(a: int, b: int, alignments: Iterable[int]) -> list[int]:
    """Interior multiples of each alignment (coarsest first); and, after an aligned left end, the next
    count: a blocked kernel pads it up to the next block while a fallback kernel may run it cheaper."""
    alignments = tuple(alignments)
    out: list[int] = []
    for align in alignments:
        for c in range((a // align + 1) * align, b, align):
            if c not in out:
                out.append(c)
    if alignments and a % min(alignments) == 0 and a + 1 < b and a + 1 not in out:
        out.append(a + 1)
    return out


def three_point(
    lo: int,
    hi: int,
    measure: Callable[[list[int]], dict[int, float]],
    tol: Tolerance,
    alignments: Iterable[int] = ALIGNMENTS,
) -> Stairs:
    """Stairs from few measurements: recurse where interval ends differ, probe where they agree.

    ``measure(counts) -> {count: latency}`` is called once per level with every count that level needs.
    """
    alignments = tuple(alignments)
    latency: dict[int, float] = {}

    def need(counts: Iterable[int]) -> None:
        todo = sorted({c for c in counts if c not in latency})
        if todo:
            latency.update(measure(todo))

    need({lo, hi})
    open_intervals = [(lo, hi)] if hi - lo > 1 else []
    plateaus: list[tuple[int, int]] = []
    while open_intervals:
        split, to_probe, counts = [], [], set()
        for a, b in open_intervals:
            if tol.same(latency[a], latency[b]):
                to_probe.append((a, b))
                counts.update(_probes(a, b, alignments))
            else:
                m = _middle(a, b, alignments)
                split.append((a, m, b))
                counts.add(m)
        need(counts)
        open_intervals = []
        for a, m, b in split:
            open_intervals += [(x, y) for x, y in ((a, m), (m, b)) if y - x > 1]
        for a, b in to_probe:
            # a probe faster than the plateau hides a lower stair: search the pieces again; a slower one
            # is a dip (recorded, never an edge), which needs no search
            inner = [
                c for c in _probes(a, b, alignments) if latency[c] < latency[b] and not tol.same(latency[c], latency[b])
            ]
            if not inner:
                plateaus.append((a, b))
                continue
            cuts = [a, *sorted(inner), b]
            open_intervals += [(x, y) for x, y in zip(cuts, cuts[1:]) if y - x > 1]
    edges, dips = classify(latency, tol)  # on measured counts only: an edge is a count seen to be fast
    return Stairs(lo, hi, latency, edges, dips, sorted(plateaus))


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
