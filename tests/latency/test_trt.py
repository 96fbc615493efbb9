"""The TensorRT and SSH backends, end to end against a fake ``trtexec`` (and fake ``ssh``/``scp``/``nvidia-smi``)
that replay real captured trtexec outputs from ``../shared/fixtures/trtexec``. The numbers the backends
return here are the fixtures' numbers, which the tests check; nothing here is a measurement."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from tests.latency import fakes
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.latency.devices import DEVICES, Device, get_device, load_devices
from trtprune.profiling.layers import Signature, micro_model

FIXTURES, TIMES, PROFILE = fakes.FIXTURES, fakes.TIMES, fakes.PROFILE
PARSER_FAIL = "trt8.2.4_failed_onnx_parser_pad_reflect.txt"
OOM = "trt10.3_failed_build_cuda_oom_excerpt.txt"

needs_fixtures = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"the captured trtexec outputs are not at {FIXTURES} (../shared/fixtures)"
)


@pytest.fixture
def fake_tools(tmp_path, monkeypatch):
    """The strict fakes (tests/latency/fakes.py) first on PATH, trtexec of TensorRT 10.3.0; returns a reader of
    their logs (for trtexec: the argument lists)."""
    fakes.install(tmp_path / "bin", tmp_path, monkeypatch, "10.3.0")

    def calls(which="trtexec"):
        found = fakes.calls(tmp_path, which)
        return [c["argv"] for c in found] if which == "trtexec" else found

    return calls


@pytest.fixture
def two_onnx(tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b b;touch PWNED.onnx"  # a hostile name must stay a name
    a.write_bytes(micro_model(Signature("conv", hw=(8, 8)), 16, 16))
    b.write_bytes(micro_model(Signature("conv", hw=(8, 8)), 16, 24))
    return [a, b]


def _fixture_compute_ms() -> list[float]:
    return [r["computeMs"] for r in json.loads((FIXTURES / TIMES).read_text())]


GPU = replace(DEVICES["gpu"], trtexec="trtexec", timeout_s=20, python=fakes.DEVICE_PYTHON)


@needs_fixtures
def test_trt_backend_builds_once_times_interleaved_and_delivers_a_plan(fake_tools, two_onnx, tmp_path):
    with get_backend(GPU) as backend:
        assert backend.key() == "trt-10.3.0|NVIDIA RTX A5000|gpu|fp16|b1|ws1024"
        workdir = Path(backend.runner.workdir)
        timings = backend.compare(two_onnx, rounds=3, iterations=50)
        backend.compare(two_onnx, rounds=1)
        plan = backend.build(two_onnx[0], tmp_path / "engines" / "m.plan")
        info = backend.info()
    import onnx

    from trtprune.latency.fake import model_ms

    # the fake runtime's latency of each model, as the resident timer read it from the (fake) CUDA events
    expected = [model_ms(onnx.load(str(m))) for m in two_onnx]
    assert [t.median_ms for t in timings] == pytest.approx(expected, rel=1e-6)
    assert timings[0].n == 3 * 50
    calls = fake_tools()
    builds = [c for c in calls if any(a.startswith("--onnx=") for a in c)]
    assert len(builds) == 2  # one build per model, however often it is timed
    assert not any(any(a.startswith("--loadEngine") for a in c) for c in calls)  # timing is the timer's
    runs = fakes.calls(tmp_path, "timer")
    assert len(runs) == 2  # one timer run per batch (two compare calls), not one per model per round
    assert all(r["deserialized"] == 2 and r["captured"] == 2 for r in runs)  # each engine loaded once per batch
    assert plan.read_bytes().startswith(b"PLAN") and info["tensorrt"] == "10.3.0" and info["timer_gpu"]
    assert not workdir.exists()  # the engines and exports of the session are removed on close
    assert not (tmp_path / "PWNED").exists()


@needs_fixtures
def test_trt_backend_per_layer_profile_maps_engine_layers(fake_tools, two_onnx):
    with get_backend(GPU) as backend:
        layers, engine_layers = backend.profile_layers(two_onnx[0])
    profile = json.loads((FIXTURES / PROFILE).read_text())
    assert [x.name for x in layers] == [r["name"] for r in profile[1:]]
    assert layers[0].average_ms == pytest.approx(profile[1]["averageMs"])
    assert engine_layers and any(layer.onnx_nodes for layer in engine_layers)


@needs_fixtures
@pytest.mark.parametrize("mode,log,message", [("parser", PARSER_FAIL, "Pad_13"), ("oom", OOM, "out of memory")])
def test_failed_builds_are_clear_errors(fake_tools, two_onnx, monkeypatch, tmp_path, mode, log, message):
    monkeypatch.setenv("FAKE_MODE", mode)
    monkeypatch.setenv("FAKE_FAIL_LOG", log)
    with get_backend(GPU) as backend, pytest.raises(TrtpruneError, match=message) as e:
        backend.build(two_onnx[0], tmp_path / "m.plan")
    assert "building a.onnx with TensorRT on this machine failed" in str(e.value)
    assert not (tmp_path / "m.plan").exists()  # nothing half-written


@needs_fixtures
def test_a_hung_trtexec_times_out(fake_tools, two_onnx, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    with get_backend(replace(GPU, timeout_s=1)) as backend, pytest.raises(TrtpruneError, match="did not finish"):
        backend.measure(two_onnx[0])


def test_without_tensorrt_the_device_says_what_is_missing(monkeypatch, tmp_path, two_onnx):
    monkeypatch.setenv("PATH", str(tmp_path))  # no trtexec anywhere
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # and no Python API
    monkeypatch.delenv("ORIN_HOST", raising=False)
    device = replace(get_device("orin"), trtexec="trtexec")
    with pytest.raises(TrtpruneError, match="device 'orin' needs TensorRT") as e, get_backend(device) as b:
        b.measure(two_onnx[0])
    assert "ORIN_HOST=user@host" in e.value.fix and "--device cpu" in e.value.fix


@needs_fixtures
def test_ssh_backend_end_to_end_with_quoting_host_keys_and_cleanup(fake_tools, two_onnx, monkeypatch, tmp_path):
    monkeypatch.setenv("ORIN_HOST", "ubuntu@jetson")
    device = get_device("orin")
    assert device.backend == "ssh" and device.host == "ubuntu@jetson"
    no_trt = pytest.raises(TrtpruneError, match="TensorRT's Python bindings do not import")  # python3 here
    with no_trt as e, get_backend(replace(device, timeout_s=20)) as backend:
        backend.compare(two_onnx[:1], rounds=1, iterations=5)
    assert "python3-libnvinfer" in str(e.value)
    with get_backend(replace(device, timeout_s=20, python=fakes.DEVICE_PYTHON)) as backend:
        remote_dir = backend.runner.workdir
        timings = backend.compare(two_onnx, rounds=20, iterations=20)
        plan = backend.build(two_onnx[1], tmp_path / "orin.plan")
        assert backend.key().startswith("trt-10.3.0|NVIDIA RTX A5000|gpu|fp16|b1")
    import onnx

    from trtprune.latency.fake import model_ms

    assert timings[1].median_ms == pytest.approx(model_ms(onnx.load(str(two_onnx[1]))), rel=1e-6)
    runs = fakes.calls(tmp_path, "timer")
    assert len(runs) == 1 and runs[0]["request"]["rounds"] == 20  # 20 rounds of 2 models: one timer start
    launches = [c for c in fake_tools("ssh") if c[0] != "scp" and c[-1].startswith(fakes.DEVICE_PYTHON)]
    assert len(launches) == 1  # over ssh too: one remote process per batch (trtexec: 2 x 20 = 40 launches)
    assert plan.read_bytes().startswith(b"PLAN")
    assert not Path(remote_dir).exists() and not (tmp_path / "PWNED").exists()
    ssh_calls = [c for c in fake_tools("ssh") if c[0] != "scp"]
    scp_calls = [c for c in fake_tools("ssh") if c[0] == "scp"]
    for c in ssh_calls + scp_calls:
        assert "BatchMode=yes" in c and "StrictHostKeyChecking=yes" in c
    assert all(c[-2] == "--" and c[-3] == "ubuntu@jetson" for c in ssh_calls)
    assert ssh_calls[-1][-1].startswith("rm -rf -- /tmp/trtprune.")  # the remote folder is removed at the end
    # the hostile file name reached the device as a plain name: uploads are named by content digest
    assert all("PWNED" not in arg for c in scp_calls for arg in c[-2:] if "@" in arg)


@needs_fixtures
def test_ssh_failures_are_clear(fake_tools, two_onnx, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_DOWN", "1")
    device = replace(DEVICES["orin"], backend="ssh", host="ubuntu@jetson", timeout_s=20, python=fakes.DEVICE_PYTHON)
    with pytest.raises(TrtpruneError, match="ssh could not reach ubuntu@jetson"), get_backend(device) as b:
        b.measure(two_onnx[0])
    monkeypatch.setenv("ORIN_HOST", "-oProxyCommand=touch PWNED")
    with pytest.raises(TrtpruneError, match="not a valid ssh host"):
        get_device("orin")
    for host in ("a;b", "u@h && rm", "$(reboot)", "", "h`x`"):
        with pytest.raises(TrtpruneError, match="not a valid ssh host"):
            replace(DEVICES["orin"], backend="ssh", host=host).check()


def test_user_devices_from_toml(tmp_path, monkeypatch):
    path = tmp_path / "devices.toml"
    path.write_text(
        textwrap.dedent("""
        [devices.lab-orin]
        backend = "ssh"
        host = "ubuntu@10.0.0.5"
        precision = "int8"
        workspace_mib = 2048
        dla_core = 0
        [devices.big-cpu]
        backend = "ort"
        batch = 8
        threads = 2
        """)
    )
    devices = load_devices(path)
    assert devices["lab-orin"] == Device(
        "lab-orin", "ssh", host="ubuntu@10.0.0.5", precision="int8", workspace_mib=2048, dla_core=0
    )
    monkeypatch.setenv("TRTPRUNE_DEVICES", str(path))
    assert get_device("big-cpu").batch == 8 and get_device("lab-orin").engine_suffix == ".plan"
    assert get_device("cpu") == DEVICES["cpu"]
    bad = {
        '[devices.x]\nbackend = "ssh"\nhost = "a;b"\n': "not a valid ssh host",
        '[devices.x]\nbackend = "ort"\ncolour = "red"\n': "unknown keys",
        '[devices.x]\nbackend = "ort"\nbatch = "8"\n': "wrong type",
        '[devices.x]\nbackend = "ort"\nbatch = true\n': "wrong type",
        '[devices.x]\nprecision = "fp16"\n': "has no backend",
        '[devices.x]\nbackend = "tpu"\n': "unknown backend",
        '[devices.x]\nbackend = "trt"\nprecision = "fp8"\n': "unknown precision",
        '[devices.cpu]\nbackend = "ort"\n': "redefines the built-in device 'cpu'",
        "[devices.x\n": "cannot be read",
    }
    for text, message in bad.items():
        path.write_text(text)
        with pytest.raises(TrtpruneError, match=message):
            get_device("x")
    monkeypatch.setenv("TRTPRUNE_DEVICES", str(tmp_path / "missing.toml"))
    with pytest.raises(TrtpruneError, match="does not exist"):
        get_device("cpu")


@needs_fixtures
def test_engine_parity_with_onnx_runtime_is_checked_on_real_outputs(fake_tools, tmp_path, monkeypatch):
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.deploy.parity import parity
    from trtprune.sources.models import build_model

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    onnx_from_torch(build_model("resnet20").eval(), tmp_path / "m.onnx", (3, 32, 32), 2)
    x = torch.randn(6, 3, 32, 32).numpy()
    with get_backend(GPU) as backend:
        good = parity(backend, tmp_path / "m.onnx", x, batch=2)
        monkeypatch.setenv("FAKE_MODE", "skew")  # an engine whose logits are 20 % off
        bad = parity(backend, tmp_path / "m.onnx", x, batch=2)
    assert good["ok"] and good["images"] == 6 and good["max_abs_diff"] < 1e-5 and good["top1_agreement"] == 1.0
    assert not bad["ok"] and bad["max_rel_diff"] == pytest.approx(0.2, rel=0.01)
    assert good["tolerance"] == "max |trt - ort| <= 0.05 x max |ort|, per output"


@pytest.mark.gpu
@pytest.mark.skipif(shutil.which("trtexec") is None, reason="needs NVIDIA trtexec and a GPU (not on this machine)")
def test_real_tensorrt_builds_and_times_a_model(tmp_path):
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.sources.models import build_model

    onnx_from_torch(build_model("resnet20").eval(), tmp_path / "m.onnx", (3, 32, 32), 1)
    with get_backend(get_device("gpu")) as backend:
        timing = backend.measure(tmp_path / "m.onnx", rounds=2, iterations=50)
        plan = backend.build(tmp_path / "m.onnx", tmp_path / "m.plan")
    assert timing.n == 100 and timing.median_ms > 0 and plan.stat().st_size > 0


def test_engine_layers_map_back_to_onnx_nodes_and_prunable_groups(tmp_path):
    import onnx

    from trtprune.deploy.export import onnx_from_torch
    from trtprune.latency.engine_map import group_times, module_of_nodes
    from trtprune.latency.trtexec import LayerTime, load_layer_info
    from trtprune.pruning.prune import GroupPruner
    from trtprune.sources.models import build_model

    model = build_model("resnet20").eval()
    onnx_from_torch(model, tmp_path / "m.onnx", (3, 32, 32), 1)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    modules = module_of_nodes(proto)
    relu_after = {n.input[0]: n.name for n in proto.graph.node if n.op_type == "Relu"}
    conv_nodes = [n for n in proto.graph.node if n.name in modules]
    # an engine as TensorRT reports it: "conv + relu" fusions, one reformat of its own, names-only layer info
    names = [f"{n.name} + {relu_after[n.output[0]]}" if n.output[0] in relu_after else n.name for n in conv_nodes]
    names.append("Reformatting CopyNode for Input Tensor 0 to x")
    engine_layers = load_layer_info({"Layers": names})
    times = [LayerTime(name, 0.0, 0.01 * (i + 1), None, 0.0) for i, name in enumerate(names)]
    times.append(LayerTime("a layer the info does not know", 0.0, 0.5, None, 0.0))
    groups = GroupPruner(model, (3, 32, 32)).groups()
    per_group, other, unknown = group_times(times, engine_layers, proto, groups)
    by_module = {modules[n.name]: 0.01 * (i + 1) for i, n in enumerate(conv_nodes)}
    for g, gt in zip(groups, per_group):
        assert gt.group == g.name
        assert gt.ms == pytest.approx(sum(by_module.get(m, 0.0) for m in (*g.producers, *g.consumers)))
        assert gt.engine_layers  # every group of ResNet-20 is in some engine layer
    assert other == pytest.approx(0.01 * len(names) + 0.5) and unknown == ["a layer the info does not know"]


@needs_fixtures
def test_the_profile_and_layer_info_of_one_engine_join_by_name():
    from trtprune.latency.trtexec import load_export_profile, load_layer_info

    profile = load_export_profile(FIXTURES / PROFILE)
    info = {e.name for e in load_layer_info(FIXTURES / "trt8.4era_titanrtx_mobilenetv2_qat_exportLayerInfo.json")}
    assert profile and all(lt.name in info for lt in profile)


@needs_fixtures
def test_int8_run_times_checks_and_delivers_one_and_the_same_qdq_file(fake_tools, tiny_data, tmp_path, monkeypatch):
    """A whole `trtprune run` on an int8 TensorRT device: the report times and parity-checks the calibrated Q/DQ
    file, and the delivered plan is built from those very bytes (the fake engine holds what it was built from)."""
    import hashlib

    import onnx

    from trtprune.cli import main
    from trtprune.latency import devices

    monkeypatch.setitem(devices.DEVICES, "gpu-int8", replace(GPU, name="gpu-int8", precision="int8"))
    runs = tmp_path / "runs"
    code = main(["run", "--data", str(tiny_data), "--model", "resnet20", "--weights",
                 str(tiny_data / "weights" / "resnet20-random.th"), "--device", "gpu-int8", "--budget", "none",
                 "--ratio", "0.5", "--round-to", "4", "--epochs", "1", "--train-limit", "64", "--eval-limit", "16",
                 "--runs-dir", str(runs), "--engines-dir", str(tmp_path / "engines"), "--name", "q"])  # fmt: skip
    assert code == 0
    qdq = (runs / "q" / "pruned.int8.onnx").read_bytes()
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in onnx.load_from_string(qdq).graph.node}
    plan = (tmp_path / "engines" / "q.plan").read_bytes()
    assert plan == b"PLAN" + qdq  # the delivered engine was built from the Q/DQ file, byte for byte
    report = json.loads((runs / "q" / "report.json").read_text())
    assert report["pruned"]["onnx"].endswith("pruned.int8.onnx") and report["device"]["parity"]["images"] > 0
    builds = [c for c in fakes.calls(tmp_path) if "sha256" in c]
    digest = hashlib.sha256(qdq).hexdigest()
    shas = {c["sha256"] for c in builds}
    assert digest in shas and len(shas) == 2  # pruned and baseline, both Q/DQ: nothing else was ever built
    assert all(c["qdq"] and "--int8" in c["argv"] for c in builds)
    with pytest.raises(TrtpruneError, match="run fp32 or int8 models"):
        replace(DEVICES["cpu"], precision="best").check()


@needs_fixtures
def test_build_writes_a_plan_for_tensorrt_devices(fake_tools, tiny_data, tmp_path, capsys, monkeypatch):
    from trtprune.cli import main
    from trtprune.latency import devices

    monkeypatch.setitem(devices.DEVICES, "gpu-test", replace(GPU, name="gpu-test"))
    code = main(["build", "--model", "resnet20", "--weights", str(tiny_data / "weights" / "resnet20-random.th"),
                 "--device", "gpu-test", "-o", str(tmp_path / "r20.plan")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "TensorRT engine for gpu-test (trt-10.3.0|NVIDIA RTX A5000" in out
    assert (tmp_path / "r20.plan").read_bytes().startswith(b"PLAN")
