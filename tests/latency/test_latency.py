import pytest
import torch

from trtprune.deploy.export import onnx_from_torch
from trtprune.errors import TrtpruneError
from trtprune.latency import BACKENDS, get_backend
from trtprune.latency.base import Timing
from trtprune.latency.devices import DEVICES, Device, get_device
from trtprune.sources.models import build_model


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
    assert get_device("orin").engine_suffix == ".plan" and get_device("cpu").engine_suffix == ".onnx"
    with pytest.raises(TrtpruneError, match="backend 'magic'"):
        get_backend(Device("x", "magic"))


class _FakeSession:
    """Records what the backend asks of ONNX Runtime: options, and the order of timed runs."""

    calls: list = []
    options: list = []

    def __init__(self, path, opts, providers):
        self.path = str(path)
        try:
            spin = opts.get_session_config_entry("session.intra_op.allow_spinning")
        except RuntimeError:  # never set
            spin = None
        _FakeSession.options.append((self.path, opts.intra_op_num_threads, spin))

    def get_inputs(self):
        class Input:
            name, shape, type = "input", [1, 3, 8, 8], "tensor(float)"

        return [Input()]

    def run(self, outputs, feed):
        _FakeSession.calls.append(self.path)


def test_the_protocol_interleaves_models_with_quiet_thread_pools(monkeypatch, tmp_path):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", _FakeSession)
    _FakeSession.calls, _FakeSession.options = [], []
    models = [tmp_path / f"{m}.onnx" for m in "abc"]
    with get_backend(get_device("cpu-2t")) as backend:
        timings = backend.compare(models, rounds=6, warmup=2, max_runs=3)
    assert [t.n for t in timings] == [18, 18, 18]  # 6 rounds x 3 runs (fake runs are instant: max_runs)
    assert {(threads, spin) for _, threads, spin in _FakeSession.options} == {(2, "0")}
    timed = _FakeSession.calls[3 * 2 :]  # after each model's warm-up
    bursts = [timed[i] for i in range(0, len(timed), 3)]  # one entry per (round, model) burst
    rounds = [tuple(bursts[i : i + 3]) for i in range(0, len(bursts), 3)]
    assert all(sorted(r) == sorted(map(str, models)) for r in rounds)  # every round visits every model once
    assert len(set(rounds)) > 1  # in a fresh random order


def test_one_model_alone_keeps_the_default_thread_pool(monkeypatch, tmp_path):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "InferenceSession", _FakeSession)
    _FakeSession.options = []
    with get_backend(get_device("cpu")) as backend:
        backend.measure(tmp_path / "a.onnx", rounds=1, warmup=1)
        with pytest.raises(TrtpruneError, match="rounds=0"):
            backend.measure(tmp_path / "a.onnx", rounds=0)
    assert _FakeSession.options[0][2] is None  # spinning left as ONNX Runtime ships it


def test_a_short_run_is_stretched_to_its_time_span(monkeypatch, tmp_path):
    import time

    import onnxruntime

    class SlowSession(_FakeSession):
        def run(self, outputs, feed):
            time.sleep(0.0005)

    monkeypatch.setattr(onnxruntime, "InferenceSession", SlowSession)
    models = [tmp_path / f"{m}.onnx" for m in "ab"]
    with get_backend(get_device("cpu")) as backend:
        plain = backend.bursts(models, rounds=2, warmup=1, max_runs=1)
        spread = backend.bursts(models, rounds=2, warmup=1, max_runs=1, span_s=0.05)
        capped = backend.bursts(models, rounds=2, warmup=1, max_runs=1, span_s=1e6)
    assert [len(b) for b in plain] == [2, 2]
    # a round of two 0.5 ms runs lasts ~1 ms: 50 ms need more rounds than asked, and every model gets each
    assert len(spread[0]) == len(spread[1]) > 2
    assert len(capped[0]) == 2 * 50  # never beyond MAX_SPAN_ROUNDS times the rounds asked for
