"""make bench-detect: a YOLO detector pruned to a latency budget on `cpu` - latency-aware search against uniform
and FLOPs-ranked pruning at matched measured latency, the same fine-tuning for all - scored by COCO mAP50-95.

The data is the pasted CIFAR-10 detection set of bench/detect_task.py (3x128x128 canvases, 8,000 for training and
1,000 for validation, made when read from CIFAR-10's own splits). First row: YOLOv8n trained dense from scratch on
it (``--dense-epochs``; its checkpoint in bench/work/detect/, resumed epoch by epoch within a host). Then one row
per method, each a ``trtprune run`` on this host from that dense model: search at the budget on the device (locp
removes blocks first, scored by the accuracy proxy = mAP after re-estimating BatchNorm), prune, fine-tune
``--epochs`` with ultralytics' loss (no distillation, the same recipe for every method), build, and the report: the
dense and the pruned model measured in ONE interleaved run, both scored on the validation canvases.

Rows go to ``bench/results/detect.json`` (``rows``: model, task, device, method, budget, epochs, metric_name,
metric, metric_dense, measured_ms, baseline_ms, ratio, host, ...), with ``detect_yolov8n_cpu.png`` (mAP against the
measured latency ratio) beside it; a row already there is not redone; ``--commit`` commits each row as it finishes.

    python bench/bench_detect.py --dense-epochs 40 --epochs 10 --budget 0.5x --methods locp,uniform-r8,flops-r8
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from bench_search import METHODS  # the method labels of bench-search: (searcher, round_to)

from trtprune.config import FinetuneConfig, RunConfig
from trtprune.fsutil import write_json
from trtprune.log import setup
from trtprune.plots import pareto_plot
from trtprune.provenance import provenance
from trtprune.run import Run, run_all
from trtprune.tasks import get_task

HERE = Path(__file__).resolve().parent
TASK_FILE = HERE / "detect_task.py"
MODEL = f"{TASK_FILE}:yolov8n"
TASK = f"{TASK_FILE}:task"


def host() -> dict:
    return {**provenance()["machine"], "name": platform.node()}


def add_row(out: Path, row: dict, commit: bool, message: str) -> None:
    record = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    record["rows"] = [r for r in record["rows"] if r["key"] != row["key"]] + [row]
    write_json(out, record)
    png = plot(record["rows"], out)
    if commit:
        subprocess.run(["git", "add", str(out), str(png)], check=True)
        subprocess.run(["git", "commit", "-q", "-m", message], check=True)


def plot(rows: list[dict], out: Path) -> Path:
    dense = next((r for r in rows if r["method"] == "dense"), None)
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["method"] != "dense":
            series.setdefault(f"{r['method']}, {r['epochs']} ep", []).append((r["ratio"], r["metric"]))
    png = out.with_name(f"{out.stem}_yolov8n_cpu.png")
    pareto_plot(
        png,
        f"YOLOv8n at 128x128 on cpu: mAP50-95 after fine-tuning vs measured latency ({len(series)} methods)",
        series,
        baseline=(1.0, dense["metric"]) if dense else None,
        xlabel="latency / dense latency (measured side by side in one run)",
        ylabel="mAP50-95 (%), 1,000 validation canvases",
    )
    return png


def train_dense(work: Path, epochs: int, lr: float, out: Path, commit: bool) -> Path:
    """The dense detector, trained from scratch (resumed from its checkpoint); its row once, whichever host."""
    from detect_task import task, yolov8n

    import trtprune

    weights = work / "dense.pt"
    if weights.is_file():
        return weights
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = yolov8n()
    t0 = time.perf_counter()
    records = trtprune.finetune(
        model, task.loaders()[0], epochs=epochs, loss=task.loss, metric=task.metric, metric_name=task.metric_name,
        lr=lr, warmup=1.0, batch_size=task.batch, recalibrate=0, checkpoint=work / "dense.ckpt",
    )  # fmt: skip
    torch.save(model.state_dict(), weights)
    key = f"yolov8n-dense-e{epochs}"
    record = json.loads(out.read_text()) if out.is_file() else {"rows": []}
    if not any(r["key"] == key for r in record["rows"]):
        row = {
            "key": key, "model": "yolov8n", "task": "pasted CIFAR-10 detection, 3x128x128", "method": "dense",
            "epochs": epochs, "metric_name": "mAP50-95", "metric": records[-1]["metric"],
            "curve": [{"epoch": r["epoch"], "loss": r["loss"], "metric": r["metric"]} for r in records],
            "recipe": {"lr": lr, "warmup": 1.0, "batch_size": task.batch, "from": "scratch"},
            "wall_s": time.perf_counter() - t0, **provenance(f"python bench/bench_detect.py --dense-epochs {epochs}"),
        }  # fmt: skip
        row["host"] = {**row.pop("machine"), "name": platform.node()}
        add_row(out, row, commit, f"bench detect: dense YOLOv8n, {epochs} epochs, mAP50-95 {row['metric']:.2f}")
    return weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dense-epochs", type=int, default=40)
    ap.add_argument("--dense-lr", type=float, default=0.05)
    ap.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs of every pruned row")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--budget", default="0.5x")
    ap.add_argument("--methods", default="locp,uniform-r8,flops-r8")
    ap.add_argument("--importance", default="fisher")
    ap.add_argument("--work", default="bench/work/detect")
    ap.add_argument("--out", default="bench/results/detect.json")
    ap.add_argument("--commit", action="store_true", help="git-commit the results after each new row")
    a = ap.parse_args()
    setup(0)
    out, work = Path(a.out), Path(a.work)
    weights = train_dense(work, a.dense_epochs, a.dense_lr, out, a.commit)
    metric_name = get_task(TASK).metric_name
    for method in a.methods.split(","):
        key = f"yolov8n-cpu-{a.budget}-{method}-e{a.epochs}-{a.importance}"
        record = json.loads(out.read_text()) if out.is_file() else {"rows": []}
        if any(r["key"] == key for r in record["rows"]):
            print(f"{key}: done already, kept")
            continue
        searcher, round_to = METHODS[method.removesuffix("-nodepth")]  # locp-nodepth: channels only
        cfg = RunConfig(
            model=MODEL, weights=str(weights), device="cpu", method=searcher, budget=a.budget, round_to=round_to,
            importance=a.importance, input_shape="3x128x128", task=TASK, depth=not method.endswith("-nodepth"),
            finetune=FinetuneConfig(epochs=a.epochs, lr=a.lr, distill=0.0, batch_size=32, recalibrate=512),
        )  # fmt: skip
        t0 = time.perf_counter()
        with Run(work / key, cfg, None, work / "engines") as run:
            report = run_all(run)
        b, p = report["baseline"], report["pruned"]
        row = {
            "key": key, "model": "yolov8n", "task": "pasted CIFAR-10 detection, 3x128x128", "device": "cpu",
            "method": method, "budget": a.budget, "epochs": a.epochs, "importance": a.importance,
            "metric_name": metric_name, "metric": p["metric"], "metric_dense": b["metric"],
            "measured_ms": p["latency"]["median_ms"], "baseline_ms": b["latency"]["median_ms"],
            "ratio": p["latency"]["median_ms"] / b["latency"]["median_ms"], "measured_in_one_run": True,
            "budget_met": (report.get("budget") or {}).get("met"), "macs": p["macs"], "macs_dense": b["macs"],
            "recipe": {"lr": a.lr, "distill": 0.0, "batch_size": 32, "dense_weights_sha": _sha(weights)},
            "recovery": report["finetune"].get("recovery"), "records": report["finetune"].get("records"),
            "remove_blocks": report["method"].get("remove_blocks", []),
            "keep_channels": report["method"].get("keep_channels"), "wall_s": time.perf_counter() - t0,
            **provenance(f"python bench/bench_detect.py --methods {method} --epochs {a.epochs} --budget {a.budget}"),
        }  # fmt: skip
        row["host"] = {**row.pop("machine"), "name": platform.node()}
        add_row(out, row, a.commit, f"bench detect row {key}: {row['ratio']:.3f}x, mAP50-95 {row['metric']:.2f}")
        print(f"{key}: {row['ratio']:.3f}x measured, {metric_name} {row['metric']:.2f} ({row['wall_s']:.0f} s)")


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


if __name__ == "__main__":
    sys.exit(main())
