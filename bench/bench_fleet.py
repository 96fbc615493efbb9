"""make bench-fleet: profiling wall time with 1 and 2 Ray workers on this machine (issue 7).

ResNet-56's channel groups profiled on device `cpu` (1 thread per measurement) into an empty LUT, by:
  * serial  : the plain profiler in this process, one group after the other (no Ray);
  * ray-1   : `--ray local --ray-workers 1` (one worker process, two group searches in flight);
  * ray-2   : `--ray local --ray-workers 2` (two workers on the two cores, four searches in flight).
Each is run for the exhaustive sweep with latency sharing (the same points every time, so runs compare
point by point) and for the three-point search, and each configuration twice in alternating order. Wall
time counts profiling only; starting the Ray cluster and its workers is reported apart. Fidelity: the
median relative difference of each point's latency (as a ratio to the reference layer timed beside it)
between runs - does timing two layers at once on two cores change what is measured?
Writes bench/results/fleet.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from trtprune.deploy.export import onnx_from_torch
from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.log import setup
from trtprune.profiling.fleet import Fleet
from trtprune.profiling.layers import layers_of
from trtprune.profiling.lut import LUT
from trtprune.profiling.profile import Profiler, group_layers, profile_groups
from trtprune.profiling.stairs import Tolerance
from trtprune.provenance import provenance
from trtprune.pruning.prune import GroupPruner
from trtprune.sources.models import build_model, model_spec

CONFIGS = ("serial", "ray-1", "ray-2")


def run(config: str, device, gls, tol, method: str, lut_path: Path) -> dict:
    """One profile into an empty LUT; its wall times and the LUT's values as ratios to the reference."""
    t0 = time.perf_counter()
    workers = 0 if config == "serial" else int(config.split("-")[1])
    measurer = get_backend(device) if not workers else Fleet(device, "local", workers=workers)
    with measurer, LUT(lut_path) as lut:
        start_s = time.perf_counter() - t0
        profiler = Profiler.on(measurer, lut)
        t1 = time.perf_counter()
        stairs = profile_groups(profiler, gls, tol, method)
        wall_s = time.perf_counter() - t1
        key = profiler.key()
        nominal = lut.reference_ms(key)
        values = {p: e.ms / nominal for p, e in lut.get_many(key, lut.points(key)).items()}
        jobs = measurer.summary()["jobs_per_worker"] if workers else {}
    return {
        "config": config,
        "method": method,
        "workers": workers,
        "start_s": start_s,
        "wall_s": wall_s,
        "measured": profiler.measured,
        "requested": profiler.requested,
        "batches_per_worker": sorted(jobs.values()),
        "edges": {g: list(s.edges) for g, s in stairs.items()},
        "_values": values,
    }


def baseline(r: dict, serial: list[dict]) -> dict:
    others = [s for s in serial if s is not r]
    return next((s for s in others if s["repeat"] == r["repeat"]), others[0] if others else r)["_values"]


def difference(a: dict, b: dict) -> float | None:
    """Median |a/b - 1| over the points both runs measured."""
    common = a.keys() & b.keys()
    return statistics.median(abs(a[p] / b[p] - 1) for p in common) if common else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--methods", default="exhaustive,three_point")
    ap.add_argument("--out", default="bench/results/fleet.json")
    a = ap.parse_args()
    setup(0)
    import onnx

    spec, device, tol = model_spec(a.model), get_device(a.device), Tolerance()
    model = build_model(spec)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        onnx_from_torch(model, Path(tmp) / "m.onnx", spec.input_shape, device.batch)
        gls = group_layers(
            GroupPruner(model, spec.input_shape).groups(), layers_of(onnx.load(str(Path(tmp) / "m.onnx")))
        )
        for method in a.methods.split(","):
            for rep in range(a.repeats):
                for config in CONFIGS if rep % 2 == 0 else CONFIGS[::-1]:
                    r = run(config, device, gls, tol, method, Path(tmp) / f"{method}-{config}-{rep}.sqlite")
                    r["repeat"] = rep
                    runs.append(r)
                    print(
                        f"{method:11s} {config:6s} #{rep}: {r['wall_s']:6.1f} s profiling (+{r['start_s']:4.1f} s "
                        f"start), {r['measured']} points, batches per worker {r['batches_per_worker']}",
                        flush=True,
                    )
    summary = {}
    for method in a.methods.split(","):
        mine = [r for r in runs if r["method"] == method]
        serial = [r for r in mine if r["config"] == "serial"]
        rows = {}
        for config in CONFIGS:
            rs = [r for r in mine if r["config"] == config]
            rows[config] = {
                "wall_s": [r["wall_s"] for r in rs],
                "wall_s_median": statistics.median(r["wall_s"] for r in rs),
                "start_s": [r["start_s"] for r in rs],
                "measured": [r["measured"] for r in rs],
                # against the serial run of the same repeat (a serial run: against the other serial run,
                # which is the noise floor between two runs)
                "value_difference_vs_serial": [difference(r["_values"], baseline(r, serial)) for r in rs],
            }
        one, two = rows["ray-1"]["wall_s_median"], rows["ray-2"]["wall_s_median"]
        summary[method] = {
            **rows,
            "speedup_2_vs_1_workers": one / two,
            "speedup_2_workers_vs_serial": (rows["serial"]["wall_s_median"] / two),
        }
    for r in runs:
        del r["_values"]
    result = {
        **provenance("make bench-fleet"),
        "model": spec.name,
        "device": device.name,
        "groups": len(gls),
        "summary": summary,
        "runs": runs,
    }
    write_json(a.out, result)
    for method, s in summary.items():
        print(
            f"{method}: serial {s['serial']['wall_s_median']:.1f} s, 1 worker {s['ray-1']['wall_s_median']:.1f} s, "
            f"2 workers {s['ray-2']['wall_s_median']:.1f} s ({s['speedup_2_vs_1_workers']:.2f}x vs 1 worker)"
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
