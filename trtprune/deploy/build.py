"""The deployable model for a device: an ONNX file for ONNX Runtime, a TensorRT ``.plan`` built on the device."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from trtprune.deploy.export import onnx_from_torch
from trtprune.deploy.quantize import qdq_from_onnx
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engine:
    path: Path
    device: str
    key: str  # the backend's: engine and version, hardware, threads, batch, precision
    kind: str  # "ONNX model" (ONNX Runtime) or "TensorRT engine"


def engine_from_model(
    model: nn.Module, input_shape: tuple[int, int, int], device, out: str | Path, calib: np.ndarray | None = None
) -> Engine:
    """Export ``model`` at the device's batch and deliver it at ``out``: the checked ONNX file itself for ONNX
    Runtime devices; for TensorRT devices the engine built on the device (from the calibrated Q/DQ model for
    int8 ones: ``calib``, normalised float32 NCHW images, is then required)."""
    out = Path(out)
    with get_backend(device) as backend:
        if not backend.builds_engines:
            onnx_from_torch(model, out, input_shape, device.batch)
            return Engine(out, device.name, backend.key(), "ONNX model")
        if device.precision == "int8" and calib is None:
            raise TrtpruneError(
                f"device '{device.name}' runs INT8: its engine is built from a calibrated Q/DQ model",
                fix="give calibration images (the CLI takes them from the training set)",
            )
        with tempfile.TemporaryDirectory(prefix="trtprune-build-") as tmp:
            onnx = Path(tmp) / "model.onnx"
            onnx_from_torch(model, onnx, input_shape, device.batch)
            if device.precision == "int8":
                onnx = qdq_from_onnx(onnx, Path(tmp) / "int8.onnx", calib)
            backend.build(onnx, out)
        log.info("build     | %s: TensorRT engine for %s (%s)", out, device.name, backend.key())
        return Engine(out, device.name, backend.key(), "TensorRT engine")
