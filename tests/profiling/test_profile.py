"""Per-layer profiling, latency sharing and prediction, on the fake engine (exact, no hardware)."""

import onnx
import pytest

from trtprune.deploy.export import onnx_from_torch
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.latency.base import Backend, Burst
from trtprune.latency.devices import Device
from trtprune.latency.fake import model_ms
from trtprune.profiling.layers import Signature, layers_of, micro_model
from trtprune.profiling.lut import LUT
from trtprune.profiling.predict import Overhead, Predictor
from trtprune.profiling.profile import MICRO, REFERENCE, RETRIES, Profiler, choose_witnesses, group_layers, time_points
from trtprune.profiling.stairs import Tolerance
from trtprune.pruning.prune import GroupPruner, uniform_plan
from trtprune.sources.models import build_model

FAKE = Device("fake-test", "fake")
SHAPE = (3, 32, 32)


@pytest.fixture(scope="module")
def r20(tmp_path_factory):
    path = tmp_path_factory.mktemp("p") / "r20.onnx"
    model = build_model("resnet20")
    onnx_from_torch(model, path, SHAPE)
    groups = GroupPruner(model, SHAPE).groups()
    return groups, layers_of(onnx.load(str(path)))


def test_every_group_maps_to_its_layers(r20):
    groups, layers = r20
    gls = {gl.group.name: gl for gl in group_layers(groups, layers)}
    internal = gls["layer2.1.conv1"]
    assert [p.name for p in internal.producers] == ["layer2.1.conv1"]
    assert [q.name for q in internal.consumers] == ["layer2.1.conv2"]
    stream = gls["layer3.0.conv2"]
    assert {q.name for q in stream.consumers} == {"layer3.1.conv1", "layer3.2.conv1", "linear"}
    assert len(stream.points(10)) == 3 + 3  # three producers at cout 10, three consumers at cin 10


def test_identical_blocks_are_measured_once_and_again_never(r20, tmp_path):
    groups, layers = r20
    gls = group_layers(groups, layers)
    with get_backend(FAKE) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        first = Profiler(backend, lut)
        curves = [first.curve(gl, list(range(1, gl.group.channels + 1))) for gl in gls]
        # layer1.1 and layer1.2 are the same shapes as layer1.0: their curves come from the LUT
        assert curves[2] == curves[3]
        assert first.measured < first.requested / 2
        again = Profiler(backend, lut)  # a second run, another model, the same layers: nothing to time
        for gl in gls:
            again.curve(gl, list(range(1, gl.group.channels + 1)))
        assert again.measured == 0 and again.requested > 0
        assert lut.count(backend.key()) == first.measured


def test_the_stair_search_finds_the_fake_engines_blocks(r20, tmp_path):
    groups, layers = r20
    gl = next(g for g in group_layers(groups, layers) if g.group.name == "layer3.1.conv1")
    with get_backend(FAKE) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        fast = Profiler(backend, lut).stairs(gl, Tolerance(), "three_point")
        full = Profiler(backend, lut, share=False).stairs(gl, Tolerance(), "exhaustive")
    assert fast.edges == full.edges
    assert {16, 32, 48, 64} <= set(fast.edges)
    assert set(fast.dips) <= set(full.dips)
    assert 20 in full.dips  # the blocked kernel pads 20 input channels to 32: 21..23 on the fallback are faster
    assert (1, 16) in fast.slopes  # below one block the curve is a line: one segment, every count an edge
    assert len(fast.latency) < 32


def test_lut_predictions_match_whole_networks_on_the_fake_engine(tmp_path):
    with get_backend(FAKE) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        predictor = Predictor("resnet20", backend, lut, tmp_path)
        groups = predictor.groups
        calibration = [{g.name: g.channels for g in groups}, uniform_plan(groups, 0.5, 8)]
        predictor.calibrate(calibration)
        # the fake graph costs one fixed overhead per run, and so does each single-layer graph:
        # whole = 10 us + layers, the sum of single layers = 20 x 10 us + layers
        assert len(predictor.layers) == 20
        assert predictor.overhead.b == {"": pytest.approx(1.0, rel=1e-6)}  # the fake engine has one kernel class
        assert predictor.overhead.a_ms == pytest.approx(0.010 - 20 * 0.010, rel=1e-6)
        for i, keep in enumerate([uniform_plan(groups, 0.3, 1), {g.name: max(1, g.channels - 5) for g in groups}]):
            whole = model_ms(onnx.load(str(predictor.subnet(keep, tmp_path / f"t{i}.onnx"))))
            assert predictor.predict(keep) == pytest.approx(whole, rel=1e-9)


class _Spells(Backend):
    """Replays designed runs: the reference's are all 0.5 ms; a point's are 1.0 ms, except during a spell of
    interference that doubles most of them."""

    name = "spells"

    def key(self):
        return "spells"

    def bursts(self, models, **_):
        out = []
        for i in range(len(models)):
            if i >= 2:  # the reference copies
                out.append([Burst(float(r), [0.5] * 10) for r in range(10)])
            else:  # point 0: 7 of 10 bursts in a spell; point 1: quiet
                slow = 7 if i == 0 else 0
                out.append([Burst(float(r), [2.0 if r < slow else 1.0] * 10) for r in range(10)])
        return out


