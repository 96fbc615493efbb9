"""Parity of a TensorRT engine with ONNX Runtime on real inputs, within a tolerance stated per precision.

The same ONNX model runs in ONNX Runtime (fp32, CPU: the reference) and as the engine on the device; every
output (a detector has several) is compared batch by batch, by name. Tolerances, relative to the largest
reference value of each output:

* fp32: 1e-2 - TensorRT may use TF32 (10-bit mantissa) for fp32 convolutions on Ampere and newer
  unless told otherwise, so fp32 engines differ from ONNX Runtime at ~1e-3 relative.
* fp16: 5e-2 - half precision keeps ~3 decimal digits; errors add up over a network's depth.
* int8 / best: no elementwise bound; the top-1 class must agree on at least 97 % of the images.

In every precision the top-1 agreement is reported too.
"""

from __future__ import annotations

import logging

import numpy as np

from trtprune.errors import TrtpruneError
from trtprune.latency.ort import ort_session

log = logging.getLogger(__name__)

REL_TOLERANCE = {"fp32": 1e-2, "fp16": 5e-2}
MIN_AGREEMENT = 0.97


def parity(backend, onnx_path, x: np.ndarray, batch: int, max_batches: int = 8) -> dict:
    """``x``: normalised NCHW float32 inputs (at least one batch). Every output of the model is compared (by name;
    ``backend.outputs`` gives a dict of them, or one array for a single output), each relative to its own largest
    reference value. Returns the figures and ``ok``."""

    sess = ort_session(onnx_path, threads=2)
    name = sess.get_inputs()[0].name
    names = [o.name for o in sess.get_outputs()]
    diffs: dict[str, list[float]] = {n: [] for n in names}
    scales: dict[str, list[float]] = {n: [] for n in names}
    agree, seen, scored = 0, 0, None
    for i in range(min(max_batches, len(x) // batch)):
        xb = np.ascontiguousarray(x[i * batch : (i + 1) * batch], dtype=np.float32)
        refs = dict(zip(names, sess.run(None, {name: xb})))
        got = backend.outputs(onnx_path, xb)
        got = got if isinstance(got, dict) else {names[0]: got}
        missing = [n for n in names if n not in got]
        if missing:
            raise TrtpruneError(
                f"the engine of '{onnx_path}' gives no output named {', '.join(missing)} (it gives {', '.join(got)})",
                why="the engine's outputs are compared with ONNX Runtime's by name",
                fix="build the engine from this ONNX file again; report it if the names still differ",
            )
        for n in names:
            g = np.asarray(got[n]).reshape(refs[n].shape)
            diffs[n].append(float(np.abs(g - refs[n]).max()) if g.size else 0.0)
            scales[n].append(float(np.abs(refs[n]).max()) if g.size else 0.0)
        scored = scored or next((n for n in names if refs[n].ndim == 2 and refs[n].shape[1] > 1), "")
        if scored:  # class scores (batch x classes): does the engine pick the same class?
            agree += int(
                (np.asarray(got[scored]).reshape(refs[scored].shape).argmax(1) == refs[scored].argmax(1)).sum()
            )
        seen += len(xb)
    if not seen:
        raise ValueError(f"parity needs at least one batch of {batch} images, got {len(x)}")
    precision = backend.device.precision
    per_output = {n: max(diffs[n]) / max(max(scales[n]), 1e-12) for n in names}
    rel = max(per_output.values())
    out = {
        "precision": precision,
        "images": seen,
        "max_abs_diff": max(max(d) for d in diffs.values()),
        "max_rel_diff": rel,
        "outputs": per_output,  # max |trt - ort| / max |ort| per output
        "top1_agreement": agree / seen if scored else None,
        "tolerance": (
            f"max |trt - ort| <= {REL_TOLERANCE[precision]:g} x max |ort|, per output"
            if precision in REL_TOLERANCE
            else f"top-1 agreement >= {MIN_AGREEMENT:.0%}"
            if scored
            else "not judged: no class scores to compare the top-1 of (int8 has no elementwise bound)"
        ),
    }
    if precision in REL_TOLERANCE:
        out["ok"] = rel <= REL_TOLERANCE[precision]
    else:
        out["ok"] = out["top1_agreement"] >= MIN_AGREEMENT if scored else True
    log.log(
        logging.INFO if out["ok"] else logging.WARNING,
        "parity    | %s | %d images | %d output(s) | max rel diff %.2e | top-1 agreement %s | %s",
        precision,
        seen,
        len(names),
        rel,
        f"{100 * out['top1_agreement']:.1f} %" if scored else "-",
        "within tolerance" if out["ok"] else f"OUTSIDE the tolerance ({out['tolerance']})",
    )
    return out
