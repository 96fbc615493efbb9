"""Parity of a TensorRT engine with ONNX Runtime on real inputs, within a tolerance stated per precision.

The same ONNX model runs in ONNX Runtime (fp32, CPU: the reference) and as the engine on the device; the
logits are compared batch by batch. Tolerances, relative to the largest reference logit:

* fp32: 1e-2 - TensorRT may use TF32 (10-bit mantissa) for fp32 convolutions on Ampere and newer
  unless told otherwise, so fp32 engines differ from ONNX Runtime at ~1e-3 relative.
* fp16: 5e-2 - half precision keeps ~3 decimal digits; errors add up over a network's depth.
* int8 / best: no elementwise bound; the top-1 class must agree on at least 97 % of the images.

In every precision the top-1 agreement is reported too.
"""

from __future__ import annotations

import logging

import numpy as np

from trtprune.latency.ort import ort_session

log = logging.getLogger(__name__)

REL_TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2}
MIN_AGREEMENT = 0.97


def parity(backend, onnx_path, x: np.ndarray, batch: int, max_batches: int = 8) -> dict:
    """``x``: normalised NCHW float32 inputs (at least one batch). Returns the figures and ``ok``."""

    sess = ort_session(onnx_path, threads=2)
    name = sess.get_inputs()[0].name
    diffs, scales, agree, seen = [], [], 0, 0
    for i in range(min(max_batches, len(x) // batch)):
        xb = np.ascontiguousarray(x[i * batch : (i + 1) * batch], dtype=np.float32)
        ref = sess.run(None, {name: xb})[0]
        got = backend.outputs(onnx_path, xb).reshape(ref.shape)
        diffs.append(float(np.abs(got - ref).max()))
        scales.append(float(np.abs(ref).max()))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        seen += len(xb)
    if not seen:
        raise ValueError(f"parity needs at least one batch of {batch} images, got {len(x)}")
    precision = backend.device.precision
    rel = max(diffs) / max(max(scales), 1e-12)
    out = {
        "precision": precision,
        "images": seen,
        "max_abs_diff": max(diffs),
        "max_rel_diff": rel,
        "top1_agreement": agree / seen,
        "tolerance": (
            f"max |trt - ort| <= {REL_TOLERANCE[precision]:g} x max |ort|"
            if precision in REL_TOLERANCE
            else f"top-1 agreement >= {MIN_AGREEMENT:.0%}"
        ),
    }
    if precision in REL_TOLERANCE:
        out["ok"] = rel <= REL_TOLERANCE[precision]
    else:
        out["ok"] = out["top1_agreement"] >= MIN_AGREEMENT
    log.log(
        logging.INFO if out["ok"] else logging.WARNING,
        "parity    | %s | %d images | max rel diff %.2e | top-1 agreement %.1f %% | %s",
        precision,
        seen,
        rel,
        100 * out["top1_agreement"],
        "within tolerance" if out["ok"] else f"OUTSIDE the tolerance ({out['tolerance']})",
    )
    return out
