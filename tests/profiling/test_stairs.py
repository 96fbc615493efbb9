"""Stair discovery on synthetic curves, where the right answer is known exactly."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trtprune.profiling.stairs import Tolerance, agreement, classify, exhaustive, interpolate, three_point

TOL = Tolerance(rel=0.01, abs_ms=0.0)


def ort_like(c: int, period: int = 16, step: float = 0.2, dip: float = 0.25) -> float:
    """Output channels padded to ``period`` (a stair per block); input counts that are not a multiple
    of 4 above one block run a slower kernel (a dip)."""
    lat = 1.0 + step * math.ceil(c / period)
    if c > period and c % 4:
        lat *= 1 + dip
    return lat / 1000


class Counter:
    def __init__(self, fn):
        self.fn, self.points, self.calls = fn, 0, 0

    def __call__(self, counts):
        self.calls += 1
        self.points += len(counts)
        return {c: self.fn(c) for c in counts}


def test_plain_staircase():
    m = Counter(lambda c: ort_like(c, dip=0.0))
    s = three_point(1, 64, m, TOL)
    assert s.edges == (16, 32, 48, 64)
    assert s.dips == ()
    assert m.points <= 30  # of 64: ends, bisection down to each step, and probes of each plateau
    assert s.edges == exhaustive(1, 64, Counter(lambda c: ort_like(c, dip=0.0)), TOL).edges


def test_dips_are_never_edges_and_the_search_agrees_with_the_sweep():
    ref = exhaustive(1, 64, Counter(ort_like), TOL)
    assert ref.edges == (16, 32, 48, 64)
    assert ref.dips == tuple(c for c in range(17, 64) if c % 4)  # slower than the next multiple of 16
    m = Counter(ort_like)
    s = three_point(1, 64, m, TOL)
    assert s.edges == ref.edges
    assert set(s.dips) <= set(ref.dips)
    assert m.points <= 32  # dips are seen by probes, not searched


def test_a_smooth_slope_makes_every_count_an_edge():
    fn = lambda c: (0.5 + 0.03 * c if c <= 16 else 1.2) / 1000  # noqa: E731  (3 % per count, then a stair)
    ref = exhaustive(1, 32, Counter(fn), TOL)
    assert ref.edges == (*range(1, 17), 32)
    m = Counter(fn)
    s = three_point(1, 32, m, TOL)
    assert s.edges == ref.edges
    # the slope is one segment: its ends, middle and one confirmation, the rest interpolated
    assert s.slopes == [(1, 16)] and s.interpolated() == [c for c in range(2, 16) if c not in (7, 8)]
    assert m.points == 9  # and 17, 20, 24, 25, 32: the plateau above
    assert s.curve()[4] == pytest.approx(fn(4))  # a line is exact on a line


def test_stairs_whose_tops_lie_on_a_line_are_not_taken_for_a_slope():
    fn = lambda c: (1.0 + 0.25 * math.ceil(c / 8)) / 1000  # noqa: E731  (tops at 8, 16, 24, 32 on one line)
    s = three_point(8, 32, Counter(fn), TOL)
    assert s.slopes == [] and s.edges == exhaustive(8, 32, Counter(fn), TOL).edges == (8, 16, 24, 32)


def test_noise_below_tolerance_changes_nothing():
    rng = np.random.default_rng(0)
    noise = {c: 1 + rng.uniform(-0.004, 0.004) for c in range(1, 65)}
    fn = lambda c: ort_like(c) * noise[c]  # noqa: E731
    assert three_point(1, 64, Counter(fn), TOL).edges == exhaustive(1, 64, Counter(fn), TOL).edges == (16, 32, 48, 64)


def test_equal_ends_hiding_a_faster_aligned_count_are_probed():
    fn = lambda c: 0.008 if 17 <= c <= 32 else 0.010  # noqa: E731  (equal ends, a faster middle)
    s = three_point(1, 64, Counter(fn), TOL)
    assert s.edges == (32, 64) == exhaustive(1, 64, Counter(fn), TOL).edges
    assert 16 in s.dips


def test_each_level_is_one_batch():
    m = Counter(ort_like)
    three_point(1, 64, m, TOL)
    assert m.calls <= 8  # log2(64) levels plus the ends


def test_classify_rules():
    lat = {1: 1.0, 2: 1.5, 3: 3.0, 4: 2.0, 5: 2.005}
    edges, dips = classify(lat, TOL)
    assert edges == (1, 2, 5)  # 4 is within 1 % of 5: the same stair, 5 is kept
    assert dips == (3,)
    assert classify({7: 1.0}, TOL) == ((7,), ())


def test_interpolation_and_agreement():
    assert interpolate({1: 1.0, 5: 2.0}, 1, 5) == {1: 1.0, 2: 1.25, 3: 1.5, 4: 1.75, 5: 2.0}
    assert agreement([16, 32, 40], [16, 32, 48, 64]) == 0.5
    assert agreement([], []) == 1.0


@st.composite
def staircases(draw):
    """Random engine-like curves: a block size, random stair heights, optional dips, and optionally
    counts just above a block that a fallback kernel runs cheaper than the padded blocked kernel."""
    period = draw(st.sampled_from([4, 8, 16, 32]))
    hi = draw(st.integers(1, 6)) * period + draw(st.sampled_from([0, 0, 0, 3]))
    steps = draw(st.lists(st.floats(0.05, 0.6), min_size=hi // period + 2, max_size=hi // period + 2))
    dip = draw(st.sampled_from([0.0, 0.1, 0.3]))
    fallback = draw(st.booleans())  # just above a block, counts off the 4-grid run a cheaper kernel
    level = np.cumsum([1.0] + steps)

    def fn(c):
        block = math.ceil(c / period)
        lat = level[block]
        if fallback and period >= 8 and c > period and c % 4 and c % period < 4:
            return float(level[block - 1]) * 1.02 / 1000  # a little above the block below: an edge
        if dip and c > period and c % 4:
            lat *= 1 + dip
        return float(lat) / 1000

    return hi, fn


@settings(max_examples=150, deadline=None)
@given(staircases())
def test_the_search_finds_exactly_the_exhaustive_edges(case):
    hi, fn = case
    ref = exhaustive(1, hi, Counter(fn), TOL)
    m = Counter(fn)
    s = three_point(1, hi, m, TOL)
    assert s.edges == ref.edges
    assert set(s.dips) <= set(ref.dips)
    assert m.points <= hi
