"""TensorRT 8.5, 8.6, 10.3, 10.16 and 11.1 as their trtexec really is: every command line trtprune makes is
checked against the complete option list of that release (read from NVIDIA's sources at its tag,
``../shared/fixtures/trtexec/flags``), and the backend builds, times, profiles and checks parity of a
ResNet-20 against a strict fake trtexec of each version (tests/latency/fakes.py). No number here is a
TensorRT measurement: timings replay captured files and outputs come from ONNX Runtime."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.latency import fakes
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend, trtexec_args
from trtprune.latency.devices import DEVICES, Device
from trtprune.latency.trt import parse_version
from trtprune.latency.trt_onnx import device_form, downgrade, fp16_typed

needs_fixtures = pytest.mark.skipif(
    not (fakes.FIXTURES / "flags").is_dir(),
    reason=f"the trtexec option lists are not at {fakes.FIXTURES / 'flags'} (../shared/fixtures)",
)
GPU = replace(DEVICES["gpu"], trtexec="trtexec", timeout_s=60, python=fakes.DEVICE_PYTHON)
DLA = replace(DEVICES["orin"], trtexec="trtexec", dla_core=0, timeout_s=60, python=fakes.DEVICE_PYTHON)


def _flags(version: str) -> set[str]:
    return set((fakes.FIXTURES / "flags" / f"trtexec-{version}.txt").read_text().split())


def _v(version: str) -> tuple[int, int, int]:
    return tuple(([int(x) for x in version.split(".")] + [0, 0])[:3])


@needs_fixtures
@pytest.mark.parametrize("version", fakes.VERSIONS)
def test_every_command_line_uses_only_options_its_version_parses(version):
    real, v = _flags(version), _v(version)
    for flag in trtexec_args.FLAGS:  # the table never claims an option the release does not have
        if trtexec_args.parses(v, flag):
            assert flag in real, f"{flag} is not an option of trtexec {version}"
    precisions = ("fp32", "fp16", "int8") if trtexec_args.strongly_typed(v) else ("fp32", "fp16", "int8", "best")
    made = []
    for device in [replace(GPU, precision=p) for p in precisions] + [DLA, replace(DLA, precision="int8")]:
        made += [
            trtexec_args.build_argv(device, v, "m.onnx", "m.plan", "t.cache"),
            trtexec_args.profile_argv(device, v, "m.plan", "p.json", "l.json"),
            trtexec_args.outputs_argv(device, v, "m.plan", "input", "x.bin", "y.json"),
        ]
    used = {a.split("=", 1)[0] for argv in made for a in argv[1:]}
    assert used <= real, sorted(used - real)
    builds = [a for a in made if any(x.startswith("--onnx=") for x in a)]
    if v >= (11,):  # strongly typed: no precision flags, no deprecated run flags
        assert not used & {"--fp16", "--int8", "--best", "--useCudaGraph", "--useSpinWait", "--noDataTransfers"}
        assert "--noCudaGraph" in trtexec_args.profile_argv(DLA, v, "m", "p", "l")  # graphs cannot hold DLA work
    else:
        assert any("--fp16" in b for b in builds)
        assert "--useCudaGraph" in trtexec_args.profile_argv(GPU, v, "m", "p", "l")
    assert all(("--skipInference" if v >= (8, 6) else "--buildOnly") in b for b in builds)
    assert "--noTF32" in trtexec_args.build_argv(replace(GPU, precision="fp32"), v, "m", "p")


@needs_fixtures
@pytest.mark.parametrize(
    "version,flag",
    [("11.1", "--fp16"), ("11.1", "--best"), ("11.1", "--calib=c"), ("10.3.0", "--workspace=1024")]
    + [("8.5.2", "--skipInference"), ("8.6.1", "--stronglyTyped"), ("10.16", "--noCudaGraph")],
)
def test_each_fake_trtexec_rejects_what_its_real_version_rejects(version, flag, tmp_path, monkeypatch):
    fakes.install(tmp_path / "bin", tmp_path, monkeypatch, version)
    r = subprocess.run(["trtexec", "--onnx=m.onnx", flag], capture_output=True, text=True)
    assert r.returncode == 1
    assert f"Unknown option: {flag.split('=')[0]}" in r.stdout and "&&&& FAILED TensorRT.trtexec" in r.stdout
    ok = subprocess.run(["trtexec", "--help"], capture_output=True, text=True)
    assert ok.returncode == 0 and parse_version(ok.stdout) == _v(version)


@needs_fixtures
@pytest.mark.parametrize("version", fakes.VERSIONS)
def test_resnet20_builds_times_profiles_and_matches_onnx_runtime_on_each_version(version, tmp_path, monkeypatch):
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.deploy.parity import parity
    from trtprune.sources.models import build_model

    torch = pytest.importorskip("torch")
    fakes.install(tmp_path / "bin", tmp_path, monkeypatch, version)
    torch.manual_seed(0)
    onnx_from_torch(build_model("resnet20").eval(), tmp_path / "m.onnx", (3, 32, 32), 2)
    x = torch.randn(4, 3, 32, 32).numpy()
    with get_backend(GPU) as backend:
        assert backend.key().startswith(f"trt-{'.'.join(map(str, _v(version)))}|NVIDIA RTX A5000|gpu|fp16|b1")
        timing = backend.measure(tmp_path / "m.onnx", rounds=2, iterations=20)
        layers, engine_layers = backend.profile_layers(tmp_path / "m.onnx")
        check = parity(backend, tmp_path / "m.onnx", x, batch=2)
        plan = backend.build(tmp_path / "m.onnx", tmp_path / "m.plan")
    assert timing.n > 0 and layers and engine_layers and plan.read_bytes().startswith(b"PLAN")
    assert check["ok"] and check["top1_agreement"] == 1.0, check
    records = fakes.calls(tmp_path)
    assert not any("rejected" in r for r in records)  # no call used an option this version lacks
    builds = [r for r in records if "sha256" in r]
    assert len(builds) == 1  # one engine for the model, however often it ran
    assert builds[0]["opset"] == (17 if _v(version) < (10,) else 20)  # 8.x parses opsets up to 17
    if _v(version) >= (11,):  # fp16 the strongly typed way: from the model's types, not a flag
        assert builds[0]["float16"] and "--fp16" not in builds[0]["argv"]
    else:
        assert not builds[0]["float16"] and "--fp16" in builds[0]["argv"]


@needs_fixtures
@pytest.mark.parametrize("version", ["8.6.1", "11.1"])
def test_int8_builds_only_from_a_qdq_model_and_that_model_unchanged(version, tmp_path, monkeypatch):
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.deploy.quantize import qdq_from_onnx
    from trtprune.sources.models import build_model

    fakes.install(tmp_path / "bin", tmp_path, monkeypatch, version)
    onnx_from_torch(build_model("resnet20").eval(), tmp_path / "m.onnx", (3, 32, 32), 1)
    calib = np.random.default_rng(0).standard_normal((16, 3, 32, 32)).astype(np.float32)
    qdq = qdq_from_onnx(tmp_path / "m.onnx", tmp_path / "m.int8.onnx", calib, target="tensorrt")
    with get_backend(replace(GPU, precision="int8")) as backend:
        with pytest.raises(TrtpruneError, match="has no Q/DQ"):
            backend.build(tmp_path / "m.onnx", tmp_path / "fp32.plan")
        backend.build(qdq, tmp_path / "m.plan")
    (build,) = [r for r in fakes.calls(tmp_path) if "sha256" in r]
    assert build["qdq"] and not build["float16"]
    assert ("--int8" in build["argv"]) == (version != "11.1")  # 11's --int8 is the safety builder's
    if _v(version) >= (10,):  # the file built is the Q/DQ file itself, byte for byte
        import hashlib

        assert build["sha256"] == hashlib.sha256(Path(qdq).read_bytes()).hexdigest()
    assert not (tmp_path / "fp32.plan").exists()


def test_supported_versions_and_clear_refusals(caplog):
    for ok in [(8, 5, 2), (8, 6, 1), (10, 3, 0), (10, 16, 1), (11, 1, 0)]:
        trtexec_args.check_version(ok)
    for bad in [(8, 4, 1), (8, 2, 5), (7, 1, 3), (9, 2, 0), (12, 0, 0)]:
        with pytest.raises(TrtpruneError, match="is not supported") as e:
            trtexec_args.check_version(bad, "jetson")
        assert "8.5" in e.value.why and "11.x" in e.value.why
    trtexec_args.check_version((10, 20, 0))
    assert "newer than 10.16.0" in caplog.text
    with pytest.raises(TrtpruneError, match="no 'best' precision"):
        trtexec_args.precision_flags("best", (11, 1, 0))
    with pytest.raises(TrtpruneError, match="DLA runs fp16 or int8"):
        Device("dla-fp32", "trt", precision="fp32", dla_core=0).check()


def test_models_are_rewritten_exactly_for_old_parsers_and_strong_typing(tmp_path):
    import onnxruntime as ort

    from trtprune.deploy.export import onnx_from_torch
    from trtprune.sources.models import build_model

    onnx_from_torch(build_model("mobilenet_v2").eval(), tmp_path / "m.onnx", (3, 32, 32), 1)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    old = downgrade(proto, 17)
    assert old.opset_import[0].version == 17 and old.ir_version <= 8
    assert all(len(n.input) == 1 for n in old.graph.node if n.op_type == "ReduceMean")  # axes as an attribute
    half = fp16_typed(proto)
    assert {i.data_type for i in half.graph.initializer if i.data_type in (1, 10)} == {10}
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays float32
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    ref, down, fp16 = (
        ort.InferenceSession(p.SerializeToString()).run(None, {"input": x})[0] for p in (proto, old, half)
    )
    assert np.abs(ref - down).max() == 0.0
    assert np.abs(ref - fp16).max() <= 5e-2 * np.abs(ref).max()
    same = device_form(proto.SerializeToString(), GPU, (10, 3, 0))
    assert same == proto.SerializeToString()  # nothing to rewrite for 10.x fp16: the bytes pass untouched
    assert device_form(proto.SerializeToString(), GPU, (11, 1, 0)) == device_form(
        proto.SerializeToString(), GPU, (11, 1, 0)
    )  # deterministic: same model, same bytes, same engine cache entry
    gelu = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Gelu", ["x"], ["y"], name="g")],
            "g",
            [onnx.helper.make_tensor_value_info("x", 1, [1, 4])],
            [onnx.helper.make_tensor_value_info("y", 1, [1, 4])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 20)],
    )
    with pytest.raises(TrtpruneError, match="cannot read node 'g' \\(Gelu\\)") as e:
        downgrade(gelu, 17)
    assert "TensorRT 10" in e.value.fix
    with pytest.raises(TrtpruneError, match="not an ONNX model"):
        device_form(b"not onnx", GPU, (10, 3, 0))


@needs_fixtures
def test_keys_tell_jetsons_power_modes_clocks_and_visible_gpus_apart(tmp_path, monkeypatch):
    fakes.install(tmp_path / "bin", tmp_path, monkeypatch, "10.3.0")
    orin = replace(DEVICES["orin"], trtexec="trtexec", timeout_s=60)

    def key(device):
        with get_backend(device) as b:
            return b.key(), b.info()["hardware"]

    fakes.jetson_files(tmp_path, monkeypatch, "NVIDIA Jetson AGX Orin Developer Kit", "R36 (release), REVISION: 4.0")
    agx, facts = key(orin)
    assert agx.startswith("trt-10.3.0|NVIDIA Jetson AGX Orin Developer Kit / L4T R36.4.0 / MAXN (0) / clocks locked|")
    assert facts["board"] == "NVIDIA Jetson AGX Orin Developer Kit" and facts["l4t"] == "L4T R36.4.0"
    monkeypatch.setenv("FAKE_POWER_MODE", "15W")
    monkeypatch.setenv("FAKE_POWER_MODE_ID", "1")
    assert "/ 15W (1) /" in key(orin)[0]
    fakes.jetson_files(
        tmp_path,
        monkeypatch,
        "NVIDIA Jetson Orin NX Engineering Reference Developer Kit",
        "R36 (release), REVISION: 4.0",
        locked=False,
    )
    nx = key(orin)[0]
    assert "Orin NX" in nx and "clocks not locked" in nx and nx != agx
    assert key(replace(orin, dla_core=1))[0].split("|")[2] == "dla1+gpu"
    assert key(replace(orin, precision="int8"))[0].split("|")[3] == "int8"
    monkeypatch.undo()
    fakes.install(tmp_path / "bin", tmp_path, monkeypatch, "10.3.0")
    assert key(GPU)[0].split("|")[1] == "NVIDIA RTX A5000"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")  # the GPU CUDA programs here use, not nvidia-smi's first
    assert key(GPU)[0].split("|")[1] == "NVIDIA H100 PCIe"


@needs_fixtures
def test_an_int8_device_profiles_layers_as_qdq_models(tmp_path, monkeypatch):
    from trtprune.profiling.layers import Signature
    from trtprune.profiling.lut import LUT
    from trtprune.profiling.profile import Profiler

    fakes.install(tmp_path / "bin", tmp_path, monkeypatch, "11.1")
    with get_backend(replace(GPU, precision="int8")) as backend, LUT(tmp_path / "lut.db") as lut:
        (ms,) = Profiler(backend, lut, protocol="quick").latencies([(Signature("conv", hw=(8, 8)), 16, 24)])
    builds = [r for r in fakes.calls(tmp_path) if "sha256" in r]
    assert ms > 0 and builds and all(r["qdq"] for r in builds)  # the layer and the reference, both Q/DQ


def test_the_jetson_image_installs_every_dependency_of_the_package():
    """docker/Dockerfile.jetson installs the package with --no-deps (to keep the Jetson torch) and lists the
    dependencies itself: that list must not drift from pyproject.toml's."""
    import re

    import tomllib

    root = Path(__file__).resolve().parents[2]
    deps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=;\s\[]", d, maxsplit=1)[0] for d in deps} - {"torch"}
    dockerfile = (root / "docker" / "Dockerfile.jetson").read_text()
    assert names and all(f'"{n}' in dockerfile for n in names), sorted(n for n in names if f'"{n}' not in dockerfile)
    assert "ARG JETSON_TORCH_INDEX=https://pypi.jetson-ai-lab.io/" in dockerfile  # where the index moved in 2025


@needs_fixtures
def test_the_timing_cache_outlives_the_session_per_device_key(tmp_path, monkeypatch):
    from trtprune.profiling.layers import Signature, micro_model

    fakes.install(tmp_path / "bin", tmp_path, monkeypatch, "10.16")
    model = micro_model(Signature("conv", hw=(8, 8)), 8, 8)
    for device in (GPU, GPU, replace(GPU, precision="fp32")):
        with get_backend(device) as backend:
            backend.engine(model)
    caches = [a.split("=", 1)[1] for r in fakes.calls(tmp_path) for a in r["argv"] if a.startswith("--timingCache")]
    assert len(caches) == 3 and caches[0] == caches[1] != caches[2]  # the same key, the same cache; not across keys
    assert all(c.startswith(str(tmp_path / "cache" / "trtprune" / "trt")) for c in caches)
