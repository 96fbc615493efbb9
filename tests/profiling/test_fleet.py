"""Profiling on a fleet of Ray workers (issue 7), on the fake engine: the same LUT rows as a serial run,
a worker killed mid-run, a worker on another device left out, and the errors users meet."""

import json
import os
import signal
import sys
import threading
import time

import onnx
import pytest

from tests.conftest import cli
from trtprune.deploy.export import onnx_from_torch
from trtprune.errors import TrtpruneError
from trtprune.latency import devices, get_backend
from trtprune.latency.devices import Device
from trtprune.profiling.layers import Signature, layers_of
from trtprune.profiling.lut import LUT
from trtprune.profiling.profile import Profiler, Timed, group_layers, profile_groups, time_points
from trtprune.profiling.stairs import Tolerance
from trtprune.pruning.prune import GroupPruner
from trtprune.sources.models import build_model

FAKE = Device("fake-fleet", "fake")
SHAPE = (3, 32, 32)
QUICK = {"rounds": 2}


@pytest.fixture(scope="module")
def gls(tmp_path_factory):
    path = tmp_path_factory.mktemp("fleet") / "r20.onnx"
    model = build_model("resnet20")
    onnx_from_torch(model, path, SHAPE)
    return group_layers(GroupPruner(model, SHAPE).groups(), layers_of(onnx.load(str(path))))


@pytest.fixture(scope="module")
def serial(gls, tmp_path_factory):
    """The reference: every group searched one after the other on one backend."""
    path = tmp_path_factory.mktemp("serial") / "lut.sqlite"
    with get_backend(FAKE) as backend, LUT(path) as lut:
        profiler = Profiler(backend, lut, micro=dict(QUICK))
        stairs = profile_groups(profiler, gls, Tolerance())
        return backend.key(), lut.points(backend.key()), stairs, profiler.measured


def _rows(path, key):
    with LUT(path) as lut:
        return lut.points(key)


def test_threads_on_one_backend_store_the_same_rows_and_time_each_point_once(gls, serial, tmp_path):
    key, rows, stairs, measured = serial
    with get_backend(FAKE) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        profiler = Profiler(backend, lut, micro=dict(QUICK))
        found = profile_groups(profiler, gls, Tolerance(), parallel=6)
        assert lut.points(key) == rows
    assert list(found) == list(stairs)  # group order kept
    assert {n: s.edges for n, s in found.items()} == {n: s.edges for n, s in stairs.items()}
    assert profiler.measured == measured == len(rows)  # a point two threads needed was timed once


def test_a_batch_timed_on_another_device_is_not_stored(tmp_path):
    class Elsewhere:
        def key(self):
            return "fake-1|orin"

        def time_points(self, points, micro, usual_ref_ms=None, witnesses=()):
            return Timed("fake-1|xavier", "ref", 0.01, tuple((1.0, 1.0, 3, "") for _ in points))

    sig = Signature("conv", (3, 3), (1, 1), (1, 1, 1, 1), hw=(8, 8))
    with LUT(tmp_path / "lut.sqlite") as lut:
        with pytest.raises(TrtpruneError, match="timed on 'fake-1|xavier'"):
            Profiler(None, lut, fleet=Elsewhere()).entries([(sig, 8, 8)])
        assert lut.count() == 0


def test_workers_on_another_key_or_on_a_device_already_driven_are_left_out():
    from trtprune.profiling.fleet import Worker, choose

    a, b = Worker("h1", "orin|trt10", "n1", 1), Worker("h2", "orin|trt10", "n2", 2)
    old = Worker("h3", "orin|trt8.6", "n3", 3)
    ssh1, ssh2 = (Worker(f"s{i}", "orin|trt10", "x86", 10 + i, target="ubuntu@jetson1") for i in (1, 2))
    key, kept, refused = choose([a, old, ssh1, b, ssh2])
    assert key == "orin|trt10" and kept == [a, ssh1, b]
    assert [(w, why.split(":")[0]) for w, why in refused] == [
        (old, "another device"),
        (ssh2, "drives the same device (ubuntu@jetson1) as worker x86"),
    ]


def test_a_jetson_worker_takes_its_host_from_its_own_environment(monkeypatch):
    from trtprune.latency.devices import get_device, host_from_env

    monkeypatch.delenv("ORIN_HOST", raising=False)
    here = get_device("orin")
    assert here.backend == "trt" and host_from_env(here) == here
    monkeypatch.setenv("ORIN_HOST", "ubuntu@10.0.0.7")
    remote = host_from_env(here)
    assert (remote.backend, remote.host) == ("ssh", "ubuntu@10.0.0.7")
    assert host_from_env(get_device("cpu")) == get_device("cpu")  # only Jetsons take a host


def test_profile_without_ray_installed_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, _, err = cli(capsys, "profile", "--model", "resnet20", "--ray", "local", "--out", tmp_path / "p")
    assert code == 2 and "--ray needs Ray, which is not installed" in err and "trtprune[fleet]" in err
    assert not (tmp_path / "p").exists()


