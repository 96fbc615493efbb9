"""Group stairs from the per-layer profile of whole-model engines (``trtprune profile --from engine``), and the
map from engine layers to groups on Q/DQ models and fused myelin regions. Every time here comes from the fake
engine's formula (trtprune.latency.fake) or a hand-made profile: nothing is a TensorRT measurement."""

from __future__ import annotations

import json
from dataclasses import replace

import onnx
import pytest
import torch
from torch import nn

from tests.latency import fakes
from trtprune.deploy.export import onnx_from_torch
from trtprune.latency.devices import DEVICES
from trtprune.latency.engine_map import group_times, module_of_nodes, node_macs
from trtprune.latency.fake import layer_ms
from trtprune.latency.trtexec import LayerTime, load_layer_info
from trtprune.profiling.engine_stairs import EngineProfiler
from trtprune.profiling.stairs import Tolerance, exhaustive
from trtprune.pruning.prune import GroupPruner

needs_fixtures = pytest.mark.skipif(not fakes.FIXTURES.is_dir(), reason=f"no fixtures at {fakes.FIXTURES}")
SHAPE = (3, 16, 16)


class Tiny(nn.Module):
    """Two prunable convs and a classifier: groups of 8 (conv1 -> conv2) and 24 channels (conv2 -> fc)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 24, 3, padding=1)
        self.fc = nn.Linear(24, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def make():
    return Tiny()


def _proto(tmp_path, model=None):
    onnx_from_torch(model or Tiny().eval(), tmp_path / "m.onnx", SHAPE, 1)
    return onnx.load(str(tmp_path / "m.onnx"))


def test_a_myelin_region_covers_every_node_between_its_ends_and_is_split_by_work(tmp_path):
    proto = _proto(tmp_path)
    convs = [n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")]
    macs = node_macs(proto)
    assert macs[convs[0].name] == 8 * 16 * 16 * 3 * 9 and macs[convs[1].name] == 24 * 16 * 16 * 8 * 9
    assert macs[convs[2].name] == 24 * 10
    nodes = [n.name for n in proto.graph.node]
    # one region from the first node to the last: TensorRT names only its two ends
    region = f"{{ForeignNode[{nodes[0]}...{nodes[-1]}]}}"
    layers = load_layer_info({"Layers": [region]})
    assert set(layers[0].onnx_nodes) == {nodes[0], nodes[-1]}  # what the name alone says
    groups = GroupPruner(Tiny(), SHAPE).groups()
    per_group, other, unknown = group_times([LayerTime(region, 0.0, 1.0, None, 0.0)], layers, proto, groups)
    total = sum(macs.values())
    share = {module_of_nodes(proto)[n]: m / total for n, m in macs.items()}
    for g, t in zip(groups, per_group):
        assert t.ms == pytest.approx(sum(share[m] for m in (*g.producers, *g.consumers)))
        assert t.engine_layers == (region,)
    assert other == 0.0 and unknown == []


def test_qdq_weights_map_back_to_their_modules(tmp_path):
    from trtprune.deploy.quantize import qdq_for_timing

    proto = _proto(tmp_path)
    fp32 = module_of_nodes(proto)
    qdq_for_timing(tmp_path / "m.onnx")
    q = onnx.load(str(tmp_path / "m.onnx"))
    assert any(n.op_type == "DequantizeLinear" for n in q.graph.node)
    inits = {i.name for i in q.graph.initializer}
    assert not any(n.input[1] in inits for n in q.graph.node if n.op_type == "Conv")  # weights through DQ
    assert sorted(module_of_nodes(q).values()) == sorted(fp32.values()) == ["conv1", "conv2", "fc"]
    assert node_macs(q) == pytest.approx(node_macs(proto))


class FormulaEngine:
    """A backend with ``group_profile``: every Conv its own engine layer, times by the fake engine's formula."""

    name, layer_profiles = "formula", True
    device = replace(DEVICES["orin"])

    def __init__(self):
        self.profiles = 0

    def group_profile(self, path, groups, iterations=200):
        proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
        shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.value_info}
        shapes.update({v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in proto.graph.output})
        inits = {i.name: list(i.dims) for i in proto.graph.initializer}
        times, names = [], []
        for n in proto.graph.node:
            if n.op_type == "Conv":
                cout, cin, kh, kw = inits[n.input[1]]
                _, _, oh, ow = shapes[n.output[0]]
                times.append(LayerTime(n.name, 0.0, layer_ms("conv", cin, cout, oh * ow * kh * kw), None, 0.0))
                names.append(n.name)
        self.profiles += 1
        return group_times(times, load_layer_info({"Layers": names}), proto, groups)


