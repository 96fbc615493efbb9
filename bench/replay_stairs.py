"""Replay the stair search on the sweeps a `make bench-profile` recorded: points and edges without a device.

Reads a bench/results/profile.json (its ``per_group`` holds two exhaustive sweeps of every group) and runs
:func:`trtprune.profiling.stairs.three_point` on the recorded numbers: driven by the first sweep (the search's
own misses) and by the second (as if its measurements were another sweep's, i.e. with measurement noise),
edges judged against the first. Groups whose layer points are all the same (the blocks of a ResNet stage)
share one search, as latency sharing makes them do on a device. Points are the distinct layer points of the
counts searched, against every count of every group (the exhaustive sweep with sharing). An older record
works too: ``git show 9cee80a:bench/results/profile.json > old.json; python bench/replay_stairs.py old.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from trtprune.deploy.export import onnx_from_torch
from trtprune.profiling.layers import layers_of
from trtprune.profiling.profile import group_layers
from trtprune.profiling.stairs import Tolerance, classify, three_point
from trtprune.pruning.prune import GroupPruner
from trtprune.sources.models import build_model, model_spec


def group_points(model_name: str) -> dict[str, dict[int, set]]:
    import onnx

    spec = model_spec(model_name)
    model = build_model(spec)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_from_torch(model, Path(tmp) / "m.onnx", spec.input_shape, 1)
        layers = layers_of(onnx.load(str(Path(tmp) / "m.onnx")))
    gls = group_layers(GroupPruner(model, spec.input_shape).groups(), layers)
    return {
        gl.group.name: {c: {(s.key(), ci, co) for s, ci, co in gl.points(c)} for c in range(1, gl.group.channels + 1)}
        for gl in gls
    }


def replay(record: dict, points: dict, drive: str, tol: Tolerance) -> dict:
    per_group = record["per_group"]
    first = {}  # one search per distinct point structure
    for g in per_group:
        first.setdefault(json.dumps(sorted(map(sorted, points[g].values()))), g)
    searched, timed, hits, total, extra = {}, set(), 0, 0, 0
    for g in per_group:
        rep = first[json.dumps(sorted(map(sorted, points[g].values())))]
        if rep not in searched:
            lat = per_group[rep][drive]
            searched[rep] = three_point(1, len(lat), lambda cs, lat=lat: {c: lat[c - 1] for c in cs}, tol)
        found = searched[rep]
        for c in found.latency:
            timed |= points[g][c]
        ref, _ = classify({c + 1: v for c, v in enumerate(per_group[g]["latency_exhaustive"])}, tol)
        hits += len(set(ref) & set(found.edges))
        extra += len(set(found.edges) - set(ref))
        total += len(ref)
    every = set().union(*(p for g in points.values() for p in g.values()))
    return {"points": len(timed), "points_exhaustive_shared": len(every), "ratio": len(every) / len(timed),
            "edge_agreement": hits / total, "extra_edges": extra}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("record", nargs="?", default="bench/results/profile.json")
    a = ap.parse_args()
    record = json.loads(Path(a.record).read_text())
    tol = Tolerance(**record.get("tolerance", {}))
    points = group_points(record["model"])
    machine = record.get("machine", {})
    print(f"{a.record}: {record['model']}, {record.get('date', '?')}, {machine.get('cpu', '?')}")
    for drive, what in (("latency_exhaustive", "on the reference's numbers"),
                        ("latency_exhaustive_repeat", "on the second sweep's numbers")):  # fmt: skip
        r = replay(record, points, drive, tol)
        print(f"  {what:32s}: {r['points']} points of {r['points_exhaustive_shared']} ({r['ratio']:.2f}x fewer), "
              f"{r['edge_agreement']:.1%} of the edges, +{r['extra_edges']} others")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
