"""Per-layer profiling, latency sharing and prediction, on the fake engine (exact, no hardware)."""

import onnx
import pytest

from trtprune.devices import Device
from trtprune.export import onnx_from_torch
from trtprune.latency import get_backend
from trtprune.latency.fake import model_ms
from trtprune.layers import layers_of
from trtprune.lut import LUT
from trtprune.models import build_model
from trtprune.predict import Overhead, Predictor
from trtprune.profile import Profiler, group_layers
from trtprune.prune import GroupPruner, uniform_plan
from trtprune.stairs import Tolerance

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
        fast = Profiler(backend, lut).stairs(gl, Tolerance())
        full = Profiler(backend, lut, share=False).stairs(gl, Tolerance(), "exhaustive")
    assert fast.edges == full.edges
    assert {16, 32, 48, 64} <= set(fast.edges)
    assert set(fast.dips) <= set(full.dips)
    assert 20 in full.dips  # the blocked kernel pads 20 input channels to 32: 21..23 on the fallback are faster
    assert set(range(1, 17)) <= set(fast.latency)  # below one block the curve slopes: every count differs
    assert len(fast.latency) < 48


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
    from trtprune import devices
    from trtprune.cli import main

    monkeypatch.setitem(devices.DEVICES, "fake-test", FAKE)
    argv = ["profile", "--model", "resnet20", "--device", "fake-test", "--lut", str(tmp_path / "l.sqlite")]
    assert main([*argv, "--out", str(tmp_path / "prof")]) == 0
    assert "served by the LUT" in capsys.readouterr().out
    assert "| layer3.1.conv1 | 64 | " in (tmp_path / "prof" / "stairs.md").read_text()
    assert (tmp_path / "prof" / "layer3.1.conv1.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*argv, "--out", str(tmp_path / "prof2"), "--no-plots"]) == 0  # same model again
    assert "0 points measured" in capsys.readouterr().out
