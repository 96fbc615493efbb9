"""make bench-search: every search method at every budget on every device, fine-tuned alike, measured alike.

For each device (cpu, cpu-b32), budget (0.7x, 0.5x, 0.35x) and method (locp, knapsack, lap, uniform with
round_to 8, flops with round_to 1 / 8 / 16): search a plan on the device (shared LUT), prune the
published ResNet-56 to it (Taylor scores), fine-tune for the same number of epochs with the same
schedule and distillation, and evaluate top-1 on the full test set. Then, per device, every
fine-tuned model and the baseline are measured whole in ONE interleaved run - the latencies in the
table come from that run, not from the searches. Device specificity: the 0.5x plans of each
latency-aware method made for cpu and for cpu-b32 are both measured on both devices.

Each row also carries the plan itself (channels kept per group, the LUT key with the CPU's ISA), the
importance it removed, and its pruned model's top-1 before fine-tuning by the searchers' fast proxy
(adaptive BN, held-out training images): a plan can be re-measured on another machine, and with
``--epochs 0`` (search, prune, measure; no fine-tuning) methods are still compared on accuracy.

Every step is cached under bench/work/ (plans, checkpoints, accuracies), so an interrupted benchmark
resumes and a larger one (more epochs, other budgets) reuses what exists. Writes bench/results/search.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from trtprune.config import FinetuneConfig
from trtprune.deploy.export import onnx_from_torch
from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.log import setup
from trtprune.metrics import top1_torch
from trtprune.plots import pareto_plot
from trtprune.provenance import provenance
from trtprune.pruning.prune import GroupPruner
from trtprune.searching import Budget, Plan
from trtprune.searching.runner import channel_scores, search
from trtprune.sources.datasets import load_split
from trtprune.sources.weights import load_model, read_checkpoint, resolve_weights, save_pruned
from trtprune.training.finetune import finetune
from trtprune.training.proxy import adaptive_bn_top1

METHODS = {
    "locp": ("locp", 1),
    "knapsack": ("knapsack", 1),
    "lap": ("lap", 1),
    "uniform-r8": ("uniform", 8),
    "flops-r1": ("flops", 1),
    "flops-r8": ("flops", 8),
    "flops-r16": ("flops", 16),
}


def plan_for(work: Path, device, budget: Budget, label: str, weights, data) -> Plan | None:
    path = work / device.name / str(budget) / label / "plan.json"
    if path.is_file():
        return Plan.load(path)
    method, round_to = METHODS[label]
    try:
        plan = search(
            "resnet56",
            weights,
            device,
            budget,
            method,
            workdir=path.parent / "subnets",
            lut_path=work / "lut.sqlite",
            importance="taylor",
            data=data,
            round_to=round_to,
        )
    except Exception as e:  # a baseline that cannot meet a budget is a result too
        print(f"  {device.name} {budget} {label}: no plan ({str(e).splitlines()[0]})")
        (path.parent).mkdir(parents=True, exist_ok=True)
        (path.parent / "failed.txt").write_text(str(e))
        return None
    plan.save(path)
    return plan


def recipe_tag(cfg: FinetuneConfig) -> str:
    """The cache name of a fine-tuning recipe: epochs, and the peak lr where it is not the default."""
    return f"e{cfg.epochs}" + ("" if cfg.lr == FinetuneConfig.lr else f"_lr{cfg.lr:g}")


def pruned_to(plan_path: Path, weights, data):
    """The published ResNet-56 pruned to the plan by Taylor scores: (model, spec, pruner)."""
    model, spec = load_model("resnet56", weights)
    pruner = GroupPruner(model, spec.input_shape)
    pruner.prune_to(Plan.load(plan_path).keep_channels, scores=channel_scores(model, spec, "taylor", data))
    return model, spec, pruner


def tuned_for(plan_path: Path, cfg: FinetuneConfig, weights, data, train, test) -> tuple[Path, float | None]:
    """Prune to the plan, fine-tune, evaluate; cached by recipe (``recipe_tag``). With 0 epochs: only pruned
    (latency does not depend on the weights), and no top-1."""
    tag = recipe_tag(cfg)
    out = plan_path.parent / f"model_{tag}.pt"
    result = plan_path.parent / f"top1_{tag}.json"
    if result.is_file():
        return out, json.loads(result.read_text())["top1"]
    model, spec, pruner = pruned_to(plan_path, weights, data)
    if cfg.epochs == 0:
        save_pruned(out, model, spec.name, pruner.history())
        write_json(result, {"top1": None, "epochs": 0})
        return out, None
    teacher, _ = load_model("resnet56", weights)
    ckpt = plan_path.parent / f"finetune_{tag}.pt"
    finetune(
        model,
        train,
        None,
        spec.mean,
        spec.std,
        cfg,
        checkpoint=ckpt,
        base_model=spec.name,
        history=pruner.history(),
        teacher=teacher,
        resume=True,
    )
    save_pruned(out, model, spec.name, read_checkpoint(ckpt)["history"])
    top1 = top1_torch(model, test, spec.mean, spec.std)
    write_json(result, {"top1": top1, "epochs": cfg.epochs, "lr": cfg.lr})
    return out, top1


def proxy_for(plan_path: Path, weights, data, train) -> float:
    """The plan's pruned model before any fine-tuning, scored by the searchers' fast proxy (EagleEye: BN
    statistics re-estimated, top-1 on a held-out slice of the training set); cached beside the plan."""
    cached = plan_path.parent / "proxy.json"
    if cached.is_file():
        return json.loads(cached.read_text())["adaptive_bn_top1"]
    model, spec, _ = pruned_to(plan_path, weights, data)
    top1 = adaptive_bn_top1(model, train, spec.mean, spec.std)
    write_json(cached, {"adaptive_bn_top1": top1})
    return top1


def measure_all(device, checkpoints: dict, weights) -> tuple[float, dict, dict]:
    """The baseline and every checkpoint exported at the device's batch and measured in one run (the
    backend's deciding rounds: the table says which plans meet their budget)."""
    with tempfile.TemporaryDirectory() as tmp:
        base, spec = load_model("resnet56", weights)
        paths = {"baseline": Path(tmp) / "baseline.onnx"}
        onnx_from_torch(base, paths["baseline"], spec.input_shape, device.batch)
        for key, ckpt in checkpoints.items():
            model, _ = load_model("resnet56", ckpt)
            paths[key] = Path(tmp) / f"{len(paths)}.onnx"
            onnx_from_torch(model, paths[key], spec.input_shape, device.batch)
        with get_backend(device) as backend:
            timings = dict(zip(paths, backend.compare(list(paths.values()), rounds=backend.deciding_rounds)))
            info = backend.info()
    return timings.pop("baseline").median_ms, {k: t.median_ms for k, t in timings.items()}, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="cpu,cpu-b32")
    ap.add_argument("--budgets", default="0.7x,0.5x,0.35x")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs for every model (default 3)")
    ap.add_argument("--lr", type=float, default=FinetuneConfig.lr, help="peak learning rate of the cosine schedule")
    ap.add_argument(
        "--baselines-on",
        help="devices on which the uniform and flops baselines are searched too (default: all)",
    )
    ap.add_argument(
        "--finetune-on",
        help="devices whose models are fine-tuned (default: all); the others' plans are only pruned and measured "
        "(for the device-specificity table: latency does not depend on the weights)",
    )
    ap.add_argument("--work", default="bench/work/search", help="cache of plans, checkpoints and accuracies")
    ap.add_argument("--data")
    ap.add_argument("--out", default="bench/results/search.json")
    a = ap.parse_args()
    setup(0)
    work = Path(a.work)
    weights = resolve_weights("resnet56", None, a.data)
    devices = [get_device(d) for d in a.devices.split(",")]
    budgets = [Budget.parse(b) for b in a.budgets.split(",")]
    methods = a.methods.split(",")
    cfg = FinetuneConfig(epochs=a.epochs, lr=a.lr, distill=0.5)
    train, test = load_split(a.data, "train"), load_split(a.data, "test")
    tune_on = set(a.finetune_on.split(",")) if a.finetune_on else {d.name for d in devices}
    baseline_on = set(a.baselines_on.split(",")) if a.baselines_on else {d.name for d in devices}
    no_tune = FinetuneConfig(epochs=0)
    base_model, base_spec = load_model("resnet56", weights)
    base_top1 = top1_torch(base_model, test, base_spec.mean, base_spec.std)
    rows, checkpoints = [], {}
    for device in devices:
        for budget in budgets:
            for label in methods:
                if a.baselines_on and METHODS[label][0] in ("uniform", "flops") and device.name not in baseline_on:
                    continue
                plan = plan_for(work, device, budget, label, weights, a.data)
                if plan is None:
                    continue
                plan_path = work / device.name / str(budget) / label / "plan.json"
                dev_cfg = cfg if device.name in tune_on else no_tune
                ckpt, top1 = tuned_for(plan_path, dev_cfg, weights, a.data, train, test)
                checkpoints[(device.name, str(budget), label)] = ckpt
                rows.append(
                    {
                        "device": device.name,
                        "method": label,
                        "budget": str(budget),
                        "top1": top1,
                        "epochs": dev_cfg.epochs,
                        "lr": dev_cfg.lr,
                        "precision": cfg.precision,
                        "search_s": plan.meta["search_s"],
                        "search_measured_ratio": plan.measured_ms / plan.baseline_ms,
                        "importance_removed": plan.meta.get("cost"),
                        "proxy_top1": proxy_for(plan_path, weights, a.data, train),
                        "kept": sum(plan.keep_channels.values()),
                        "keep_channels": plan.keep_channels,
                        "lut_key": plan.lut_key,
                    }
                )
                acc = f"top-1 {top1:.2f} % after {dev_cfg.epochs} epochs" if top1 is not None else "not fine-tuned"
                print(f"  {device.name} {budget} {label}: {acc}, search {plan.meta['search_s']:.0f} s")
    measured = {}
    for device in devices:  # every model of every device, on this device, in one interleaved run
        base_ms, lat, info = measure_all(device, checkpoints, weights)
        measured[device.name] = {"baseline_ms": base_ms, "models": lat, "device": info}
    for row in rows:
        m = measured[row["device"]]
        row["measured_ms"] = m["models"][(row["device"], row["budget"], row["method"])]
        row["baseline_ms"] = m["baseline_ms"]
        row["ratio"] = row["measured_ms"] / row["baseline_ms"]
    specificity = [
        {
            "plan_for": d1,
            "measured_on": d2,
            "method": label,
            "budget": "0.5x",
            "ratio": measured[d2]["models"][(d1, "0.5x", label)] / measured[d2]["baseline_ms"],
        }
        for label in ("locp", "knapsack", "lap")
        for d1 in measured
        for d2 in measured
        if (d1, "0.5x", label) in checkpoints
    ]
    for device in devices:  # accuracy against measured latency, one marker per method and budget
        series: dict[str, list] = {}
        for r in rows:
            if r["device"] == device.name and r["top1"] is not None:
                series.setdefault(r["method"], []).append((r["measured_ms"], r["top1"]))
        if series:
            png = Path(a.out).with_name(f"{Path(a.out).stem}_{device.name}.png")
            pareto_plot(
                png,
                f"ResNet-56 on {device.name}: top-1 after {a.epochs} epochs vs latency (measured, one run)",
                series,
                baseline=(measured[device.name]["baseline_ms"], base_top1),
            )
            print(f"wrote {png}")
    write_json(
        a.out,
        {
            **provenance("make bench-search"),
            "baseline_top1": base_top1,
            "rows": rows,
            "device_specificity": specificity,
            "baselines": {d: {"baseline_ms": m["baseline_ms"], "device": m["device"]} for d, m in measured.items()},
        },
    )
    print(f"{'device':8s} {'budget':6s} {'method':11s} {'kept':>5s} {'ratio':>6s} {'proxy':>6s} {'top-1':>6s}")
    for r in rows:
        top1 = f"{r['top1']:6.2f}" if r["top1"] is not None else "     -"
        print(
            f"{r['device']:8s} {r['budget']:6s} {r['method']:11s} {r['kept']:5d} {r['ratio']:6.3f} "
            f"{r['proxy_top1']:6.2f} {top1}"
        )
    print(f"wrote {a.out}")


if __name__ == "__main__":
    sys.exit(main())