def test_a_point_counts_by_its_fast_runs_over_the_references():
    sig = Signature("conv", (3, 3), hw=(8, 8))
    with _Spells(FAKE) as backend:
        timed = time_points(backend, [(sig, 4, 4), (sig, 4, 8)], MICRO)
    (disturbed, p90, n, _), (quiet, *_) = timed.ratios
    assert timed.ref_ms == 0.5 and n == 100
    assert disturbed == quiet == pytest.approx(2.0)  # the median of point 0's runs would say 4.0
    assert p90 == pytest.approx(4.0)  # the spread stays in the entry's p90


_REF_MODEL = micro_model(*REFERENCE)


class _SlowRefs(Backend):
    """Each call times the reference at the next latency of ``refs``; every point at twice that (so the ratios
    of a spell look like any other batch's: only the reference's own latency tells it apart)."""

    name = "slow-refs"

    def __init__(self, device, refs):
        super().__init__(device)
        self.refs, self.calls = list(refs), 0

    def key(self):
        return "slow-refs"

    def bursts(self, models, **_):
        ref = self.refs[min(self.calls, len(self.refs) - 1)]
        self.calls += 1
        return [[Burst(0.0, [ref if m == _REF_MODEL else 2 * ref] * 5)] for m in models]


def test_a_batch_timed_in_a_spell_is_timed_again():
    sig = Signature("conv", (3, 3), hw=(8, 8))
    points = [(sig, 4, 4), (sig, 4, 8)]
    with _SlowRefs(FAKE, [0.60, 0.50]) as backend:  # the first attempt's reference 20 % slow
        timed = time_points(backend, points, MICRO, usual_ref_ms=0.5)
    assert backend.calls == 2 and timed.ref_ms == 0.5 and timed.timed == 4
    with _SlowRefs(FAKE, [0.60, 0.70, 0.55, 0.5]) as backend:  # never usual: RETRIES more, then the nearest
        timed = time_points(backend, points, MICRO, usual_ref_ms=0.5)
    assert backend.calls == 1 + RETRIES == 3 and timed.ref_ms == 0.55 and timed.timed == 6
    with _SlowRefs(FAKE, [0.51]) as backend:  # within SPELL, or no usual latency known yet: timed once
        assert time_points(backend, points, MICRO, usual_ref_ms=0.5).timed == 2
        assert time_points(backend, points, MICRO).timed == 2 and backend.calls == 2


def test_the_profiler_counts_spells_and_keeps_the_usual_from_its_batches(tmp_path):
    sig = Signature("conv", (3, 3), hw=(8, 8))
    with _SlowRefs(FAKE, [0.5, 0.5, 0.8, 0.5]) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        profiler = Profiler(backend, lut)
        profiler.entries([(sig, 4, 4)])
        profiler.entries([(sig, 4, 8)])
        profiler.entries([(sig, 4, 12), (sig, 4, 16)])  # the reference at 0.8: a spell, timed again
        # re-timed: a witness beside the 2nd point; one beside the last two, and those three again
        assert (profiler.measured, profiler.retimed) == (4, 1 + 1 + 3)
        stored = [e.ms for e in lut.get_many("slow-refs", lut.points("slow-refs")).values()]
        assert stored == pytest.approx([1.0] * 4)  # 2 x the reference, on the LUT's scale (its first, 0.5 ms)


class _SlowKernels(Backend):
    """The reference always at 0.5 ms; every other layer at 2.2x it in the first call (a spell that spares
    the reference), 2x after."""

    name = "slow-kernels"

    def key(self):
        return "slow-kernels"

    def bursts(self, models, **_):
        self.calls = getattr(self, "calls", 0) + 1
        layer = 0.5 * (2.2 if self.calls == 1 else 2.0)
        return [[Burst(0.0, [0.5 if m == _REF_MODEL else layer] * 5)] for m in models]


def test_witnesses_catch_a_spell_that_spares_the_reference():
    sig = Signature("conv", (3, 3), hw=(8, 8))
    witnesses = [((sig, 4, 2), 2.0), ((sig, 4, 3), 2.0)]  # stored at 2x the reference
    with _SlowKernels(FAKE) as backend:
        timed = time_points(backend, [(sig, 4, 4)], MICRO, usual_ref_ms=0.5, witnesses=witnesses)
    assert backend.calls == 2 and timed.ratios[0][0] == pytest.approx(2.0) and timed.timed == 2 * 3
    assert timed.witness_off == pytest.approx(0.0)
    with _SlowKernels(FAKE) as backend:  # without witnesses nothing looks wrong: the first timing stays
        assert time_points(backend, [(sig, 4, 4)], MICRO, usual_ref_ms=0.5).ratios[0][0] == pytest.approx(2.2)


