"""Strict fakes of NVIDIA's tools for the TensorRT tests: one fake ``trtexec`` per TensorRT version, plus
``nvidia-smi``, ``nvpmodel``, ``ssh`` and ``scp``.

The fake ``trtexec`` of version V accepts exactly the options that V's real trtexec parses - the complete
list read from ``samples/common/sampleOptions.cpp`` at V's tag (``../shared/fixtures/trtexec/flags``) - and
fails on any other as the real one does (``trtexec.cpp``, ``parseArgs``: the help, ``[E] Unknown option: <flag>
<value>``, ``&&&& FAILED``, exit status 1). It prints V's version tag, refuses ONNX models above the opset V's
parser reads (the message is the fake's own), and "builds" an engine that is the ONNX model behind a
``PLAN`` header, so that ``--exportOutput`` can run it with ONNX Runtime. Timing and profile exports replay
real captured files. Every number it gives comes from a fixture or from ONNX Runtime: none is a TensorRT
measurement.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "trtexec"
REPO = Path(__file__).resolve().parents[2]
DEVICE_PYTHON = "device-python"  # the devices' python in these tests: the real timer on the fake runtime
VERSIONS = ("8.5.2", "8.6.1", "10.3.0", "10.16", "11.1")
BUILD_LOG = "trt10.3_rtxa5000_resnet50_onnx_build_and_perf.txt"
TIMES = "trt8.4era_rtx3090_resnet50_b32_fp32_exportTimes.json"
PROFILE = "trt8.4era_titanrtx_mobilenetv2_qat_exportProfile.json"
LAYERS = "trt10.16_h100pcie_mnist_exportLayerInfo.json"

FAKE_TRTEXEC = r"""
import hashlib, json, os, shutil, sys, time
from pathlib import Path
fx = Path(os.environ["FAKE_FIXTURES"])
version = os.environ.get("FAKE_TRT_VERSION", "10.3.0")
flags = set((fx / "flags" / f"trtexec-{version}.txt").read_text().split())
major, minor, patch = ([int(x) for x in version.split(".")] + [0, 0])[:3]
tag = major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch
banner = f"[TensorRT v{tag}]" + (" [b1]" if (major, minor) >= (10, 16) else "") + " # trtexec " + " ".join(sys.argv[1:])
record = {"argv": sys.argv[1:]}
def done(code, *lines):
    for line in lines:
        print(line)
    print(("&&&& PASSED" if code == 0 else "&&&& FAILED") + " TensorRT.trtexec " + banner)
    with open(os.environ["FAKE_LOG"], "a") as f:
        f.write(json.dumps(record) + "\n")
    sys.exit(code)
print("&&&& RUNNING TensorRT.trtexec " + banner)
args, unknown = {}, []
for a in sys.argv[1:]:
    name, _, value = a.partition("=")
    (args.__setitem__(name, value) if name in flags else unknown.append((name, value)))
if "--help" in args:
    print("=== Model Options ===")
    sys.exit(0)
if unknown:
    record["rejected"] = [n for n, _ in unknown]
    done(1, "=== Model Options ===", *(f"[01/01/1970-00:00:00] [E] Unknown option: {n} {v}" for n, v in unknown))
mode = os.environ.get("FAKE_MODE", "ok")
if mode == "sleep":
    time.sleep(30)
if "--onnx" in args:
    if mode in ("parser", "oom"):
        print((fx / os.environ["FAKE_FAIL_LOG"]).read_text())
        done(1)
    raw = Path(args["--onnx"]).read_bytes()
    if os.environ.get("FAKE_FAST_BUILD"):  # many builds (a profile): no parsing, only the engine and its digest
        record["sha256"] = hashlib.sha256(raw).hexdigest()
        Path(args["--saveEngine"]).write_bytes(b"PLAN" + raw)
        done(0)
    import onnx
    proto = onnx.load_from_string(raw)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    record.update(sha256=hashlib.sha256(raw).hexdigest(), opset=opset,
                  float16=any(i.data_type == onnx.TensorProto.FLOAT16 for i in proto.graph.initializer),
                  qdq=any(n.op_type == "QuantizeLinear" for n in proto.graph.node))
    top = 17 if major < 10 else 20
    if opset > top:
        done(1, f"[01/01/1970-00:00:00] [E] [TRT] (fake) this parser reads ONNX opsets up to {top}, got {opset}")
    Path(args["--saveEngine"]).write_bytes(b"PLAN" + raw)
    done(0, (fx / "BUILD_LOG").read_text())
