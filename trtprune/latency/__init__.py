"""Latency backends: one small interface, one registry line per engine.

``BACKENDS`` maps a name to ``"module:Class"`` so that listing backends imports nothing heavy; a
backend's engine (onnxruntime, tensorrt) is imported only when the backend is activated.
"""

from __future__ import annotations

import importlib

from trtprune.errors import TrtpruneError
from trtprune.latency.base import Backend, Timing

BACKENDS: dict[str, str] = {
    "ort": "trtprune.latency.ort:OrtBackend",  # ONNX Runtime, CPU execution provider
    "trt": "trtprune.latency.trt:TrtBackend",  # TensorRT via trtexec (or its Python API) on this machine
    "ssh": "trtprune.latency.ssh:SshBackend",  # TensorRT via trtexec on a device over ssh (Jetsons)
    "fake": "trtprune.latency.fake:FakeBackend",  # deterministic formula, for tests only (no device uses it)
}
TEST_ONLY_BACKENDS = ("fake",)  # never listed to users: a fake latency is never a measurement


def get_backend(device) -> Backend:
    """An (inactive) backend for a :class:`trtprune.latency.devices.Device`; use it as a context manager."""
    if device.backend not in BACKENDS:
        raise TrtpruneError(
            f"device '{device.name}' needs backend '{device.backend}', which is not available",
            fix=f"available backends: {', '.join(BACKENDS)}",
        )
    module, cls = BACKENDS[device.backend].split(":")
    return getattr(importlib.import_module(module), cls)(device)


__all__ = ["BACKENDS", "Backend", "Timing", "get_backend"]
