"""make bench-lut: how well the LUT predicts whole-network latency of pruned ResNet-56 sub-nets.

Sub-nets: for calibration the dense model, three uniform prunes and a few random sub-nets; for the
test, random per-group channel counts (any count, stair edges or not). Every sub-net is pruned for
real, exported and checked to have exactly the planned layer shapes; all of them are measured whole
in one interleaved run on the device. The LUT provides each layer's latency (missing points are
measured, in one batch), the overhead model ``a + b * sum`` is fitted on the calibration nets only,
and the test nets' predictions are compared with their measurements. Writes bench/results/lut.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.log import progress, setup
from trtprune.profiling.lut import LUT
from trtprune.profiling.predict import Overhead, Predictor, layer_sums
from trtprune.provenance import provenance
from trtprune.pruning.prune import uniform_plan
from trtprune.sources.models import model_spec


def spearman(x, y) -> float:
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def random_plans(groups, n: int, seed: int) -> list[dict[str, int]]:
    rng = np.random.default_rng(seed)
    plans = []
    for _ in range(n):
        ratio = rng.uniform(0.1, 0.8)  # how much of the network this sub-net removes, roughly
        plans.append(
            {
                g.name: int(np.clip(round(g.channels * (1 - ratio) * rng.uniform(0.75, 1.25)), 1, g.channels))
                for g in groups
            }
        )
    return plans


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--subnets", type=int, default=20, help="random test sub-nets (default 20)")
    ap.add_argument("--calibration", type=int, default=5, help="random calibration sub-nets (default 5)")
    ap.add_argument("--lut", help="LUT to read and fill (default: an empty one, so every point is timed now)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="bench/results/lut.json")
    a = ap.parse_args()
    setup(0)
    spec, device = model_spec(a.model), get_device(a.device)
    with (
        tempfile.TemporaryDirectory() as tmp,
        get_backend(device) as backend,
        LUT(a.lut or Path(tmp) / "l.sqlite") as lut,
    ):
        predictor = Predictor(spec.name, backend, lut, tmp)
        groups = predictor.groups
        # calibration: the dense model, two uniform prunes and random sub-nets like the test ones (another
        # seed), so the fitted overhead sees aligned and unaligned counts in the proportions it will predict
        # and the small end too: a linear fit extrapolated below its smallest net misses by 20 %
        calib = [{g.name: g.channels for g in groups}] + [
            uniform_plan(groups, r, k) for r, k in ((0.25, 8), (0.5, 8), (0.8, 4))
        ]
        calib += random_plans(groups, a.calibration, a.seed + 1000)
        tests = random_plans(groups, a.subnets, a.seed)
        plans = calib + tests
        paths = [
            predictor.subnet(p, Path(tmp) / f"net{i}.onnx")
            for i, p in enumerate(progress(plans, desc="prune + export"))
        ]
        measured = [t.median_ms for t in backend.compare(paths, rounds=30)]  # all in one interleaved run
        sums = layer_sums(predictor.profiler, [predictor.points(p) for p in plans])
        info, profiler = backend.info(), predictor.profiler
    k = len(calib)
    overhead = Overhead.fit(sums[:k], measured[:k])
    predicted = [overhead(s) for s in sums]
    err = np.array([(p - m) / m for p, m in zip(predicted[k:], measured[k:])])
    raw = np.array([sum(s.values()) for s in sums]) / np.array(measured)
    result = {
        **provenance("make bench-lut"),
        "model": spec.name,
        "device": info,
        "n_subnets": len(tests),
        "n_calibration": k,
        "median_abs_rel_err": float(np.median(np.abs(err))),
        "max_abs_rel_err": float(np.max(np.abs(err))),
        "spearman": spearman(predicted[k:], measured[k:]),
        "overhead": overhead.to_dict(),
        "raw_sum_over_measured": {"min": float(raw.min()), "max": float(raw.max())},
        "lut_points_measured": profiler.measured,
        "lut_points_requested": profiler.requested,
        "nets": [
            {
                "role": "calibration" if i < k else "test",
                "keep_channels": plan,
                "measured_ms": m,
                "layer_sum_ms": sum(s.values()),
                "layer_sum_ms_per_kernel": s,
                "predicted_ms": p,
            }
            for i, (plan, m, s, p) in enumerate(zip(plans, measured, sums, predicted))
        ],
    }
    write_json(a.out, result)
    terms = " + ".join(f"{b:.3f} x {kind or 'layers'}" for kind, b in overhead.b.items())
    print(
        f"{spec.name} on {device.name}: {len(tests)} random sub-nets, overhead fitted on {k} nets: "
        f"measured = {overhead.a_ms:.3f} ms + {terms}"
    )
    print(f"  plain layer sum / measured: {raw.min():.2f}..{raw.max():.2f}")
    print(
        f"  |predicted - measured| / measured: median {result['median_abs_rel_err']:.1%}, "
        f"max {result['max_abs_rel_err']:.1%}; Spearman {result['spearman']:.3f}"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
