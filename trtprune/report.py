"""Before/after report: latency measured side by side on the device, top-1, size, speed-up."""

from __future__ import annotations

import json
import logging

from trtprune.deploy.onnx_module import OnnxModule, structure_of
from trtprune.deploy.parity import parity
from trtprune.deploy.quantize import check_int8_kernels
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
    pruned_model, _ = run.model("model.pt")
    # the files the device runs (for int8 devices their calibrated Q/DQ forms, the delivered model or plan's source)
    onnx = {role: run.device_onnx(role) for role in ("baseline", "pruned")}
    models = {"baseline": base_model, "pruned": pruned_model}
    int8 = None
    if run.device.int8_form == "ort":  # budget and speed-up against the fp32 dense model; fp32 pruned beside
        onnx = {"baseline": run.path("baseline.onnx"), "pruned_fp32": run.path("pruned.onnx"), "pruned": onnx["pruned"]}
        models["pruned_fp32"] = pruned_model
        int8 = int8_facts(onnx["pruned"], run)
    test = open_images(run.data, "test", spec.input_shape, run.cfg.eval_limit)
    task = run.task
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
        "task": task.to_dict(),
        "eval": _eval_facts(task, test),
        "method": json.loads(run.path("plan.json").read_text()),
        "finetune": {
            **run.cfg.finetune.__dict__,
            "records": read_checkpoint(run.path("model.pt")).get("records"),
            # top-1 right after pruning and after re-estimating BatchNorm, before the first step
            "recovery": read_checkpoint(run.path("model.pt")).get("recovery"),
        },
    }
    for role in onnx:
        model = models[role]
        report[role] = {
            "onnx": str(onnx[role]),
            "latency": timings[role].to_dict(),
            **_scores(task, onnx[role], models[role], test, spec, role),  # top1 (and top5), or the task's metric
            **_model_facts(model, spec),
        }
    report["speedup"] = timings["baseline"].median_ms / timings["pruned"].median_ms
    if int8 is not None:
        int8["top1_drop_vs_fp32_pruned"] = report["pruned_fp32"]["top1"] - report["pruned"]["top1"]
        int8["speedup_vs_fp32_pruned"] = timings["pruned_fp32"].median_ms / timings["pruned"].median_ms
        report["int8"] = int8
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
        "report    | %.3f -> %.3f ms (%.2fx) | %s %.2f -> %.2f",
        timings["baseline"].median_ms,
        timings["pruned"].median_ms,
        report["speedup"],
        task.metric_name,
        report["baseline"][task.metric_key],
        report["pruned"][task.metric_key],
    )
    return report


def _eval_facts(task, test) -> dict:
    if not task.images_metric:  # the user's metric reads its own validation data
        return {"metric": task.metric_name, "data": f"{getattr(task, 'source', 'the task')}'s metric(model)"}
    return {"split": "test", "images": len(test), "data": test.name}


def _scores(task, path, model, test, spec, role: str) -> dict:
    """The task's figures of the ONNX file the device runs: top-1 through ONNX Runtime directly for classification,
    else the task's evaluation of the file run as a module returning what the torch model returns."""
    if task.metric_key == "top1":
        return accuracy_onnx(path, test, spec.mean, spec.std, desc=f"top-1 {role}")
    return task.evaluate(OnnxModule(path, structure_of(model, spec.input_shape)), test, spec.mean, spec.std)


