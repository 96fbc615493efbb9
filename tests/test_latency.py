import pytest
import torch

from trtprune.devices import DEVICES, Device, get_device
from trtprune.errors import TrtpruneError
from trtprune.export import onnx_from_torch
from trtprune.latency import BACKENDS, get_backend
from trtprune.latency.base import Timing
from trtprune.models import build_model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("lat")
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.Flatten(), torch.nn.Linear(8192, 10))
    onnx_from_torch(small, d / "small.onnx", (3, 32, 32))
    onnx_from_torch(build_model("resnet20"), d / "r20.onnx", (3, 32, 32))
    return d / "small.onnx", d / "r20.onnx"


def test_timing_summary():
    t = Timing.from_samples([1.0, 2.0, 3.0, 4.0, 100.0])
    assert t == Timing(3.0, pytest.approx(61.6), 5)


def test_ort_compares_models_in_one_interleaved_run(two_models):
    with get_backend(get_device("cpu")) as backend:
        small, r20 = backend.compare(list(two_models), rounds=4)
        key = backend.key()
    assert small.n >= 4 and r20.n >= 4
    assert 0 < small.median_ms <= small.p90_ms and 0 < r20.median_ms <= r20.p90_ms
    assert key.startswith("ort-") and "|t1|b1|fp32" in key


def test_the_model_batch_must_match_the_device(two_models):
    with get_backend(get_device("cpu-b32")) as backend, pytest.raises(TrtpruneError, match="batch is 1") as e:
        backend.measure(two_models[0], rounds=1)
    assert "--batch 32" in e.value.fix


def test_a_corrupt_model_is_a_clear_error(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    with get_backend(get_device("cpu")) as backend, pytest.raises(TrtpruneError, match="cannot load"):
        backend.measure(tmp_path / "bad.onnx")


def test_devices():
    assert set(DEVICES) >= {"cpu", "cpu-b32"} and DEVICES["cpu-b32"].batch == 32
    assert all(d.backend in BACKENDS for d in DEVICES.values())
    with pytest.raises(TrtpruneError, match="unknown device 'tpu'"):
        get_device("tpu")
    with pytest.raises(TrtpruneError, match="needs the TensorRT backend"):
        get_device("orin")
    with pytest.raises(TrtpruneError, match="backend 'magic'"):
        get_backend(Device("x", "magic"))
