"""make bench-profile: cost and fidelity of stair discovery on ResNet-56, device cpu.

Four sweeps of every channel group's latency curve on the real engine:
  * exhaustive: every count 1..C of every group, every layer point timed afresh (no sharing): the
    reference edges;
  * exhaustive with sharing: every count, each distinct layer point timed once, into an empty LUT: what
    the search has to beat (on TensorRT a point is an engine build);
  * three-point: the stair search with latency sharing, into another empty LUT;
  * a second exhaustive sweep, to show how far two sweeps of the same curves agree (the noise floor).
Figures: points (distinct layer points timed), measurements (points + witnesses + batches timed again
in spells) and wall time of each; the share of the reference edges that the search found identically
(over all groups), next to the same share between the two exhaustive sweeps and for the search replayed
on the reference's own numbers; edges claimed that the reference does not have; and how far the counts
the search interpolated on slopes are from the reference's measurement. Writes bench/results/profile.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def extra_edges(found: dict, reference: dict) -> int:
    """Edges claimed that the reference does not have."""
    return sum(len(set(found[g].edges) - set(reference[g].edges)) for g in reference)


def interpolation_error(found: dict, reference: dict) -> dict:
    """|interpolated - measured| / measured over the counts the search put on a slope's line."""
    errs = [
        abs(found[g].curve()[c] - reference[g].latency[c]) / reference[g].latency[c]
        for g in reference
        for c in found[g].interpolated()
    ]
    if not errs:
        return {"counts": 0}
    q = np.percentile(errs, [50, 90, 100])
    return {"counts": len(errs), "median": float(q[0]), "p90": float(q[1]), "max": float(q[2])}


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
        with (
            get_backend(device) as backend,
            LUT(Path(tmp) / "lut.sqlite") as lut,
            LUT(Path(tmp) / "lut_shared.sqlite") as lut_shared,
        ):
            exh = Profiler(backend, lut, share=False)
            exhaustive, exh_s = sweep(exh, gls, tol, "exhaustive")
            shared = Profiler(backend, lut_shared, share=True)
            _, shared_s = sweep(shared, gls, tol, "exhaustive")
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
        "points": fast.measured,  # distinct layer points timed (each once, shared)
        "points_exhaustive_shared": shared.measured,
        "points_ratio_vs_shared": shared.measured / fast.measured,
        "measurements_exhaustive_shared": shared.measured + shared.retimed,
        "measurements_ratio_vs_shared": (shared.measured + shared.retimed) / (fast.measured + fast.retimed),
        "wall_s": fast_s,
        "wall_s_exhaustive": exh_s,
        "wall_s_exhaustive_shared": shared_s,
        "edge_agreement": edge_agreement(found, exhaustive),
        "extra_edges": extra_edges(found, exhaustive),
        "extra_edges_exhaustive_repeat": extra_edges(again, exhaustive),
        "edges_reference": sum(len(s.edges) for s in exhaustive.values()),
        "interpolation_error": interpolation_error(found, exhaustive),
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
                "slopes_three_point": found[g].slopes,
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
        f"  exhaustive + sharing   : {shared.measured:6d} points ({result['measurements_exhaustive_shared']} "
        f"measurements)  {shared_s:7.1f} s"
    )
    print(
        f"  three-point + sharing  : {fast.measured:6d} points ({result['measurements']} measurements)  "
        f"{fast_s:7.1f} s  ({result['points_ratio_vs_shared']:.2f}x fewer points than exhaustive + sharing)"
    )
    print(f"  re-timed in spells     : {fast.retimed} (three-point), {exh.retimed} (exhaustive)")
    print(
        f"  edges found identically: {result['edge_agreement']:.1%} of {result['edges_reference']} "
        f"(+{result['extra_edges']} not in the reference; a second sweep: +{result['extra_edges_exhaustive_repeat']})"
    )
    print(f"  interpolated on slopes : {result['interpolation_error']}")
    print(
        f"    two exhaustive sweeps agree on {result['edge_agreement_exhaustive_repeat']:.1%} (measurement noise); "
        f"the search replayed on the sweep's own numbers finds {result['edge_agreement_same_data']:.1%}"
    )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