@pytest.fixture
def ray():
    return pytest.importorskip("ray", reason="the fleet tests need Ray (pip install 'trtprune[fleet]')")


@pytest.mark.slow
def test_profile_cli_on_two_local_workers(serial, tmp_path, capsys, monkeypatch, ray):
    key, rows, stairs, _ = serial
    monkeypatch.setitem(devices.DEVICES, FAKE.name, FAKE)
    argv = ["profile", "--model", "resnet20", "--device", FAKE.name, "--no-plots", "--lut", tmp_path / "l.sqlite"]
    code, out, err = cli(capsys, *argv, "--out", tmp_path / "p", "--ray", "local", "--ray-workers", "2")
    assert code == 0, err
    assert "Ray: 2 worker(s)" in out and "0 lost" in out
    result = json.loads((tmp_path / "p" / "stairs.json").read_text())
    assert result["ray"]["workers"] == 2 and result["device"]["key"] == key
    assert {n: tuple(g["edges"]) for n, g in result["groups"].items()} == {n: s.edges for n, s in stairs.items()}
    assert _rows(tmp_path / "l.sqlite", key) == rows


@pytest.mark.slow
def test_two_local_workers_build_the_serial_rows(gls, serial, tmp_path, ray):
    from trtprune.profiling.fleet import Fleet

    key, rows, stairs, _ = serial
    with Fleet(FAKE, "local", workers=2) as fleet, LUT(tmp_path / "lut.sqlite") as lut:
        assert fleet.key() == key and len(fleet.workers) == 2
        profiler = Profiler(None, lut, micro=dict(QUICK), fleet=fleet)
        found = profile_groups(profiler, gls, Tolerance(), parallel=4)
        summary = fleet.summary()
        # a large batch is shared among the workers, with one result as if timed in one piece
        points = [p for gl in gls[:3] for c in range(1, 17) for p in gl.points(c)]
        before = [w.jobs for w in fleet.workers]
        shared = fleet.time_points(points, QUICK)
        assert [w.jobs - b for w, b in zip(fleet.workers, before)] == [1, 1] and len(points) > 48
        with get_backend(FAKE) as backend:
            alone = time_points(backend, points, QUICK)
        assert [r[0] for r in shared.ratios] == pytest.approx([r[0] for r in alone.ratios])
        assert shared.key == alone.key
    assert not ray.is_initialized()  # the cluster it started is gone
    assert _rows(tmp_path / "lut.sqlite", key) == rows
    assert {n: s.edges for n, s in found.items()} == {n: s.edges for n, s in stairs.items()}
    assert all(jobs > 0 for jobs in summary["jobs_per_worker"].values())  # both workers measured


@pytest.mark.slow
def test_a_worker_killed_mid_run_loses_nothing(gls, serial, tmp_path, ray):
    from trtprune.profiling.fleet import Fleet

    key, rows, _, _ = serial
    slow = {**QUICK, "delay_s": 0.01}  # each model takes 10 ms to "time": batches are in flight when killed
    with Fleet(FAKE, "local", workers=2) as fleet, LUT(tmp_path / "lut.sqlite") as lut:
        victim = fleet.workers[1]

        def kill_when_both_have_worked():
            while min(w.jobs for w in fleet.workers) < 2:
                time.sleep(0.01)
            os.kill(victim.pid, signal.SIGKILL)

        killer = threading.Thread(target=kill_when_both_have_worked)
        killer.start()
        profile_groups(Profiler(None, lut, micro=slow, fleet=fleet), gls, Tolerance(), parallel=4)
        killer.join()
        assert fleet.lost == [victim.name] and fleet.retried == 1
        assert lut.points(key) == rows


@pytest.mark.slow
def test_a_worker_on_another_device_is_never_used(gls, serial, tmp_path, ray):
    from trtprune.profiling.fleet import DeviceWorker, Fleet

    key, rows, _, _ = serial
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        worker = ray.remote(DeviceWorker)
        same = [worker.remote(FAKE) for _ in range(2)]
        other = worker.options(runtime_env={"env_vars": {"TRTPRUNE_FAKE_HW": "xavier"}}).remote(FAKE)
        with Fleet(FAKE, handles=[same[0], other, same[1]]) as fleet, LUT(tmp_path / "lut.sqlite") as lut:
            assert fleet.key() == key and len(fleet.workers) == 2
            assert len(fleet.left_out) == 1 and "xavier" in fleet.left_out[0]["why"]
            profile_groups(Profiler(None, lut, micro=dict(QUICK), fleet=fleet), gls, Tolerance(), parallel=4)
            assert lut.points(key) == rows
            assert lut.count() == len(rows)  # nothing under the other device's key
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_cluster_without_the_devices_resource_is_a_clear_error(ray):
    from trtprune.profiling.fleet import Fleet

    with pytest.raises(TrtpruneError, match="no node of the Ray cluster offers the resource 'nowhere'") as e:
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            Fleet(Device("nowhere", "fake")).__enter__()
        finally:
            ray.shutdown()
    assert "--resources" in e.value.fix