def test_engine_stairs_find_the_edges_of_an_exhaustive_sweep_of_the_same_engines(tmp_path):
    backend = FormulaEngine()
    prof = EngineProfiler(backend, Tiny(), SHAPE, tmp_path)
    group = next(g for g in prof.groups.values() if g.channels == 24)
    tol = Tolerance(rel=0.01, abs_ms=0.0)
    found = prof.stairs(group, tol)
    searched = prof.builds
    ref = exhaustive(1, 24, lambda cs: prof.curve(group, cs), tol)
    assert found.edges == ref.edges and 16 in ref.edges and 24 in ref.edges
    assert searched < 24 and prof.builds == 24  # the sweep re-used every count the search had built
    # the group's time at a count: its producer conv2 (8 -> c) and its consumer (fc: a Gemm, not profiled here)
    assert found.latency[24] == pytest.approx(layer_ms("conv", 8, 24, 16 * 16 * 9))


def test_a_backend_without_layer_profiles_is_refused(tmp_path):
    from trtprune.errors import TrtpruneError

    backend = FormulaEngine()
    backend.layer_profiles = False
    with pytest.raises(TrtpruneError, match="no per-layer profile"):
        EngineProfiler(backend, Tiny(), SHAPE, tmp_path)


@needs_fixtures
def test_trtprune_profile_on_a_fake_orin_writes_stairs_from_engine_profiles(tmp_path, monkeypatch, capsys):
    """`trtprune profile --device orin --from engine` on a fake Orin whose trtexec writes a per-layer profile of the
    model it built (conv+relu fusions, the classifier's tail as one myelin region); then a search whose candidates
    come from those engine stairs (`--stairs-from engine`)."""
    from trtprune.cli import main
    from trtprune.latency import devices

    fakes.install(tmp_path / "bin", tmp_path, monkeypatch)
    fakes.jetson_files(tmp_path, monkeypatch, "NVIDIA Jetson AGX Orin Developer Kit", "R36 (release), REVISION: 4.0")
    monkeypatch.setenv("FAKE_LAYER_PROFILE", "model")
    monkeypatch.setenv("FAKE_FAST_BUILD", "1")
    monkeypatch.setitem(
        devices.DEVICES, "orin", replace(DEVICES["orin"], trtexec="trtexec", python=fakes.DEVICE_PYTHON)
    )
    out = tmp_path / "prof"
    code = main(["--json", "profile", "--model", f"{__file__}:make", "--input-shape", "3x16x16", "--device", "orin",
                 "--from", "engine", "--no-plots", "--out", str(out), "--lut", str(tmp_path / "lut.db")])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    stairs = json.loads((out / "stairs.json").read_text())
    assert summary["source"] == stairs["source"] == "engine"
    argvs = [c["argv"] for c in fakes.calls(tmp_path)]
    builds = [a for a in argvs if any(x.startswith("--onnx=") for x in a)]
    profiles = [a for a in argvs if any(x.startswith("--exportProfile=") for x in a)]
    assert len(builds) == len(profiles) == stairs["engine_builds"] < 8 + 24  # fewer than one per count
    wide = next(g for g in stairs["groups"].values() if g["channels"] == 24)
    # conv2 (8 -> c): output channels padded to 16-blocks, so 16 and 24 are edges; the fc's share of the myelin
    # tail (the only prunable node in it) is in the group's time as well
    assert {16, 24} <= set(wide["edges"])
    assert wide["latency_ms"]["24"] == pytest.approx(
        layer_ms("conv", 8, 24, 16 * 16 * 9) + layer_ms("gemm", 24, 10, 1) + 0.003
    )
    assert "per-layer profile of the whole model's engine" in (out / "stairs.md").read_text()
    capsys.readouterr()
    torch.save(Tiny().state_dict(), tmp_path / "tiny.pt")
    code = main(["--json", "search", "--model", f"{__file__}:make", "--weights", str(tmp_path / "tiny.pt"),
                 "--input-shape", "3x16x16", "--device", "orin", "--budget", "0.8x", "--stairs-from", "engine",
                 "--importance", "l1", "--lut", str(tmp_path / "lut.db"),
                 "-o", str(tmp_path / "plan.json")])  # fmt: skip
    assert code == 0
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["meta"]["stairs_from"] == "engine"
    wide_group = next(g for g, c in plan["channels"].items() if c == 24)
    assert set(plan["meta"]["candidates"][wide_group]) <= set(wide["edges"]) | {24}
