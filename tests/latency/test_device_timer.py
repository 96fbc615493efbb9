"""The resident timer (trtprune/latency/device_timer.py) on a fake device runtime (tests/latency/fake_device.py):
its protocol, and how the backend starts and stops it here and over ssh. No number here is a measurement."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import onnx
import pytest

from tests.latency import fakes
from tests.latency.fake_device import FakeCuda, FakeTrt
from trtprune.errors import TrtpruneError
from trtprune.latency import device_timer, get_backend
from trtprune.latency.devices import DEVICES
from trtprune.latency.fake import model_ms
from trtprune.profiling.layers import Signature, micro_model

needs_fixtures = pytest.mark.skipif(not fakes.FIXTURES.is_dir(), reason="../shared/fixtures is not there")


def _plans(tmp_path, couts=(8, 16, 24)) -> list[str]:
    out = []
    for c in couts:
        path = tmp_path / f"m{c}.plan"
        path.write_bytes(b"PLAN" + micro_model(Signature("conv", hw=(8, 8)), 8, c))
        out.append(str(path))
    return out


def test_the_timer_loads_each_engine_once_and_interleaves_rounds_by_seed(tmp_path):
    plans = _plans(tmp_path)
    cuda = FakeCuda()
    trt = FakeTrt(cuda)
    request = {"engines": plans, "rounds": 6, "iterations": 7, "warmup": 2, "seed": 3, "dla_core": None}
    response = device_timer.serve(request, trt, cuda)
    assert trt.deserialized == 3 and cuda.captured == 3 and response["graphs"] == [True] * 3
    assert sorted(response["order"][0]) == [0, 1, 2] and len(response["order"]) == 6
    assert len({tuple(o) for o in response["order"]}) > 1  # the order changes from round to round
    again = device_timer.serve(request, FakeTrt(FakeCuda()), FakeCuda())
    assert again["order"] == response["order"]  # ... as the seed says
    for plan, bursts in zip(plans, response["bursts"]):
        want = model_ms(onnx.load_from_string(Path(plan).read_bytes()[4:]))
        assert len(bursts) == 6 and all(len(b["ms"]) == 7 for b in bursts)
        assert all(x == pytest.approx(want) for b in bursts for x in b["ms"])  # per inference, from the events
    starts = sorted((b["start_s"], i) for i, bs in enumerate(response["bursts"]) for b in bs)
    assert [i for _, i in starts] == [i for order in response["order"] for i in order]
    json.dumps(response)  # one JSON object


def test_dla_engines_are_timed_without_graphs_on_their_core(tmp_path):
    cuda = FakeCuda()
    trt = FakeTrt(cuda)
    cores = []
    runtime = trt.Runtime

    class Recording(runtime):
        def __setattr__(self, name, value):
            cores.append((name, value))
            super().__setattr__(name, value)

    trt.Runtime = Recording
    request = {"engines": _plans(tmp_path, (8,)), "rounds": 1, "iterations": 3, "warmup": 0, "seed": 0, "dla_core": 1}
    response = device_timer.serve(request, trt, cuda)
    assert response["graphs"] == [False] and cuda.captured == 0 and ("DLA_core", 1) in cores
    assert len(response["bursts"][0][0]["ms"]) == 3


def test_the_timer_stops_when_its_stdin_closes(tmp_path, monkeypatch):
    fakes.install(tmp_path / "bin", tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_TIMER_SLEEP", "30")
    req = tmp_path / "request.json"
    req.write_text(json.dumps({"engines": _plans(tmp_path, (8,)), "rounds": 2, "iterations": 3, "warmup": 0}))
    p = subprocess.Popen([fakes.DEVICE_PYTHON, device_timer.__file__, str(req)], stdin=subprocess.PIPE)
    time.sleep(1.0)
    assert p.poll() is None  # working (sleeping in its first burst)
    p.stdin.close()  # what a dead caller, or a dead ssh on the other end, amounts to
    assert p.wait(timeout=10) == 3


@needs_fixtures
def test_a_timeout_over_ssh_leaves_no_timer_running_on_the_device(tmp_path, monkeypatch):
    """The remote timer runs in a session of its own (as behind a real sshd): killing the local ssh does not reach
    it; the end-of-file on its stdin does."""
    fakes.install(tmp_path / "bin", tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_SSH_SETSID", "1")
    monkeypatch.setenv("FAKE_TIMER_SLEEP", "30")
    orin = replace(DEVICES["orin"], backend="ssh", host="ubuntu@jetson", trtexec="trtexec", timeout_s=8)
    orin = replace(orin, python=fakes.DEVICE_PYTHON)
    model = micro_model(Signature("conv", hw=(8, 8)), 8, 8)
    with get_backend(orin) as backend:
        workdir = backend.runner.workdir
        backend.engine(model)  # built before the clock starts
        with pytest.raises(TrtpruneError, match="did not finish within"):
            backend.compare([model], rounds=2, iterations=3)
    deadline = time.time() + 10
    while time.time() < deadline and _running(workdir):
        time.sleep(0.2)
    assert not _running(workdir)


def _running(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmd and "device_timer.py" in cmd and int(pid) != os.getpid():
            found.append(cmd)
    return found


def test_the_timer_runs_on_python_38():
    """JetPack 5's Python is 3.8: the file must at least compile there (no newer syntax)."""
    import ast

    ast.parse(Path(device_timer.__file__).read_text(), feature_version=(3, 8))
    assert sys.version_info >= (3, 8)


