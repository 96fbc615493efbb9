"""Named devices: a latency backend plus the options that change latency."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import TrtpruneError


@dataclass(frozen=True)
class Device:
    name: str
    backend: str  # key in trtprune.latency.BACKENDS
    batch: int = 1  # the static batch the model is exported and timed with
    threads: int = 1  # intra-op threads; 1 is stable on small CPUs (two threads at batch 1 are erratic)
    precision: str = "fp32"
    description: str = ""


DEVICES: dict[str, Device] = {
    "cpu": Device("cpu", "ort", batch=1, threads=1, description="ONNX Runtime CPU, 1 thread, batch 1"),
    "cpu-b32": Device("cpu-b32", "ort", batch=32, threads=1, description="ONNX Runtime CPU, 1 thread, batch 32"),
    "cpu-2t": Device("cpu-2t", "ort", batch=1, threads=2, description="ONNX Runtime CPU, 2 threads, batch 1"),
}
DEFAULT_DEVICE = "cpu"
# Named in the design; they need the TensorRT backend, which is not part of this build yet.
TENSORRT_DEVICES = ("gpu", "orin", "xavier", "nano")


def get_device(name: str) -> Device:
    if name in DEVICES:
        return DEVICES[name]
    if name in TENSORRT_DEVICES:
        raise TrtpruneError(
            f"device '{name}' needs the TensorRT backend, which this version of trtprune does not have yet",
            why="TensorRT engines are built and timed on the GPU or Jetson they run on",
            fix=f"use a CPU device for now ({', '.join(DEVICES)})",
        )
    raise TrtpruneError(f"unknown device '{name}'", fix=f"use one of {', '.join(DEVICES)}")
