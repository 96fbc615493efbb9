"""Before/after report: latency measured side by side on the device, top-1, size, speed-up."""

from __future__ import annotations

import json
import logging

from trtprune.deploy.parity import parity
from trtprune.fsutil import write_json, write_text
from trtprune.latency import get_backend
from trtprune.metrics import accuracy_onnx, count_macs, count_params
from trtprune.plots import channels_plot
from trtprune.provenance import provenance
from trtprune.searching.plan import Budget
from trtprune.sources.images import open_images
from trtprune.sources.weights import load_model, read_checkpoint, resolve_weights

log = logging.getLogger(__name__)


def _model_facts(model, spec) -> dict:

    return {"params": count_params(model), "macs": count_macs(model, spec.input_shape)}


def stage_report(run) -> dict:
    """Measure baseline and pruned ONNX in one interleaved run, evaluate both, write report.json/.md."""

    base_model, spec = load_model(run.spec, resolve_weights(run.cfg.model, run.cfg.weights, run.data))
    pruned_model, _ = load_model(run.spec, run.path("model.pt"))
    # the files the device runs (for int8 TensorRT devices their calibrated Q/DQ forms, the delivered plan's source)
    onnx = {role: run.device_onnx(role) for role in ("baseline", "pruned")}
    test = open_images(run.data, "test", spec.input_shape, run.cfg.eval_limit)
    with get_backend(run.device) as backend:
        timings = dict(zip(onnx, backend.compare(list(onnx.values()), rounds=backend.deciding_rounds)))
        device_info = backend.info()
        if backend.runs_outputs:  # an engine that is not ONNX Runtime: check it computes the same
            xs = next(test.limit(8 * run.device.batch).batches(8 * run.device.batch, spec.mean, spec.std))[0].numpy()
            device_info["parity"] = parity(backend, onnx["pruned"], xs, run.device.batch)
    report = {
        "model": spec.name,
        "input_shape": list(spec.input_shape),  # one image, C x H x W; the batch is the device's
        "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
        "device": device_info,
        "eval": {"split": "test", "images": len(test), "data": test.name},
        "method": json.loads(run.path("plan.json").read_text()),
        "finetune": {
            **run.cfg.finetune.__dict__,
            "records": read_checkpoint(run.path("model.pt")).get("records"),
            # top-1 right after pruning and after re-estimating BatchNorm, before the first step
            "recovery": read_checkpoint(run.path("model.pt")).get("recovery"),
        },
    }
    for role, model in (("baseline", base_model), ("pruned", pruned_model)):
        report[role] = {
            "onnx": str(onnx[role]),
            "latency": timings[role].to_dict(),
            **accuracy_onnx(onnx[role], test, spec.mean, spec.std, desc=f"top-1 {role}"),  # top1 (and top5)
            **_model_facts(model, spec),
        }
    report["speedup"] = timings["baseline"].median_ms / timings["pruned"].median_ms
    report["budget"] = budget_verdict(
        Budget.from_text(run.cfg.budget), timings["pruned"].median_ms, timings["baseline"].median_ms
    )
    report["engine"] = str(run.engine_path)
    report["provenance"] = provenance()
    write_json(run.path("report.json"), report)
    b_ms, p_ms = timings["baseline"].median_ms, timings["pruned"].median_ms
    channels_plot(
        run.path("channels.png"),
        f"{spec.name} on {run.device.name}: {b_ms:.3f} -> {p_ms:.3f} ms median ({report['speedup']:.2f}x, measured)",
        report["method"]["channels"],
        report["method"]["keep_channels"],
    )
    write_text(run.path("report.md"), markdown(report))
    if report["budget"] and not report["budget"]["met"]:
        log.warning("report    | %s", budget_line(report))
    log.info(
        "report    | %.3f -> %.3f ms (%.2fx) | top-1 %.2f -> %.2f %%",
        timings["baseline"].median_ms,
        timings["pruned"].median_ms,
        report["speedup"],
        report["baseline"]["top1"],
        report["pruned"]["top1"],
    )
    return report


def budget_verdict(budget, pruned_ms: float, baseline_ms: float) -> dict | None:
    """Whether the delivered model meets the run's budget in the report's own measurement (None: no budget)."""
    if budget is None:
        return None
    return {
        "budget": str(budget),
        "target_ms": budget.target_ms(baseline_ms),
        "ratio": pruned_ms / baseline_ms,
        "met": budget.met(pruned_ms, baseline_ms),
    }


def budget_line(r: dict) -> str:
    v, m = r["budget"], r["method"]
    here = f"{r['pruned']['latency']['median_ms']:.3f} ms = {v['ratio']:.3f}x of the baseline in this run"
    if v["met"]:
        return f"**Budget {v['budget']}: met** ({here})."
    searched = ""
    if m.get("measured_ms") and m.get("baseline_ms"):
        searched = f"; the search measured {m['measured_ms'] / m['baseline_ms']:.3f}x"
    return (
        f"**Budget {v['budget']}: not met** ({here}, target {v['target_ms']:.3f} ms{searched}). The device "
        "measures differently from when the plan was searched (other load, clocks or engine version): "
        "run again on an idle device, or with --fresh to search anew."
    )