def test_witnesses_come_from_this_run_not_from_rows_stored_before(tmp_path):
    sig = Signature("conv", (3, 3), hw=(8, 8))
    with _SlowRefs(FAKE, [0.5]) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        Profiler(backend, lut).entries([(sig, 4, 4)])  # an earlier run: the scale, and one row
        lut.db.execute("UPDATE latency_v2 SET ms = ms * 1.5")  # that row now 50 % off what the machine says
        later = Profiler(backend, lut)
        later.entries([(sig, 4, 4), (sig, 4, 8)])  # reads the old row, times the new one beside no witness
        assert (later.measured, later.retimed) == (1, 0)
        later.entries([(sig, 4, 12)])  # beside (4, 8), timed in this run: no spell either
        assert (later.measured, later.retimed) == (2, 1)


def test_witnesses_are_the_nearest_known_points_of_each_new_signature():
    a, b, c = (Signature("conv", (3, 3), hw=(s, s)) for s in (8, 16, 32))
    known = {(a, 4, 1): 1.0, (a, 4, 8): 1.1, (a, 4, 30): 1.2, (a, 4, 5): 9.0, (b, 2, 2): 2.0, (c, 1, 1): 3.0}
    chosen = choose_witnesses([(a, 4, 4), (a, 4, 5), (b, 8, 8)], known, per_signature=2)
    # a: (4, 8) is 3 from (4, 5), (4, 1) 3 from (4, 4); (4, 5) is itself new, not a witness; b: the only one
    assert chosen == [((a, 4, 1), 1.0), ((a, 4, 8), 1.1), ((b, 2, 2), 2.0)]
    assert choose_witnesses([(c, 2, 2)], {}) == []


def test_overhead_fit():
    assert Overhead.fit([{"k": 2.0}], [1.0]) == Overhead(0.0, {"k": 0.5})
    few = Overhead.fit([{"k": 1.0}, {"k": 2.0}, {"k": 3.0}], [1.5, 2.5, 3.5])
    assert few.a_ms == pytest.approx(0.5) and few.b == {"k": pytest.approx(1.0)}
    # two kernel classes that add up differently: measured = 0.1 + 0.8 * blocked + 1.3 * plain
    sums = [{"nchwc": x, "plain": y} for x, y in ((1, 0), (2, 0.5), (0.5, 1), (1.5, 1.5), (0.2, 0.1))]
    fitted = Overhead.fit(sums, [0.1 + 0.8 * s["nchwc"] + 1.3 * s["plain"] for s in sums])
    assert fitted.a_ms == pytest.approx(0.1) and fitted.b == {"nchwc": pytest.approx(0.8), "plain": pytest.approx(1.3)}
    assert fitted({"nchwc": 1.0, "plain": 2.0}) == pytest.approx(0.1 + 0.8 + 2.6)
    assert fitted({"other": 1.0}) == pytest.approx(0.1 + 1.05)  # unseen class: the mean coefficient
    # a class that is a sliver of every network cannot get its own coefficient: one shared one instead
    sliver = [{"nchwc": x, "plain": 0.001 * i} for i, x in enumerate((1.0, 1.5, 0.7, 1.2, 0.4))]
    pooled = Overhead.fit(sliver, [0.2 + 1.1 * sum(s.values()) for s in sliver])
    assert pooled.b == {"nchwc": pytest.approx(1.1), "plain": pytest.approx(1.1)}


def test_profile_command_writes_tables_and_plots(tmp_path, capsys, monkeypatch):
    from trtprune.cli import main
    from trtprune.latency import devices

    monkeypatch.setitem(devices.DEVICES, "fake-test", FAKE)
    argv = ["profile", "--model", "resnet20", "--device", "fake-test", "--lut", str(tmp_path / "l.sqlite")]
    assert main([*argv, "--out", str(tmp_path / "prof")]) == 0
    assert "served by the LUT" in capsys.readouterr().out
    assert "| layer3.1.conv1 | 64 | " in (tmp_path / "prof" / "stairs.md").read_text()
    assert (tmp_path / "prof" / "layer3.1.conv1.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*argv, "--out", str(tmp_path / "prof2"), "--no-plots"]) == 0  # same model again
    assert "0 points measured" in capsys.readouterr().out


def test_a_quick_profile_is_kept_apart_from_full_measurements(tmp_path):
    sig = Signature("conv", (3, 3), hw=(8, 8))
    with get_backend(FAKE) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        quick = Profiler(backend, lut, protocol="quick")
        assert quick.micro["rounds"] < MICRO["rounds"] and quick.key() == backend.key() + "|quick"
        quick.entries([(sig, 4, 4), (sig, 4, 8)])
        assert quick.measured == 2 and lut.count() == 2
        full = Profiler(backend, lut)
        assert full.key() == backend.key() and full.micro == MICRO
        full.entries([(sig, 4, 4)])  # the quick row is not served to a full profile: timed afresh
        assert full.measured == 1 and lut.count() == 3
        again = Profiler(backend, lut, protocol="quick")
        again.entries([(sig, 4, 8)])  # ... but is to the next quick one
        assert again.measured == 0
        with pytest.raises(TrtpruneError, match="unknown profiling protocol 'fast'"):
            Profiler(backend, lut, protocol="fast")
