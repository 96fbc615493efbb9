"""make bench-profile: cost and fidelity of stair discovery on ResNet-56, device cpu.

Three sweeps of every channel group's latency curve on the real engine:
  * exhaustive: every count 1..C of every group, every layer point timed afresh (no sharing);
  * three-point: the stair search with latency sharing, into an empty LUT;
  * a second exhaustive sweep, to show how far two sweeps of the same curves agree (the noise floor).
Figures: measurements and wall time of both methods, and the share of the exhaustive edges that the
three-point search found identically (over all groups), next to the same share between the two
exhaustive sweeps, and for the search replayed on the exhaustive sweep's own numbers (the search's
own misses, without measurement noise). Writes bench/results/profile.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from trtprune.deploy.export import onnx_from_torch
from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.log import setup
from trtprune.profiling.layers import layers_of
from trtprune.profiling.lut import LUT
from trtprune.profiling.profile import Profiler, group_layers
from trtprune.profiling.stairs import Tolerance, agreement, three_point
from trtprune.provenance import provenance
from trtprune.pruning.prune import GroupPruner
from trtprune.sources.models import build_model, model_spec


def sweep(profiler, gls, tol, method):
    t0 = time.perf_counter()
    stairs = {gl.group.name: profiler.stairs(gl, tol, method) for gl in gls}
    return stairs, time.perf_counter() - t0


def edge_agreement(found: dict, reference: dict) -> float:
    hits = sum(len(set(found[g].edges) & set(reference[g].edges)) for g in reference)
    return hits / sum(len(reference[g].edges) for g in reference)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rel", type=float, default=Tolerance.rel, help="relative tolerance of 'same latency'")
    ap.add_argument("--out", default="bench/results/profile.json")
    a = ap.parse_args()
    setup(0)
    import onnx

    spec, device, tol = model_spec(a.model), get_device(a.device), Tolerance(a.rel)
    model = build_model(spec)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_from_torch(model, Path(tmp) / "m.onnx", spec.input_shape, device.batch)
        layers = layers_of(onnx.load(str(Path(tmp) / "m.onnx")))
        gls = group_layers(GroupPruner(model, spec.input_shape).groups(), layers)
        with get_backend(device) as backend, LUT(Path(tmp) / "lut.sqlite") as lut:
            exh = Profiler(backend, lut, share=False)
            exhaustive, exh_s = sweep(exh, gls, tol, "exhaustive")
            fast = Profiler(backend, lut, share=True)
            found, fast_s = sweep(fast, gls, tol, "three_point")
            again, _ = sweep(Profiler(backend, lut, share=False), gls, tol, "exhaustive")
    # the search replayed on the exhaustive sweep's own numbers: what the search misses, noise aside
    replay = {
        g: three_point(1, s.hi, lambda counts, s=s: {c: s.latency[c] for c in counts}, tol)
        for g, s in exhaustive.items()
    }
    result = {
        **provenance("make bench-profile"),
        "model": spec.name,
        "device": backend.info(),
        "tolerance": {"rel": tol.rel, "abs_ms": tol.abs_ms},
        "groups": len(gls),
        "measurements": fast.measured + fast.retimed,  # every point timed, spells' re-timings included
        "measurements_retimed": fast.retimed,
        "measurements_exhaustive": exh.measured + exh.retimed,
        "measurements_exhaustive_retimed": exh.retimed,
        "measurements_ratio": (exh.measured + exh.retimed) / (fast.measured + fast.retimed),
        "wall_s": fast_s,
        "wall_s_exhaustive": exh_s,
        "edge_agreement": edge_agreement(found, exhaustive),
        "edge_agreement_exhaustive_repeat": edge_agreement(again, exhaustive),
        "edge_agreement_same_data": edge_agreement(replay, exhaustive),
        "per_group": {
            g: {
                "channels": s.hi,
                "edges_three_point": list(found[g].edges),
                "edges_exhaustive": list(s.edges),
                "edges_exhaustive_repeat": list(again[g].edges),
                "dips_exhaustive": list(s.dips),
                "points_three_point": len(found[g].latency),
                "agreement": agreement(found[g].edges, s.edges),
                "latency_exhaustive": list(s.latency.values()),
                "latency_exhaustive_repeat": list(again[g].latency.values()),
                "latency_three_point": {str(c): v for c, v in sorted(found[g].latency.items())},
            }
            for g, s in exhaustive.items()
        },
    }
    write_json(a.out, result)
    print(f"{spec.name} on {device.name}: {len(gls)} groups, tolerance {tol.rel:.0%}")
    print(f"  exhaustive, no sharing : {result['measurements_exhaustive']:6d} measurements  {exh_s:7.1f} s")
    print(
        f"  three-point + sharing  : {result['measurements']:6d} measurements  {fast_s:7.1f} s "
        f"({result['measurements_ratio']:.1f}x fewer)"
    )
    print(f"  re-timed in spells     : {fast.retimed} (three-point), {exh.retimed} (exhaustive)")
    print(f"  edges found identically: {result['edge_agreement']:.1%}")
    print(
        f"    two exhaustive sweeps agree on {result['edge_agreement_exhaustive_repeat']:.1%} (measurement noise); "
        f"the search replayed on the sweep's own numbers finds {result['edge_agreement_same_data']:.1%}"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
