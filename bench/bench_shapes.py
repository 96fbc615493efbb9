"""make bench-shapes: ImageNet-layout networks at 3x224x224, profiled and searched for real on a device.

For each network (ResNet-18 and MobileNetV2 in plain torch.nn, trtprune's built-ins ``resnet18`` and
``mobilenet_v2_imagenet``, random weights: latency does not depend on them) the search starts from an empty
latency table, so every single-layer point it needs is timed now; the row records how many (``measurements``),
the search's wall time, and the dense and pruned networks measured side by side in one interleaved run of the
backend's deciding rounds. Importance is ``l1`` (the weights are random and no ImageNet data is used: only the
latency half is benchmarked). Rows are written to bench/results/shapes.json as each finishes, with their host;
a (network, device, budget, host) already there is not redone.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from trtprune.deploy.export import onnx_from_torch
from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.log import setup
from trtprune.provenance import machine, provenance
from trtprune.pruning.prune import GroupPruner
from trtprune.searching.plan import Budget
from trtprune.searching.runner import search_module
from trtprune.sources.models import build_model, model_spec

NETWORKS = ("resnet18", "mobilenet_v2_imagenet")


def host() -> str:
    m = machine()
    return f"{m.get('cpu', '?')} ({m.get('isa', '?')}, {m.get('cores', '?')} cores)"


def load_rows(path: Path) -> list[dict]:
    return json.loads(path.read_text()).get("rows", []) if path.is_file() else []


def one_row(name: str, device, budget: Budget, method: str, work: Path, quick: bool) -> dict:
    spec = model_spec(name)
    torch.manual_seed(0)
    model = build_model(spec)
    scores = GroupPruner(model, spec.input_shape).scores("l1")
    t0 = time.perf_counter()
    plan = search_module(
        model,
        spec.input_shape,
        device,
        budget,
        method,
        scores=scores,
        workdir=work / "search",
        name=name,
        lut_path=work / "lut.sqlite",  # empty: every point this search needs is timed now
        importance="l1",
        protocol="quick" if quick else "full",
    )
    search_s = time.perf_counter() - t0
    pruned = copy.deepcopy(model)
    GroupPruner(pruned, spec.input_shape).prune_to(plan.keep_channels, scores=scores)
    paths = [work / "dense.onnx", work / "pruned.onnx"]
    onnx_from_torch(model, paths[0], spec.input_shape, device.batch)
    onnx_from_torch(pruned, paths[1], spec.input_shape, device.batch)
    with get_backend(device) as backend:
        dense, small = backend.compare(paths, rounds=backend.deciding_rounds)
        key = backend.key()
    return {
        "model": name,
        "input_shape": list(spec.input_shape),
        "device": device.name,
        "method": method,
        "budget": str(budget),
        "importance": "l1",
        "protocol": "quick" if quick else "full",
        "measurements": plan.meta["points_measured"],
        "measurements_requested": plan.meta["points_requested"],
        "retimed_in_spells": plan.meta["points_retimed"],
        "search_rounds": len(plan.meta.get("rounds", [])),
        "search_s": round(search_s, 1),
        "search_measured_ratio": plan.measured_ms / plan.baseline_ms,
        "baseline_ms": dense.median_ms,
        "measured_ms": small.median_ms,
        "measured_ratio": small.median_ms / dense.median_ms,
        "p90_ms": {"baseline": dense.p90_ms, "pruned": small.p90_ms},
        "n": {"baseline": dense.n, "pruned": small.n},
        "channels_kept": sum(plan.keep_channels.values()),
        "channels": sum(plan.channels.values()),
        "keep_channels": plan.keep_channels,
        "lut_key": key,
        "host": host(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--networks", default=",".join(NETWORKS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default="0.5x")
    ap.add_argument("--method", default="locp")
    ap.add_argument("--quick", action="store_true", help="the quick profiling protocol (not for reported figures)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/shapes.json"))
    a = ap.parse_args(argv)
    setup(0)
    device, budget = get_device(a.device), Budget.from_text(a.budget)
    rows = load_rows(a.out)
    for name in a.networks.split(","):
        done = [
            r
            for r in rows
            if (r["model"], r["device"], r["budget"], r["host"]) == (name, device.name, str(budget), host())
        ]
        if done:
            print(f"{name}: done already on this host ({done[-1]['measured_ratio']:.3f}x)")
            continue
        with tempfile.TemporaryDirectory(prefix="bench-shapes-") as tmp:
            row = one_row(name, device, budget, a.method, Path(tmp), a.quick)
        rows.append(row)
        write_json(a.out, {**provenance("make bench-shapes"), "rows": rows})  # each row as soon as it exists
        print(
            f"{name} {row['input_shape']}: {row['measurements']} points measured, search {row['search_s']:.0f} s, "
            f"{row['baseline_ms']:.2f} -> {row['measured_ms']:.2f} ms = {row['measured_ratio']:.3f}x (one run)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