def _method(m: dict) -> str:
    if m.get("predicted_ms") is None:
        return f"{m['method']} ({m['budget']}, round to {m['meta'].get('round_to')})"
    return (
        f"{m['method']} search for a budget of {m['budget']} (during the search: predicted "
        f"{m['predicted_ms']:.3f} ms, measured {m['measured_ms']:.3f} ms against a baseline of "
        f"{m['baseline_ms']:.3f} ms in the same run; {m['meta'].get('importance')} importance)"
    )


def _ranking_line(m: dict) -> str:
    """The plans the accuracy proxy ranked inside the search (``--rank``), and the one chosen."""
    ranking = m["meta"]["ranking"]
    items = ", ".join(f"{x['label']} {x['proxy']:.2f} %" for x in ranking)
    return (
        f"Plans ranked by the accuracy proxy (BatchNorm re-estimated, top-1 on held-out training images): {items}; "
        f"chosen and measured: **{m['meta'].get('chosen')}**."
    )


def _depth_line(m: dict) -> str:
    """The residual blocks the search removed before pruning channels (trtprune.searching.depth)."""
    d = m["meta"]["depth"]
    return (
        f"Blocks removed whole before the channels: {len(d['removed'])} of {len(d['drop'])} "
        f"({', '.join(d['removed'])}), taken by accuracy-proxy points lost per millisecond saved; without them the "
        f"network measured {d['measured_ms'] / d['baseline_ms']:.3f}x, and the channels were searched for "
        f"{m['meta'].get('channel_budget')} of it."
    )


def _recovery_line(ft: dict) -> str:
    """Top-1 from pruning to the last epoch: as pruned, after BatchNorm recalibration, per epoch."""
    rec = ft["recovery"]
    steps = [f"{rec['top1_pruned']:.2f} % as pruned"] if "top1_pruned" in rec else []
    if rec.get("recalibrated_images") and "top1" in rec:
        steps.append(f"{rec['top1']:.2f} % after re-estimating BatchNorm on {rec['recalibrated_images']:,} images")
    steps += [f"{x['top1']:.2f} % after epoch {x['epoch']}" for x in ft.get("records") or [] if "top1" in x]
    return "Recovery (top-1 on the evaluation images): " + " -> ".join(steps) + "."


def markdown(r: dict) -> str:
    d, b, p, m = r["device"], r["baseline"], r["pruned"], r["method"]
    engine = f"{d.get('engine', d['backend'])} {d.get('engine_version', '')}"

    def row(label, fmt, key):
        return f"| {label} | {fmt(b, key)} | {fmt(p, key)} |"

    lat = lambda m, k: f"{m['latency'][k]:.3f}"
    num = lambda m, k: f"{m[k]:,}"
    lines = [
        f"# trtprune report: {r['model']} on `{d['device']}`",
        "",
        f"Engine {engine}, {d.get('cpu', '')} ({d.get('isa', '')}), "
        f"{d['threads']} thread(s), batch {d['batch']} of {'x'.join(map(str, r.get('input_shape', [])))} images, "
        f"{d['precision']}. Latency: baseline and pruned measured in "
        f"one interleaved run (n = {b['latency']['n']} / {p['latency']['n']} timed inferences).",
        "",
        "| | baseline | pruned |",
        "|---|---:|---:|",
        row("latency median (ms)", lat, "median_ms"),
        row("latency p90 (ms)", lat, "p90_ms"),
        f"| top-1 (%, {r['eval']['images']:,} test images) | {b['top1']:.2f} | {p['top1']:.2f} |",
        *([f"| top-5 (%) | {b['top5']:.2f} | {p['top5']:.2f} |"] if "top5" in b else []),
        row("parameters", num, "params"),
        row("MACs", num, "macs"),
        "",
        f"**Speed-up: {r['speedup']:.2f}x** (median latency, measured). "
        f"Method: {_method(m)}; "
        f"fine-tuned {r['finetune']['epochs']} epoch(s).",
        "",
        *([_depth_line(m), ""] if m.get("meta", {}).get("depth", {}).get("removed") else []),
        *([_ranking_line(m), ""] if m.get("meta", {}).get("ranking") else []),
        *([_recovery_line(r["finetune"]), ""] if r["finetune"].get("recovery") else []),
        *([budget_line(r), ""] if r.get("budget") else []),
        f"Deployable model: `{r['engine']}`.",
        "",
        "## Channels kept per group",
        "",
        "![channels per group](channels.png)",
        "",
        "| group | channels | kept |",
        "|---|---:|---:|",
        *[f"| {g} | {r['method']['channels'].get(g, '')} | {k} |" for g, k in r["method"]["keep_channels"].items()],
        "",
        f"Made by `{r['provenance']['command']}` on {r['provenance']['date']}, commit {r['provenance']['commit']}.",
        "",
    ]
    return "\n".join(lines)