@pytest.mark.slow
@needs_fixtures
def test_profiling_a_resnet_on_a_jetson_over_ssh_starts_the_timer_once_per_batch(tmp_path, monkeypatch, capsys):
    """`trtprune profile --device orin` of a ResNet (the 8-layer one of the tests at half width) with
    ORIN_HOST set, on the fake Jetson: one start of the device-side timer per timed batch, where trtexec took one
    process per model per round."""
    from tests.small_models import RESNET8_NARROW
    from trtprune.cli import main
    from trtprune.latency import devices

    fakes.install(tmp_path / "bin", tmp_path, monkeypatch)
    fakes.jetson_files(tmp_path, monkeypatch, "NVIDIA Jetson Orin Nano Developer Kit", "R36 (release), REVISION: 4.0")
    monkeypatch.setenv("ORIN_HOST", "ubuntu@jetson")
    monkeypatch.setenv("FAKE_FAST_BUILD", "1")  # 200+ engine builds: the fake skips its checks of the model
    monkeypatch.setitem(
        devices.DEVICES, "orin", replace(DEVICES["orin"], trtexec="trtexec", python=fakes.DEVICE_PYTHON)
    )
    out = tmp_path / "prof"
    code = main(["--json", "profile", "--model", RESNET8_NARROW, "--device", "orin", "--from", "layers", "--quick",
                 "--no-plots", "--out", str(out), "--lut", str(tmp_path / "lut.db")])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    runs = fakes.calls(tmp_path, "timer")
    launches = [c for c in fakes.calls(tmp_path, "ssh") if c[0] != "scp" and c[-1].startswith(fakes.DEVICE_PYTHON)]
    assert len(runs) == len(launches) == summary["timing_runs"] > 0  # one timer start per timed batch
    models = sum(len(r["request"]["engines"]) * r["request"]["rounds"] for r in runs)
    assert summary["measured"] > 50 and models > 10 * len(launches)  # trtexec: one launch per model per round
    assert all(r["deserialized"] == len(r["request"]["engines"]) for r in runs)  # each engine loaded once
    assert "Orin Nano" in summary["device"]["key"]
    print(f"resnet8_narrow over ssh: {summary['measured']} points, {len(launches)} timer starts for {models} "
          "timed model-rounds", file=sys.stderr)  # fmt: skip
