"""The deployable model for a device: an ONNX file for ONNX Runtime, a TensorRT ``.plan`` built on the device."""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from trtprune.deploy.export import onnx_from_torch
from trtprune.deploy.quantize import qdq_from_onnx
from trtprune.errors import TrtpruneError
from trtprune.fsutil import atomic_path
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
    int8 ones: ``calib``, normalised float32 NCHW images, is then required); an int8 ONNX Runtime device gets
    the Q/DQ ONNX model in its form (``Device.int8_form``)."""
    out = Path(out)
    if device.int8_form and calib is None:
        raise TrtpruneError(
            f"device '{device.name}' runs INT8: its model is a calibrated Q/DQ model",
            fix="give calibration images (the CLI takes them from the training set)",
        )
    with get_backend(device) as backend, tempfile.TemporaryDirectory(prefix="trtprune-build-") as tmp:
        onnx = Path(tmp) / "model.onnx"
        onnx_from_torch(model, onnx, input_shape, device.batch)
        if device.int8_form:
            onnx = qdq_from_onnx(onnx, Path(tmp) / "int8.onnx", calib, target=device.int8_form)
        if not backend.builds_engines:
            with atomic_path(out) as tmp_out:
                shutil.copyfile(onnx, tmp_out)
            return Engine(out, device.name, backend.key(), "INT8 Q/DQ ONNX model" if device.int8_form else "ONNX model")
        backend.build(onnx, out)
        log.info("build     | %s: TensorRT engine for %s (%s)", out, device.name, backend.key())
        return Engine(out, device.name, backend.key(), "TensorRT engine")
