"""make bench-importance: the importance criteria compared on the searchers' accuracy proxy.

For each criterion (l1, taylor, fisher, dynamic) and channel floor: search a plan for the published ResNet-56 at
the budget on the device with that criterion as the search's cost (LOCP, shared LUT), prune with the same
criterion, and score the pruned model before any fine-tuning by the proxy (EagleEye: BatchNorm re-estimated on
training batches, top-1 on the last 5,000 training images - never the test set). Each row records the plan's
measured latency ratio (from the search's last confirmation), the importance it removed and the channels kept.

Rows go to ``bench/results/importance.json`` as each finishes, with the host; a row already there for this
host's device key is not redone, so an interrupted run resumes and other hosts add their own rows.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.log import setup
from trtprune.provenance import provenance
from trtprune.pruning.prune import GroupPruner
from trtprune.searching import Budget
from trtprune.searching.runner import channel_scores, search
from trtprune.sources.datasets import load_split
from trtprune.sources.weights import load_model, resolve_weights
from trtprune.training.proxy import adaptive_bn_top1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--budget", default="0.5x")
    ap.add_argument("--criteria", default="l1,taylor,fisher,dynamic")
    ap.add_argument("--floors", default="0.1", help="comma-separated min_fraction of each group's channels kept")
    ap.add_argument("--lut", default=None, help="latency table (default: the user cache's)")
    ap.add_argument("--data")
    ap.add_argument("--out", default="bench/results/importance.json")
    a = ap.parse_args()
    setup(0)
    device, budget = get_device(a.device), Budget.parse(a.budget)
    weights = resolve_weights(a.model, None, a.data)
    train = load_split(a.data, "train")
    out = Path(a.out)
    record = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    with get_backend(device) as backend:
        key = backend.key()
    for floor in [float(f) for f in a.floors.split(",")]:
        for criterion in a.criteria.split(","):
            row_id = (a.model, criterion, str(budget), floor, key)
            ids = [(r["model"], r["criterion"], r["budget"], r["floor"], r["device_key"]) for r in record["rows"]]
            if row_id in ids:
                print(f"{criterion} floor {floor}: a row exists for {key}, kept")
                continue
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                plan = search(a.model, weights, device, budget, "locp", workdir=Path(tmp), lut_path=a.lut,
                              importance=criterion, data=a.data, min_fraction=floor)  # fmt: skip
                search_s = time.perf_counter() - t0
            model, spec = load_model(a.model, weights)
            pruner = GroupPruner(model, spec.input_shape)
            pruner.prune_to(plan.keep_channels, scores=channel_scores(model, spec, criterion, a.data))
            t1 = time.perf_counter()
            proxy = adaptive_bn_top1(model, train, spec.mean, spec.std)
            row = {
                "model": a.model,
                "device": device.name,
                "device_key": key,
                "budget": str(budget),
                "method": "locp",
                "criterion": criterion,
                "floor": floor,
                "measured_ratio": plan.measured_ms / plan.baseline_ms,
                "measured_ms": plan.measured_ms,
                "baseline_ms": plan.baseline_ms,
                "importance_removed": plan.meta.get("cost"),
                "channels_kept": sum(plan.keep_channels.values()),
                "smallest_fraction_kept": min(k / plan.channels[g] for g, k in plan.keep_channels.items()),
                "proxy_top1": proxy,
                "search_s": search_s,
                "proxy_s": time.perf_counter() - t1,
                "keep_channels": plan.keep_channels,
                **provenance(f"python bench/bench_importance.py --criteria {criterion} --floors {floor}"),
            }
            record["rows"].append(row)
            write_json(out, record)  # each row as soon as it exists
            print(
                f"{criterion:8s} floor {floor:.2f}: {row['measured_ratio']:.3f}x measured, "
                f"{row['channels_kept']} channels, smallest group {row['smallest_fraction_kept']:.0%}, "
                f"proxy top-1 {proxy:.2f} %"
            )


if __name__ == "__main__":
    sys.exit(main())