def int8_facts(path, run) -> dict:
    """The delivered INT8 model: its Q/DQ form, what it was calibrated on, and which of its convolutions ONNX
    Runtime runs as INT8 kernels (none is an error: never an fp32 run reported as INT8)."""
    kernels = check_int8_kernels(path)
    return {
        "form": run.device.int8_form,
        "calibration": {
            "source": run.cfg.calib or "training set (evenly spaced)",
            "images": run.cfg.calib_images,
            "method": "minmax",
        },
        "kernels": {"int8": len(kernels["int8"]), "float": kernels["float"]},
    }


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
    v = m["meta"].get("budget_vs_fp32")
    of = (
        f" of the INT8 dense model ({v['budget']} of the fp32 dense one, INT8 dense measuring "
        f"{v['int8_vs_fp32']:.3f}x of fp32 dense)"
        if v
        else ""
    )
    return (
        f"{m['method']} search for a budget of {m['budget']}{of} (during the search: predicted "
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


def _int8_line(r: dict) -> str:
    """How the delivered INT8 model was made and what it costs in top-1, against the fp32 pruned model."""
    q = r["int8"]
    c, k = q["calibration"], q["kernels"]
    fp32 = f"; {len(k['float'])} left in fp32: {', '.join(k['float'][:6])}" if k["float"] else ""
    return (
        f"INT8: ONNX Runtime's Q/DQ form (uint8 activations, int8 per-channel weights), calibrated ({c['method']}) "
        f"on {c['images']:,} images from the {c['source']}, after fine-tuning in fp32; {k['int8']} convolutions run "
        f"as INT8 kernels{fp32}. Against the fp32 pruned model: {q['speedup_vs_fp32_pruned']:.2f}x faster, "
        f"top-1 {-q['top1_drop_vs_fp32_pruned']:+.2f} points."
    )


def _recovery_line(ft: dict, task: dict) -> str:
    """The metric (top-1) from pruning to the last epoch: as pruned, after BatchNorm recalibration, per epoch."""
    rec, key, name = ft["recovery"], task["metric_key"], task["metric"]
    unit = " %" if key == "top1" else ""
    steps = [f"{rec[f'{key}_pruned']:.2f}{unit} as pruned"] if f"{key}_pruned" in rec else []
    if rec.get("recalibrated_images") and key in rec:
        steps.append(f"{rec[key]:.2f}{unit} after re-estimating BatchNorm on {rec['recalibrated_images']:,} images")
    steps += [f"{x[key]:.2f}{unit} after epoch {x['epoch']}" for x in ft.get("records") or [] if key in x]
    where = "on the evaluation images" if key == "top1" else "by the task's metric"
    return f"Recovery ({name.split(' (')[0]} {where}): " + " -> ".join(steps) + "."


COLUMNS = {"baseline": "baseline", "pruned": "pruned"}
INT8_COLUMNS = {"baseline": "fp32 dense", "pruned_fp32": "fp32 pruned", "pruned": "INT8 pruned (delivered)"}


TOP1 = {"task": "classification", "metric": "top-1 (%)", "metric_key": "top1"}  # reports written before tasks


def _metric_row(r: dict, row) -> str:
    task = r.get("task", TOP1)
    key = task["metric_key"]
    if key == "top1":
        return row(f"top-1 (%, {r['eval']['images']:,} test images)", lambda x: f"{x['top1']:.2f}")
    return row(f"{task['metric']} ({r['eval'].get('data', 'the task')})", lambda x: f"{x[key]:.2f}")


def markdown(r: dict) -> str:
    d, m = r["device"], r["method"]
    task = r.get("task", TOP1)
    engine = f"{d.get('engine', d['backend'])} {d.get('engine_version', '')}"
    cols = {k: v for k, v in (INT8_COLUMNS if "int8" in r else COLUMNS).items() if k in r}

    def row(label, cell) -> str:
        return f"| {label} | " + " | ".join(cell(r[k]) for k in cols) + " |"

    lines = [
        f"# trtprune report: {r['model']} on `{d['device']}`",
        "",
        f"Engine {engine}, {d.get('cpu', '')} ({d.get('isa', '')}), "
        f"{d['threads']} thread(s), batch {d['batch']} of {'x'.join(map(str, r.get('input_shape', [])))} images, "
        f"{d['precision']}. Latency: {', '.join(cols.values())} measured in one interleaved run "
        f"(n = {' / '.join(str(r[k]['latency']['n']) for k in cols)} timed inferences).",
        "",
        "| | " + " | ".join(cols.values()) + " |",
        "|---|" + "---:|" * len(cols),
        row("latency median (ms)", lambda x: f"{x['latency']['median_ms']:.3f}"),
        row("latency p90 (ms)", lambda x: f"{x['latency']['p90_ms']:.3f}"),
        _metric_row(r, row),
        *([row("top-5 (%)", lambda x: f"{x['top5']:.2f}")] if all("top5" in r[k] for k in cols) else []),
        row("parameters", lambda x: f"{x['params']:,}"),
        row("MACs", lambda x: f"{x['macs']:,}"),
        "",
        f"**Speed-up: {r['speedup']:.2f}x** ({cols['pruned']} against {cols['baseline']}, median latency, measured). "
        f"Method: {_method(m)}; "
        f"fine-tuned {r['finetune']['epochs']} epoch(s).",
        "",
        *([_depth_line(m), ""] if m.get("meta", {}).get("depth", {}).get("removed") else []),
        *([_ranking_line(m), ""] if m.get("meta", {}).get("ranking") else []),
        *([_recovery_line(r["finetune"], task), ""] if r["finetune"].get("recovery") else []),
        *([_int8_line(r), ""] if "int8" in r else []),
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
