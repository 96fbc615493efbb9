"""The resident timer: times a batch of TensorRT engines on the device, each loaded once, rounds interleaved.

This file is copied to the device and run there by its own Python (JetPack 5 ships 3.8, JetPack 6 3.10),
with nothing but the standard library, TensorRT's Python bindings and the CUDA runtime library (through
``ctypes``; no numpy, pycuda or torch). trtprune starts it once per batch of engines, where ``trtexec
--loadEngine`` would start once per engine per round (a CUDA context and an engine load each time).

Protocol. argv: ``device_timer.py REQUEST.json``; the request is ``{"engines": [paths], "rounds": R,
"iterations": N, "warmup": W, "seed": S, "dla_core": null | k}``. One JSON object is printed on stdout:
``{"tensorrt": version, "gpu": name, "graphs": [bool per engine], "order": [[engine indices] per round],
"bursts": [[{"start_s": t, "ms": [N per-inference times]} per round] per engine]}``, or ``{"error": message}``
with exit status 2. The timer reads its stdin until end-of-file and exits (status 3) when it gets there: the
caller holds stdin open while it waits, so a caller that dies - or an ``ssh`` that is killed, whose remote end
then closes the timer's stdin - stops the timer too.

Method (NVIDIA, "Best Practices for TensorRT Performance": CUDA graphs remove launch overhead; per-inference
GPU time between CUDA events): every engine is deserialized once, its I/O buffers allocated with
``cudaMalloc`` and bound by name (``set_tensor_address``), one inference run to finish lazy initialisation,
then one inference captured into a CUDA graph (``cudaStreamBeginCapture`` / ``execute_async_v3`` /
``cudaStreamEndCapture`` / ``cudaGraphInstantiateWithFlags``; where capture fails - DLA engines - the plain
enqueue is timed, and ``graphs`` says so). Each round shuffles the engine order with the seed; a burst is W
untimed and N timed launches back to back, with an event recorded between launches, so the i-th time is the
GPU time of the i-th inference. Names checked against the TensorRT Python API reference (``IRuntime``,
``ICudaEngine.num_io_tensors / get_tensor_name / get_tensor_shape / get_tensor_dtype``,
``IExecutionContext.set_tensor_address / execute_async_v3``, 8.5 and later) and the CUDA runtime API
(``cudaGraphInstantiateWithFlags`` from CUDA 11.4; JetPack 5 has 11.4, JetPack 6 12.x).
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import sys
import threading
import time

_CAPTURE_THREAD_LOCAL = 1  # cudaStreamCaptureModeThreadLocal: the stdin watcher thread cannot break a capture
_CUDART = ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "/usr/local/cuda/lib64/libcudart.so")


class CudaError(RuntimeError):
    pass


class Cuda:
    """The few CUDA runtime calls the timer makes, through ctypes."""

    def __init__(self, lib):
        self.lib = lib

    @classmethod
    def load(cls) -> Cuda:
        for name in _CUDART:
            try:
                return cls(ctypes.CDLL(name))
            except OSError:
                continue
        raise CudaError(f"the CUDA runtime library was not found (tried {', '.join(_CUDART)})")

    def _ok(self, code: int, what: str) -> None:
        if code != 0:
            raise CudaError(f"{what} failed with CUDA error {code}")

    def _handle(self, fn: str, *args) -> int:
        h = ctypes.c_void_p()
        self._ok(getattr(self.lib, fn)(ctypes.byref(h), *args), fn)
        return h.value or 0

    def malloc(self, size: int) -> int:
        return self._handle("cudaMalloc", ctypes.c_size_t(max(size, 1)))

    def stream(self) -> int:
        return self._handle("cudaStreamCreate")

    def event(self) -> int:
        return self._handle("cudaEventCreate")

    def record(self, event: int, stream: int) -> None:
        self._ok(self.lib.cudaEventRecord(ctypes.c_void_p(event), ctypes.c_void_p(stream)), "cudaEventRecord")

    def synchronize(self, event: int) -> None:
        self._ok(self.lib.cudaEventSynchronize(ctypes.c_void_p(event)), "cudaEventSynchronize")

    def elapsed_ms(self, start: int, end: int) -> float:
        ms = ctypes.c_float()
        self._ok(
            self.lib.cudaEventElapsedTime(ctypes.byref(ms), ctypes.c_void_p(start), ctypes.c_void_p(end)),
            "cudaEventElapsedTime",
        )
        return float(ms.value)

    def stream_synchronize(self, stream: int) -> None:
        self._ok(self.lib.cudaStreamSynchronize(ctypes.c_void_p(stream)), "cudaStreamSynchronize")

    def begin_capture(self, stream: int) -> None:
        self._ok(self.lib.cudaStreamBeginCapture(ctypes.c_void_p(stream), _CAPTURE_THREAD_LOCAL), "capture")

    def end_capture(self, stream: int) -> int:
        graph = ctypes.c_void_p()
        self._ok(self.lib.cudaStreamEndCapture(ctypes.c_void_p(stream), ctypes.byref(graph)), "cudaStreamEndCapture")
        return self._handle("cudaGraphInstantiateWithFlags", graph, ctypes.c_ulonglong(0))

    def launch(self, graph: int, stream: int) -> None:
        self._ok(self.lib.cudaGraphLaunch(ctypes.c_void_p(graph), ctypes.c_void_p(stream)), "cudaGraphLaunch")

    def device_name(self) -> str:
        prop = ctypes.create_string_buffer(4096)  # cudaDeviceProp starts with char name[256]
        for fn in ("cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"):
            if hasattr(self.lib, fn) and getattr(self.lib, fn)(prop, 0) == 0:
                return prop.raw[:256].split(b"\0", 1)[0].decode(errors="replace")
        return "unknown"


def import_tensorrt():
    import tensorrt

    return tensorrt


def _itemsize(trt, dtype) -> int:
    sizes = {"float32": 4, "float16": 2, "bfloat16": 2, "int8": 1, "uint8": 1, "bool": 1, "int32": 4, "int64": 8}
    for name, size in sizes.items():
        if hasattr(trt, name) and dtype == getattr(trt, name):
            return size
    return 4


class Loaded:
    """One engine, deserialized, bound to device buffers, with a captured graph where possible."""

    def __init__(self, trt, cuda: Cuda, runtime, path: str, stream: int, dla: bool):
        with open(path, "rb") as f:
            self.engine = runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}")
        self.context = self.engine.create_execution_context()
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            count = 1
            for d in self.context.get_tensor_shape(name):
                count *= max(int(d), 1)
            self.context.set_tensor_address(
                name, cuda.malloc(count * _itemsize(trt, self.engine.get_tensor_dtype(name)))
            )
        self.cuda, self.stream, self.graph, self.events = cuda, stream, None, []
        self._enqueue()  # lazy initialisation happens on the first inference, outside any capture
        cuda.stream_synchronize(stream)
        if not dla:  # CUDA graphs cannot hold DLA work
            try:
                cuda.begin_capture(stream)
                self._enqueue()
                self.graph = cuda.end_capture(stream)
            except CudaError:
                self.graph = None
        cuda.stream_synchronize(stream)

    def _enqueue(self) -> None:
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("execute_async_v3 failed")

    def run(self) -> None:
        if self.graph is not None:
            self.cuda.launch(self.graph, self.stream)
        else:
            self._enqueue()

    def burst(self, iterations: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            self.run()
        while len(self.events) < iterations + 1:  # made once, reused by every burst
            self.events.append(self.cuda.event())
        events = self.events[: iterations + 1]
        self.cuda.record(events[0], self.stream)
        for k in range(iterations):
            self.run()
            self.cuda.record(events[k + 1], self.stream)
        self.cuda.synchronize(events[-1])
        return [self.cuda.elapsed_ms(a, b) for a, b in zip(events, events[1:])]


def serve(request: dict, trt, cuda: Cuda) -> dict:
    """Load every engine once, then time the rounds in seeded random order (the response described above)."""
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    dla = request.get("dla_core")
    if dla is not None:
        runtime.DLA_core = int(dla)
    stream = cuda.stream()
    loaded = [Loaded(trt, cuda, runtime, p, stream, dla is not None) for p in request["engines"]]
    rng = random.Random(request.get("seed", 0))
    bursts = [[] for _ in loaded]
    orders = []
    t0 = time.perf_counter()
    for _ in range(int(request["rounds"])):
        order = list(range(len(loaded)))
        rng.shuffle(order)
        orders.append(order)
        for i in order:
            start = time.perf_counter() - t0
            bursts[i].append(
                {"start_s": start, "ms": loaded[i].burst(int(request["iterations"]), int(request["warmup"]))}
            )
    return {
        "tensorrt": getattr(trt, "__version__", "unknown"),
        "gpu": cuda.device_name(),
        "graphs": [e.graph is not None for e in loaded],
        "order": orders,
        "bursts": bursts,
    }


def _watch_stdin() -> None:
    """Exit when stdin reaches end-of-file: the caller (or the ssh that connects it) is gone."""
    try:
        while sys.stdin.buffer.read(4096):
            pass
    except (OSError, ValueError):
        pass
    os._exit(3)


def main(argv=None, trt=None, cuda=None, watch: bool = True) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if watch:
        threading.Thread(target=_watch_stdin, daemon=True).start()
    try:
        with open(argv[0]) as f:
            request = json.load(f)
        if trt is None:
            try:
                trt = import_tensorrt()
            except ImportError as e:
                raise RuntimeError(
                    f"TensorRT's Python bindings do not import with {sys.executable} ({e}): install them for this "
                    "Python (JetPack: sudo apt install python3-libnvinfer; elsewhere the tensorrt wheel of the same "
                    "version as trtexec)"
                ) from None
        response = serve(request, trt, cuda or Cuda.load())
    except Exception as e:  # any failure is reported as one JSON line the caller turns into its error
        sys.stdout.write(json.dumps({"error": f"{type(e).__name__}: {e}"}) + "\n")
        sys.stdout.flush()
        return 2
    sys.stdout.write(json.dumps(response) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
