"""make bench-confirm: how much a whole-network ratio (pruned / baseline, one interleaved run) moves
between repeated runs, by the number of rounds per run.

The searchers confirm each plan by one such run; a ratio that moves by more than the budget's slack makes
the search loop tighten and loosen on noise. Each repetition is a fresh interleaved run of the two models;
the figure is the spread (min, max, standard deviation) of the ratios over the repetitions, per round count.
Without model files it exports ResNet-56 (random weights: latency does not depend on them) and the same
network uniformly pruned (30 % of every group, multiples of 8). Writes bench/results/confirm.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.log import setup
from trtprune.provenance import provenance


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("baseline", type=Path, nargs="?", help="ONNX of the unpruned model (default: ResNet-56)")
    ap.add_argument("pruned", type=Path, nargs="?", help="ONNX of a pruned model (default: ResNet-56, 30 %% pruned)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", default="30,100", help="round counts to compare, comma-separated")
    ap.add_argument("--repeats", type=int, default=8, help="interleaved runs per round count")
    ap.add_argument("--out", type=Path, default=Path("bench/results/confirm.json"))
    a = ap.parse_args(argv)
    setup(0)
    device = get_device(a.device)
    with tempfile.TemporaryDirectory() as tmp:
        if a.baseline is None or a.pruned is None:
            a.baseline, a.pruned = default_models(Path(tmp), device.batch)
        rows, info = measure(a, device)
    write_json(
        a.out,
        {**provenance("make bench-confirm"), "device": info, "models": [str(a.baseline), str(a.pruned)], "rows": rows},
    )
    print(f"wrote {a.out}")
    return 0


def default_models(tmp: Path, batch: int) -> tuple[Path, Path]:
    import torch

    from trtprune.deploy.export import onnx_from_torch
    from trtprune.pruning.prune import GroupPruner, uniform_plan
    from trtprune.sources.models import build_model

    torch.manual_seed(0)
    paths = tmp / "resnet56.onnx", tmp / "resnet56-pruned.onnx"
    onnx_from_torch(build_model("resnet56"), paths[0], (3, 32, 32), batch)
    model = build_model("resnet56")
    pruner = GroupPruner(model, (3, 32, 32))
    pruner.prune_to(uniform_plan(pruner.groups(), 0.3, 8))
    onnx_from_torch(model, paths[1], (3, 32, 32), batch)
    return paths


def measure(a, device) -> tuple[list[dict], dict]:
    rows = []
    with get_backend(device) as backend:
        for rounds in (int(r) for r in a.rounds.split(",")):
            ratios, base_ms, seconds = [], [], []
            for _ in range(a.repeats):
                t0 = time.perf_counter()
                base, sub = backend.compare([a.baseline, a.pruned], rounds=rounds)
                seconds.append(time.perf_counter() - t0)
                ratios.append(sub.median_ms / base.median_ms)
                base_ms.append(base.median_ms)
            r = np.asarray(ratios)
            rows.append(
                {
                    "rounds": rounds,
                    "ratios": ratios,
                    "baseline_ms": base_ms,
                    "ratio_min": float(r.min()),
                    "ratio_max": float(r.max()),
                    "ratio_std": float(r.std(ddof=1)),
                    "seconds_per_run": float(np.median(seconds)),
                }
            )
            print(
                f"{rounds:4d} rounds | ratio {r.min():.3f} .. {r.max():.3f} (std {r.std(ddof=1):.3f}) | "
                f"baseline {min(base_ms):.3f} .. {max(base_ms):.3f} ms | {np.median(seconds):.1f} s per run"
            )
        return rows, backend.info()


if __name__ == "__main__":
    raise SystemExit(main())
