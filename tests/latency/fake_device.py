"""A fake device runtime for the resident timer: TensorRT's Python bindings and the CUDA runtime, faked.

An "engine" is a file the fake trtexec wrote (``PLAN`` + the ONNX model); its inference takes the fake
backend's formula latency of that model (:func:`trtprune.latency.fake.model_ms`), on a virtual GPU clock that
CUDA events read. Nothing here is a measurement. Every run appends what it did to ``$FAKE_TIMER_LOG``
(engines deserialized, graphs captured) so tests can count; ``$FAKE_TIMER_SLEEP`` makes each burst take that
many real seconds (to kill a run midway).

Run as a program it stands in for the device's ``python3``: ``fake_device.py device_timer.py REQUEST.json``
runs the real timer's ``main`` with these fakes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path


class FakeCuda:
    def __init__(self):
        self.clock = 0.0  # ms of GPU time
        self.capturing: list[float] | None = None
        self.graphs: dict[int, float] = {}
        self.events: dict[int, float] = {}
        self.next = 1
        self.captured = 0

    def _id(self) -> int:
        self.next += 1
        return self.next

    def malloc(self, size):
        assert size > 0
        return self._id()

    def stream(self):
        return self._id()

    def event(self):
        return self._id()

    def enqueue(self, ms: float) -> None:
        if self.capturing is not None:
            self.capturing.append(ms)
        else:
            self.clock += ms

    def record(self, event, stream):
        self.events[event] = self.clock

    def synchronize(self, event):
        pass

    def stream_synchronize(self, stream):
        pass

    def elapsed_ms(self, a, b):
        return self.events[b] - self.events[a]

    def begin_capture(self, stream):
        self.capturing = []

    def end_capture(self, stream):
        graph = self._id()
        self.graphs[graph], self.capturing = sum(self.capturing), None
        self.captured += 1
        return graph

    def launch(self, graph, stream):
        self.clock += self.graphs[graph]

    def device_name(self):
        return os.environ.get("FAKE_TIMER_GPU", "Orin (nvgpu)")


class FakeTrt:
    """The parts of the ``tensorrt`` module the timer uses."""

    __version__ = os.environ.get("FAKE_TRT_VERSION", "10.3.0")
    float32, float16, int8 = "float32", "float16", "int8"

    def __init__(self, cuda: FakeCuda):
        self.cuda = cuda
        self.deserialized = 0
        trt = self

        class Logger:
            WARNING = 2

            def __init__(self, level):
                pass

        class Context:
            def __init__(self, engine):
                self.engine, self.addresses = engine, {}

            def get_tensor_shape(self, name):
                return self.engine.shapes[name]

            def set_tensor_address(self, name, ptr):
                self.addresses[name] = ptr

            def execute_async_v3(self, stream):
                assert set(self.addresses) == set(self.engine.shapes), "every I/O tensor is bound"
                trt.cuda.enqueue(self.engine.ms)
                return True

        class Engine:
            def __init__(self, blob: bytes):
                import onnx

                from trtprune.latency.fake import model_ms

                assert blob.startswith(b"PLAN"), "not an engine built by the fake trtexec"
                proto = onnx.load_from_string(blob[4:])
                self.ms = model_ms(proto)
                tensors = [*proto.graph.input, *proto.graph.output]
                self.shapes = {t.name: [d.dim_value for d in t.type.tensor_type.shape.dim] for t in tensors}
                self.names = list(self.shapes)

            @property
            def num_io_tensors(self):
                return len(self.names)

            def get_tensor_name(self, i):
                return self.names[i]

            def get_tensor_dtype(self, name):
                return FakeTrt.float32

            def create_execution_context(self):
                return Context(self)

        class Runtime:
            DLA_core = -1

            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, blob):
                trt.deserialized += 1
                return Engine(bytes(blob))

        self.Logger, self.Runtime = Logger, Runtime


def run(timer_path: str, request_path: str) -> int:
    spec = importlib.util.spec_from_file_location("device_timer", timer_path)
    timer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timer)
    cuda = FakeCuda()
    trt = FakeTrt(cuda)
    sleep = float(os.environ.get("FAKE_TIMER_SLEEP", "0") or 0)
    if sleep:
        burst = timer.Loaded.burst

        def slow(self, iterations, warmup):
            time.sleep(sleep)
            return burst(self, iterations, warmup)

        timer.Loaded.burst = slow
    if os.environ.get("FAKE_TIMER_NO_TRT"):
        code = timer.main([request_path], trt=None, cuda=cuda)  # the real import: tensorrt is not installed here
    else:
        code = timer.main([request_path], trt=trt, cuda=cuda)
    with open(os.environ["FAKE_TIMER_LOG"], "a") as f:
        record = {"pid": os.getpid(), "deserialized": trt.deserialized, "captured": cuda.captured}
        f.write(json.dumps({**record, "request": json.loads(Path(request_path).read_text())}) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1], sys.argv[2]))
