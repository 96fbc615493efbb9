"""make bench-rows: accuracy-at-budget rows, one resumable job each, committed as each finishes.

A row is one (model, device, budget, method, epochs) configuration run end to end on this host by the pipeline
of ``trtprune run`` - search on the device, prune, fine-tune (one recipe for every row: distilled from the
unpruned model, cosine lr, BatchNorm re-estimated first), build - and its report: the dense and the delivered
model measured in ONE interleaved run, both evaluated on the full test set. So every row is searched,
fine-tuned and measured on one host, against its own baseline.

Rows live in ``bench/results/rows.json`` under ``rows``: model, device, method, budget, epochs, top1, top1_dense,
measured_ms, baseline_ms, speedup, host (CPU, ISA, cores, machine name), commit, date, the recipe and the plan;
``rows_<model>_<device>.png`` beside it plots top-1 against the measured latency ratio of every row.
A row whose key (model, device, budget, method with its options, epochs, importance) is already there is never
redone, whichever host made it; an interrupted row resumes from its run directory (``bench/work/rows/<key>``) on
the same machine, stage by stage and epoch by epoch. With ``--commit`` each new row is committed to git at once.

    python bench/bench_rows.py resnet20:cpu:0.5x:locp:30 resnet20:cpu:0.5x:uniform-r8:30 --commit

locp, knapsack and lap remove residual blocks before channels (trtprune.searching.depth) as ``trtprune run`` does;
``locp-nodepth`` (and the like) is the same search on channels only; uniform and flops never remove blocks.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench_search import METHODS  # the method labels of bench-search: (searcher, round_to)

from trtprune.config import FinetuneConfig, RunConfig
from trtprune.fsutil import write_json
from trtprune.log import setup
from trtprune.plots import pareto_plot
from trtprune.provenance import provenance
from trtprune.run import Run, run_all
from trtprune.searching.runner import DEPTH_FIRST

NO_DEPTH = "-nodepth"  # e.g. locp-nodepth: the latency-aware search on channels only (trtprune run --no-depth)


def parse_row(text: str) -> dict:
    try:
        model, device, budget, method, epochs = text.split(":")
        epochs = int(epochs)
    except ValueError:
        msg = f"'{text}' is not MODEL:DEVICE:BUDGET:METHOD:EPOCHS (e.g. resnet20:cpu:0.5x:locp:30)"
        raise SystemExit(msg) from None
    if method.removesuffix(NO_DEPTH) not in METHODS:
        known = ", ".join([*METHODS, *(f"{m}{NO_DEPTH}" for m in DEPTH_FIRST)])
        raise SystemExit(f"unknown method '{method}' in '{text}': one of {known}")
    return {"model": model, "device": device, "budget": budget, "method": method, "epochs": epochs}


def key_of(row: dict) -> str:
    return f"{row['model']}-{row['device']}-{row['budget']}-{row['method']}-e{row['epochs']}-{row['importance']}"


def plot_rows(rows: list[dict], out: Path) -> list[Path]:
    """One Pareto plot per (model, device): top-1 against the latency ratio each row measured against its own
    baseline in one run (rows of different runs and hosts differ in milliseconds, not in ratio)."""
    pngs = []
    for model, device in sorted({(r["model"], r["device"]) for r in rows}):
        mine = [r for r in rows if (r["model"], r["device"]) == (model, device)]
        series: dict[str, list[tuple[float, float]]] = {}
        for r in mine:
            point = (r["measured_ms"] / r["baseline_ms"], r["top1"])
            series.setdefault(f"{r['method']}, {r['epochs']} ep", []).append(point)
        png = out.with_name(f"{out.stem}_{model}_{device}.png")
        pareto_plot(
            png,
            f"{model} on {device}: top-1 after fine-tuning vs latency ratio ({len(mine)} rows, measured)",
            series,
            baseline=(1.0, mine[0]["top1_dense"]),
            xlabel="latency / dense latency (measured side by side in one run)",
        )
        pngs.append(png)
    return pngs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="+", help="MODEL:DEVICE:BUDGET:METHOD:EPOCHS")
    ap.add_argument("--importance", default="fisher")
    ap.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    ap.add_argument("--distill", type=float, default=0.5)
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the fine-tuning (the same recipe, faster steps after minutes of compiling)",
    )
    ap.add_argument("--data")
    ap.add_argument("--work", default="bench/work/rows")
    ap.add_argument("--out", default="bench/results/rows.json")
    ap.add_argument("--commit", action="store_true", help="git-commit the results file after each new row")
    a = ap.parse_args()
    setup(0)
    out = Path(a.out)
    for text in a.rows:
        want = {**parse_row(text), "importance": a.importance}
        record = json.loads(out.read_text()) if out.is_file() else {"rows": []}
        if any(r.get("key") == key_of(want) for r in record["rows"]):
            print(f"{key_of(want)}: done already, kept")
            continue
        searcher, round_to = METHODS[want["method"].removesuffix(NO_DEPTH)]
        cfg = RunConfig(
            depth=not want["method"].endswith(NO_DEPTH),
            model=want["model"],
            device=want["device"],
            method=searcher,
            budget=want["budget"],
            round_to=round_to,
            importance=a.importance,
            finetune=FinetuneConfig(epochs=want["epochs"], lr=a.lr, distill=a.distill, compile=a.compile),
        )
        t0 = time.perf_counter()
        with Run(Path(a.work) / key_of(want), cfg, a.data, Path(a.work) / "engines") as run:
            report = run_all(run)
        b, p = report["baseline"], report["pruned"]
        row = {
            "key": key_of(want),
            **want,
            "top1": p["top1"],
            "top1_dense": b["top1"],
            "measured_ms": p["latency"]["median_ms"],
            "baseline_ms": b["latency"]["median_ms"],
            "speedup": report["speedup"],
            "measured_in_one_run": True,  # the report times both in one interleaved run, on this host
            "budget_met": (report.get("budget") or {}).get("met"),
            "recipe": {"lr": a.lr, "distill": a.distill, "batch_size": cfg.finetune.batch_size, "compile": a.compile},
            "recovery": report["finetune"].get("recovery"),
            "remove_blocks": report["method"].get("remove_blocks", []),
            "keep_channels": report["method"].get("keep_channels"),
            "wall_s": time.perf_counter() - t0,
            **provenance(f"python bench/bench_rows.py {text} --importance {a.importance}{' --compile' * a.compile}"),
        }
        row["host"] = {**row.pop("machine"), "name": platform.node()}
        record = json.loads(out.read_text()) if out.is_file() else {"rows": []}  # another job may have added rows
        record["rows"].append(row)
        write_json(out, record)
        print(f"{row['key']}: {row['speedup']:.2f}x measured, top-1 {row['top1']:.2f} % ({row['wall_s']:.0f} s)")
        pngs = plot_rows(record["rows"], out)
        if a.commit:
            subprocess.run(["git", "add", str(out), *map(str, pngs)], check=True)
            subprocess.run(
                ["git", "commit", "-q", "-m", f"bench row {row['key']}: {row['speedup']:.2f}x, {row['top1']:.2f} %"],
                check=True,
            )


if __name__ == "__main__":
    sys.exit(main())