plan = Path(args["--loadEngine"]).read_bytes()
assert plan.startswith(b"PLAN"), "not an engine built here"
if "--exportOutput" in args:  # run the ONNX model the "engine" was built from, as an engine would
    import numpy as np, onnxruntime as ort
    sess = ort.InferenceSession(plan[4:], providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    name, raw = args["--loadInputs"].split(":", 1)
    assert name == inp.name, (name, inp.name)
    x = np.fromfile(raw, dtype=np.float32).reshape(inp.shape)
    ys = sess.run(None, {name: x})
    out = [{"name": o.name, "dimensions": "x".join(map(str, y.shape)),
            "values": (y * (1.2 if mode == "skew" else 1.0)).ravel().tolist()}
           for o, y in zip(sess.get_outputs(), ys)]  # fmt: skip
    Path(args["--exportOutput"]).write_text(json.dumps(out))
if os.environ.get("FAKE_LAYER_PROFILE") == "model" and "--exportProfile" in args:
    # the engine's own layers: each Conv fused with the Add / Relu after it as TensorRT names fusions, the tail
    # after the last Conv one myelin region named by its ends; times by the fake engine's formula (not measured)
    import onnx
    from trtprune.latency.fake import layer_ms
    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(plan[4:]))
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]}
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    nodes, layers, used = list(proto.graph.node), [], set()
    last_conv = max(i for i, n in enumerate(nodes) if n.op_type == "Conv")
    for i, n in enumerate(nodes[: last_conv + 1]):
        if n.op_type != "Conv" or n.name in used:
            continue
        fused, out = [n.name], n.output[0]
        while len(consumers.get(out, [])) == 1 and consumers[out][0].op_type in ("Add", "Relu"):
            fused.append(consumers[out][0].name)
            out = consumers[out][0].output[0]
        used.update(fused)
        cout, cin, kh, kw = inits[n.input[1]]
        b, _, oh, ow = shapes[n.output[0]]
        layers.append((" + ".join(fused), layer_ms("conv", cin, cout, b * oh * ow * kh * kw)))
    tail = [n.name for n in nodes[last_conv + 1 :] if n.name not in used]
    if tail:
        w = next((inits[n.input[1]] for n in nodes[last_conv + 1 :] if n.op_type == "Gemm"), [10, 1])
        layers.append((f"{{ForeignNode[{tail[0]}...{tail[-1]}]}}", layer_ms("gemm", w[1], w[0], 1) + 0.003))
    layers.insert(0, ("Reformatting CopyNode for Input Tensor 0 to " + nodes[0].name, 0.002))
    count = 200
    Path(args["--exportProfile"]).write_text(json.dumps([{"count": count}] + [
        {"name": name, "timeMs": ms * count, "averageMs": ms, "medianMs": ms, "percentage": 0.0}
        for name, ms in layers]))
    Path(args["--exportLayerInfo"]).write_text(json.dumps({"Layers": [name for name, _ in layers], "Bindings": []}))
    done(0, (fx / "BUILD_LOG").read_text())
for flag, name in (("--exportTimes", "TIMES"), ("--exportProfile", "PROFILE"), ("--exportLayerInfo", "LAYERS")):
    if flag in args:
        shutil.copyfile(fx / name, args[flag])
