"""make bench-int8: INT8 post-training quantization of the published ResNet-56 - accuracy and CPU latency.

The fp32 model is exported to ONNX at the batch of each device (cpu: 1, cpu-b32: 32), calibrated on
``--calib-n`` CIFAR-10 training images (evenly spaced over the 50,000) and quantized to TensorRT's
explicit-quantization form (symmetric int8 Q/DQ, weights per channel; trtprune.deploy.quantize). Top-1 of the fp32
and the INT8 ONNX models is measured in ONNX Runtime on all 10,000 test images, with the batch-32 models -
the same files that are timed on cpu-b32 - and so is the share of images on which both predict the same
class. The issue's target: INT8 within 1 point of fp32. With ``--methods auto`` minmax is tried first and
entropy and percentile only if minmax misses the target; every method tried is reported. Then, per device,
fp32 and INT8 are timed side by side in one interleaved run (the ort backend's protocol).

The CPU latencies are ONNX Runtime's QDQ kernels on this CPU, not TensorRT's: they say what INT8 buys here,
not on a GPU or Jetson. Needs the real data (TRTPRUNE_DATA or --data, e.g. ../shared/data); without it the
benchmark says so and exits with status 2. Writes bench/results/int8.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from trtprune.deploy.export import onnx_from_torch
from trtprune.deploy.quantize import METHODS, calib_array, qdq_from_onnx, qdq_summary
from trtprune.errors import TrtpruneError
from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.latency.ort import ort_session
from trtprune.log import progress, setup
from trtprune.provenance import provenance
from trtprune.sources import datasets as D
from trtprune.sources.datasets import find_cifar10, load_split
from trtprune.sources.weights import load_model, resolve_weights

MODEL = "resnet56"


def data_or_exit(data: str | None) -> str:
    """The data root holding CIFAR-10 and the ResNet-56 weights; the benchmark stops (status 2) without it."""
    root = data or os.environ.get("TRTPRUNE_DATA")
    missing = "no data folder given (--data or TRTPRUNE_DATA)"
    if root:
        try:
            resolve_weights(MODEL, None, root)
            missing = next((f"no CIFAR-10 {s} set" for s in ("train", "test") if not find_cifar10(root, s)), "")
        except TrtpruneError as e:
            missing = e.what
    if missing:
        print(
            f"bench-int8 skipped: it needs the real CIFAR-10 and the published ResNet-56 weights: {missing}.\n"
            "  Set TRTPRUNE_DATA to a folder with cifar10/ and weights/ (e.g. ../shared/data).",
            file=sys.stderr,
        )
        sys.exit(2)
    return root


def logits_onnx(path: Path, x: np.ndarray, spec, threads: int, desc: str) -> np.ndarray:
    """Logits of an ONNX model on uint8 NHWC images, batched as trtprune.metrics.top1_onnx does."""
    sess = ort_session(path, threads)
    inp = sess.get_inputs()[0]
    batch = inp.shape[0]
    xt, yt = D.to_tensor(x), torch.zeros(len(x), dtype=torch.int64)
    out = []
    for xb, _ in progress(D.batches(xt, yt, batch, spec.mean, spec.std), total=-(-len(x) // batch), desc=desc):
        n = len(xb)
        if n < batch:
            xb = torch.cat([xb, xb.new_zeros(batch - n, *xb.shape[1:])])
        out.append(sess.run(None, {inp.name: xb.numpy()})[0][:n])
    return np.concatenate(out)


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float((logits.argmax(1) == y).mean())


def scale_gap(a: Path, b: Path) -> float | None:
    """Largest relative difference between the sorted Q/DQ scales of two models (None: not comparable)."""
    sa, sb = (np.sort(np.concatenate([np.ravel(s) for s in qdq_summary(p)["scales"]])) for p in (a, b))
    return float(np.max(np.abs(sa / sb - 1))) if sa.shape == sb.shape else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="folder with cifar10/ and weights/ (default: TRTPRUNE_DATA)")
    ap.add_argument("--calib-n", type=int, default=512, help="calibration images from the training set (512)")
    ap.add_argument(
        "--methods",
        default="auto",
        help=f"calibration methods to try, comma-separated from {', '.join(METHODS)}; 'auto' (default): "
        "minmax, then entropy and percentile only if minmax misses the target",
    )
    ap.add_argument("--target", type=float, default=1.0, help="allowed top-1 loss in points (1.0)")
    ap.add_argument("--devices", default="cpu,cpu-b32")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the evaluation (1)")
    ap.add_argument("--rounds", type=int, default=30, help="rounds of the interleaved latency run (30)")
    ap.add_argument("--limit", type=int, default=0, help="evaluate on the first N test images only (0: all)")
    ap.add_argument("--keep", help="keep the ONNX models in this folder (default: a temporary one)")
    ap.add_argument("--out", default="bench/results/int8.json")
    a = ap.parse_args()
    setup(0)
    root = data_or_exit(a.data)
    devices = [get_device(d) for d in a.devices.split(",")]
    methods = ["minmax"] if a.methods == "auto" else a.methods.split(",")
    weights = resolve_weights(MODEL, None, root)
    model, spec = load_model(MODEL, weights)
    train_x, _ = load_split(root, "train")
    test_x, test_y = load_split(root, "test", a.limit)
    calib = calib_array(train_x, spec, a.calib_n, "the CIFAR-10 training set")
    del train_x

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        work = Path(a.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        batches = sorted({d.batch for d in devices})
        fp32 = {b: work / f"{MODEL}-fp32-b{b}.onnx" for b in batches}
        for b, path in fp32.items():
            onnx_from_torch(model, path, spec.input_shape, b)
        eval_batch = max(batches)

        t0 = time.perf_counter()
        ref = logits_onnx(fp32[eval_batch], test_x, spec, a.threads, "fp32 eval")
        fp32_top1, fp32_eval_s = top1(ref, test_y), time.perf_counter() - t0
        print(f"fp32  top-1 {fp32_top1:.2f} % ({len(test_y)} test images, ONNX Runtime, batch {eval_batch})")

        tried = []
        while methods:
            method = methods.pop(0)
            out = work / f"{MODEL}-int8-{method}-b{eval_batch}.onnx"
            t0 = time.perf_counter()
            qdq_from_onnx(fp32[eval_batch], out, calib, method=method)
            quantize_s = time.perf_counter() - t0
            got = logits_onnx(out, test_x, spec, a.threads, f"int8 {method} eval")
            row = {
                "method": method,
                "int8_top1": top1(got, test_y),
                "delta_points": top1(got, test_y) - fp32_top1,
                "agreement": 100.0 * float((got.argmax(1) == ref.argmax(1)).mean()),
                "quantize_s": quantize_s,
                "path": out,
            }
            tried.append(row)
            print(
                f"int8  top-1 {row['int8_top1']:.2f} % with {method} ({row['delta_points']:+.2f} points; "
                f"same class as fp32 on {row['agreement']:.2f} % of images; quantized in {quantize_s:.0f} s)"
            )
            if a.methods == "auto" and method == "minmax" and row["delta_points"] < -a.target:
                methods += ["entropy", "percentile"]
        meeting = [r for r in tried if r["delta_points"] >= -a.target]
        best = meeting[0] if meeting else max(tried, key=lambda r: r["delta_points"])
        method = best["method"]

        int8 = {eval_batch: best["path"]}
        for b in batches:
            if b != eval_batch:
                int8[b] = qdq_from_onnx(fp32[b], work / f"{MODEL}-int8-{method}-b{b}.onnx", calib, method=method)
        scale_gaps = {f"batch {b}": scale_gap(p, int8[eval_batch]) for b, p in int8.items() if b != eval_batch}
        summary = qdq_summary(int8[eval_batch])

        # ONNX Runtime's own CPU form (uint8 asymmetric activations): what to deploy on the CPU devices
        ort_int8 = {b: work / f"{MODEL}-int8ort-{method}-b{b}.onnx" for b in batches}
        for b, path in ort_int8.items():
            qdq_from_onnx(fp32[b], path, calib, method=method, target="ort")
        got = logits_onnx(ort_int8[eval_batch], test_x, spec, a.threads, "int8 (ort form) eval")
        ort_form = {
            "format": "ONNX QDQ for ONNX Runtime's CPU: uint8 asymmetric activations, int8 symmetric per-channel "
            "weights, int32 bias (TensorRT does not accept it)",
            "int8_top1": top1(got, test_y),
            "delta_points": top1(got, test_y) - fp32_top1,
            "agreement": 100.0 * float((got.argmax(1) == ref.argmax(1)).mean()),
        }
        print(f"int8 (ort form) top-1 {ort_form['int8_top1']:.2f} % ({ort_form['delta_points']:+.2f} points)")

        latency = {}
        for device in devices:
            b = device.batch
            with get_backend(device) as backend:
                t_fp32, t_int8, t_ort = backend.compare([fp32[b], int8[b], ort_int8[b]], rounds=a.rounds)
                info = backend.info()
            latency[device.name] = {
                "fp32": t_fp32.to_dict(),
                "int8": t_int8.to_dict(),
                "speedup": t_fp32.median_ms / t_int8.median_ms,
                "int8_ort_form": t_ort.to_dict(),
                "speedup_ort_form": t_fp32.median_ms / t_ort.median_ms,
                "device": info,
            }
            print(
                f"{device.name:8s} fp32 {t_fp32.median_ms:.3f} ms | int8 (TensorRT form) {t_int8.median_ms:.3f} ms "
                f"({latency[device.name]['speedup']:.2f}x) | int8 (ort form) {t_ort.median_ms:.3f} ms "
                f"({latency[device.name]['speedup_ort_form']:.2f}x)"
            )

    result = {
        **provenance(),
        "model": MODEL,
        "weights": Path(weights).name,
        "calibration": {
            "method": method,
            "images": len(calib),
            "source": "CIFAR-10 training set, evenly spaced",
            "format": "ONNX QDQ: int8 symmetric activations (per tensor), int8 symmetric weights (per channel), "
            "fp32 bias; onnxruntime.quantization.quantize_static",
            "quantize_nodes": summary["quantize"],
            "dequantize_nodes": summary["dequantize"],
            "all_zero_points_zero": all(z is not None and not np.any(z) for z in summary["zero_points"]),
            # the other batches' INT8 models are calibrated separately on the same images: how far their scales
            # are from those of the evaluated model (fp32 rounding differs between batch sizes)
            "max_rel_scale_gap_to_evaluated_model": scale_gaps,
        },
        "eval": {
            "images": len(test_y),
            "batch": eval_batch,
            "engine": "onnxruntime CPUExecutionProvider",
            "threads": a.threads,
            "fp32_eval_s": fp32_eval_s,
        },
        "target_points": a.target,
        "fp32_top1": fp32_top1,
        "int8_top1": best["int8_top1"],
        "delta_points": best["delta_points"],
        "meets_target": best["delta_points"] >= -a.target,
        "methods_tried": [{k: v for k, v in r.items() if k != "path"} for r in tried],
        "ort_form": ort_form,
        "latency": latency,
    }
    earlier = json.loads(Path(a.out).read_text()) if Path(a.out).is_file() else {}
    result.update({k: earlier[k] for k in ("rows", "rows_run") if k in earlier})  # bench_int8_plans.py's rows
    write_json(a.out, result)
    verdict = "meets" if result["meets_target"] else "MISSES"
    print(
        f"{verdict} the target: int8 {result['int8_top1']:.2f} % vs fp32 {fp32_top1:.2f} % "
        f"({result['delta_points']:+.2f} points, {method}, {len(calib)} calibration images)"
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