done(0, (fx / "BUILD_LOG").read_text())
"""

FAKE_SSH = """
import os, subprocess, sys, json
with open(os.environ["FAKE_SSH_LOG"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
if os.environ.get("FAKE_SSH_DOWN"):
    sys.stderr.write("ssh: connect to host jetson port 22: Connection refused\\n")
    sys.exit(255)
argv = sys.argv[1:]
while argv[0] == "-o":
    argv = argv[2:]
host, dashdash, command = argv
assert dashdash == "--"
# what sshd does with the command string; FAKE_SSH_SETSID: in a session of its own, as a remote process is
# (killing the local ssh's process group then leaves it running, unless its stdin reaches end-of-file)
argv = ["setsid", "sh", "-c", command] if os.environ.get("FAKE_SSH_SETSID") else ["sh", "-c", command]
sys.exit(subprocess.run(argv).returncode)
"""

FAKE_SCP = """
import os, shutil, sys, json
with open(os.environ["FAKE_SSH_LOG"], "a") as f:
    f.write(json.dumps(["scp"] + sys.argv[1:]) + "\\n")
argv = [a for a in sys.argv[1:] if a not in ("-q", "--")]
while argv[0] == "-o":
    argv = argv[2:]
src, dst = (a.split(":", 1)[1] if "@" in a.split(":", 1)[0] else a for a in argv)
shutil.copyfile(src, dst)
"""

# nvidia-smi: the name of the GPU "-i N" selects (several GPUs, so that CUDA_VISIBLE_DEVICES matters)
FAKE_NVIDIA_SMI = """
import sys
gpus = {"0": "NVIDIA RTX A5000", "1": "NVIDIA H100 PCIe", "GPU-f5507ee1": "NVIDIA H100 PCIe"}
i = sys.argv[sys.argv.index("-i") + 1] if "-i" in sys.argv else "0"
if i not in gpus:
    print(f"No devices were found", file=sys.stderr); sys.exit(6)
print(gpus[i])
"""

# nvpmodel -q as JetPack prints it (the mode's name, then its number)
FAKE_NVPMODEL = """
import os
print("NV Power Mode: " + os.environ.get("FAKE_POWER_MODE", "MAXN"))
print(os.environ.get("FAKE_POWER_MODE_ID", "0"))
"""


def script(path: Path, body: str) -> None:
    path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    path.chmod(0o755)


def install(bin_dir: Path, tmp_path: Path, monkeypatch, version: str = "10.3.0") -> None:
    """Put the fakes first on PATH, trtexec of TensorRT ``version``."""
    bin_dir.mkdir(exist_ok=True)
    body = FAKE_TRTEXEC
    for name, value in (("BUILD_LOG", BUILD_LOG), ("TIMES", TIMES), ("PROFILE", PROFILE), ("LAYERS", LAYERS)):
        body = body.replace(f'"{name}"', repr(value))
    script(bin_dir / "trtexec", body)
    script(bin_dir / "nvidia-smi", FAKE_NVIDIA_SMI)
    script(bin_dir / "nvpmodel", FAKE_NVPMODEL)
    script(bin_dir / "device-python", f"import sys; sys.path.insert(0, {str(REPO)!r})\n"
           "from tests.latency.fake_device import run\nsys.exit(run(sys.argv[1], sys.argv[2]))\n")  # fmt: skip
    script(bin_dir / "ssh", FAKE_SSH)
    script(bin_dir / "scp", FAKE_SCP)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_FIXTURES", str(FIXTURES))
    monkeypatch.setenv("FAKE_TRT_VERSION", version)
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "trtexec.log"))
    monkeypatch.setenv("FAKE_SSH_LOG", str(tmp_path / "ssh.log"))
    monkeypatch.setenv("FAKE_TIMER_LOG", str(tmp_path / "timer.log"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the timing caches of these tests stay here
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("ORIN_HOST", raising=False)


def calls(tmp_path: Path, which: str = "trtexec") -> list:
    """The fake's log: for trtexec, one record per call ({"argv", and for builds "sha256", "opset", ...}); for
    timer, one per run of the resident timer ({"pid", "deserialized", "captured", "request"})."""
    log = tmp_path / f"{which}.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def jetson_files(tmp_path: Path, monkeypatch, board: str, l4t: str, locked: bool = True) -> None:
    """A Jetson's identity files in ``tmp_path`` (the probes read them instead of /proc, /etc and /sys)."""
    from trtprune.latency import nvidia_hw

    root = tmp_path / "jetson"
    (root / "devfreq" / "17000000.gpu").mkdir(parents=True, exist_ok=True)
    (root / "model").write_bytes(board.encode() + b"\x00")
    (root / "nv_tegra_release").write_text(f"# {l4t}, GCID: 37537400, BOARD: generic, EABI: aarch64\n")
    (root / "devfreq" / "17000000.gpu" / "min_freq").write_text("1300500000\n" if locked else "306000000\n")
    (root / "devfreq" / "17000000.gpu" / "max_freq").write_text("1300500000\n")
    monkeypatch.setattr(nvidia_hw, "DEVICE_TREE_MODEL", str(root / "model"))
    monkeypatch.setattr(nvidia_hw, "L4T_RELEASE", str(root / "nv_tegra_release"))
    monkeypatch.setattr(nvidia_hw, "DEVFREQ", str(root / "devfreq"))
