"""What each subcommand does, given its parsed arguments: it prints its lines and returns its result (a dict that
``--json`` prints instead)."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path

from trtprune.config import parse_ranked
from trtprune.deploy.build import engine_from_model
from trtprune.deploy.export import onnx_from_torch, read_onnx
from trtprune.deploy.onnx_module import OnnxModule, structure_of
from trtprune.deploy.quantize import calibration, qdq_from_onnx, qdq_summary
from trtprune.errors import BUDGET_MISSED, TOP1_GATE, TrtpruneError
from trtprune.fsutil import refuse_overwrite, safe_file_name, same_file, write_json, write_text
from trtprune.latency import BACKENDS, TEST_ONLY_BACKENDS, get_backend
from trtprune.latency.devices import DEVICES, all_devices, get_device
from trtprune.latency.trt_onnx import check_precision
from trtprune.log import progress
from trtprune.metrics import accuracy_onnx
from trtprune.plots import stairs_plot
from trtprune.profiling.engine_stairs import EngineProfiler
from trtprune.profiling.fleet import Fleet
from trtprune.profiling.layers import layers_of
from trtprune.profiling.lut import LUT
from trtprune.profiling.profile import Profiler, group_layers, profilable, profile_groups
from trtprune.profiling.stairs import Tolerance
from trtprune.provenance import provenance
from trtprune.pruning.importance import IMPORTANCE
from trtprune.pruning.prune import GroupPruner, check_round_to, uniform_plan_of
from trtprune.report import stage_report
from trtprune.run import Run, RunConfig, check_finished, read_config, run_all, run_name
from trtprune.searching import SEARCHERS, Budget, Plan, runner
from trtprune.searching.runner import prune_with_data
from trtprune.sources import fetch
from trtprune.sources.datasets import ensure_cifar10
from trtprune.sources.images import check_images, open_images
from trtprune.sources.models import BUILTIN, build_model, model_argument, model_spec
from trtprune.sources.weights import load_model, read_checkpoint, resolve_weights, save_pruned, unsafe_pickle
from trtprune.tasks import get_task, task_data
from trtprune.training import distributed as DI
from trtprune.training.finetune import FinetuneConfig, finetune


def _spec(a):
    """The model's spec with the input shape and normalisation given on the command line."""
    return model_spec(a.model, input_shape=a.input_shape, mean=a.mean, std=a.std)


def _ft_config(a):

    if (
        a.epochs < 1
        or a.batch_size < 1
        or not 0 < a.lr < math.inf
        or not 0 <= a.distill <= 1
        or a.train_limit < 0
        or a.recalibrate < 0
        or not 0 <= a.warmup <= a.epochs
    ):
        raise TrtpruneError(
            "fine-tuning settings out of range",
            fix="use --epochs >= 1, --batch-size >= 1, a finite --lr > 0, --distill in [0, 1], --train-limit >= 0, "
            "--recalibrate >= 0 and --warmup between 0 and --epochs",
        )
    return FinetuneConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        distill=a.distill,
        train_limit=a.train_limit,
        channels_last=False if a.no_channels_last else (True if a.channels_last else None),
        precision=a.precision,
        train_device=a.train_device,
        compile=a.compile,
        seed=a.seed,
        recalibrate=a.recalibrate,
        warmup=a.warmup,
    )


def _py_file(spec) -> str | None:
    """The Python file of ``file.py:name`` (--model, --task, --data), else None."""
    file, sep, _ = str(spec or "").rpartition(":")
    return file if sep and file.endswith(".py") else None


def _inputs(a) -> list[tuple[str, str | None]]:
    """The files a command reads, as (option, path) pairs."""
    onnx = getattr(a, "onnx", None)
    found = [(f"--{k}", getattr(a, k, None)) for k in ("weights", "teacher", "plan", "calib", "lut")]
    onnx = [onnx] if isinstance(onnx, str) else onnx or []
    found += [("--onnx" if a.command == "eval" else "input", p) for p in onnx]
    return found + [(f"--{k}'s file", _py_file(getattr(a, k, None))) for k in ("model", "task", "data")]


def _outputs(a) -> list[tuple[str, str | Path | None]]:
    """The files a command writes, as (option, path) pairs: -o, --json-file and --log-file; prune's plan beside
    its checkpoint; a run's files and its engine."""
    found = [("-o", getattr(a, "output", None)), ("--json-file", getattr(a, "json_file", None))]
    found.append(("--log-file", a.log_file))
    if a.command == "prune" and a.output and not a.plan:
        found.append(("the plan written beside -o", Path(a.output).with_suffix(".plan.json")))
    if a.command == "run":
        name = run_name(a.name, a.model, a.device)
        found += [(f"the run's {f}", Path(a.runs_dir) / name / f) for f in Run.FILES]
        found += [("the run's engine", Path(a.engines_dir) / f"{name}{s}") for s in (".onnx", ".plan")]
    return found


def check_outputs(a) -> None:
    """Before any work: no output of the command is one of its inputs (prune -o w.th --weights w.th), another of its
    outputs, or a file of a run directory."""
    check_run_files(a)
    refuse_overwrite(_outputs(a), _inputs(a))


def run_dir_of(path) -> Path | None:
    """The run directory ``path`` is or is inside (a folder holding a run's config.json and its .lock or first stage
    file), else None."""
    p = Path(os.path.realpath(path))
    marks = (".lock", "baseline.onnx")
    return next(
        (d for d in (p, *p.parents) if (d / "config.json").is_file() and any((d / m).exists() for m in marks)), None
    )


def _engines_in_run(a) -> Path | None:
    """The run directory ``run --engines-dir`` is (or is inside): this run's (made yet or not), or one holding a run."""
    own = Path(a.runs_dir) / run_name(a.name, a.model, a.device)
    engines = Path(os.path.realpath(a.engines_dir))
    if Path(os.path.realpath(own)) in (engines, *engines.parents):
        return own
    return run_dir_of(engines)


def check_run_files(a) -> None:
    """No command writes over a run's files: run's engines go outside run directories, and -o, --json-file and
    --log-file are not a stage file of one (build -o runs/r1/pruned.onnx)."""
    inside = _engines_in_run(a) if a.command == "run" else None
    if inside:
        raise TrtpruneError(
            f"--engines-dir '{a.engines_dir}' is inside the run directory '{inside}'",
            why="a run directory holds the run's stage files (baseline.onnx, plan.json, pruned.onnx ...): an engine "
            "delivered there can write over one of them (--name baseline over baseline.onnx), and the run and its "
            "report would then read the engine as that file",
            fix="give --engines-dir a folder outside the run directories (default: engines)",
        )
    for label, out in (("-o", getattr(a, "output", None)), ("--json-file", getattr(a, "json_file", None))):
        found = run_dir_of(Path(out).parent) if out and Path(out).name in Run.FILES else None
        if found:
            raise TrtpruneError(
                f"{label} '{out}' would write over the run's {Path(out).name} in '{found}'",
                why="it is a file a stage of that run made: the run would go on from, and report, a file it did not "
                "make",
                fix=f"give {label} a path outside the run directory (e.g. engines/{Path(out).name})",
            )


def cmd_list(a) -> dict:

    devices = all_devices()  # the built-in ones and the user's (TRTPRUNE_DEVICES or ~/.config/trtprune/devices.toml)
    backends = [b for b in BACKENDS if b not in TEST_ONLY_BACKENDS]
    print("models:     " + ", ".join(f"{n}{' (pretrained)' if s.pretrained else ''}" for n, s in BUILTIN.items()))
    print(
        "devices:    "
        + ", ".join(f"{n} ({d.description}{'' if n in DEVICES else ', yours'})" for n, d in devices.items())
    )
    print("backends:   " + ", ".join(backends))
    print("importance: " + ", ".join(IMPORTANCE))
    print("methods:    " + ", ".join(SEARCHERS))
    return {
        "models": {
            n: {"input_shape": list(s.input_shape), "pretrained": bool(s.pretrained)} for n, s in BUILTIN.items()
        },
        "devices": {n: {**dataclasses.asdict(d), "builtin": n in DEVICES} for n, d in devices.items()},
        "backends": backends,
        "importance": list(IMPORTANCE),
        "methods": list(SEARCHERS),
    }


def cmd_groups(a) -> dict:

    model, spec = load_model(_spec(a), a.weights)
    pruner = GroupPruner(model, spec.input_shape, a.ignore)
    groups, whole = pruner.groups(), pruner.kept_whole()
    print(f"{'group':<24} {'channels':>8}  producers -> consumers")
    for g in groups:
        step = f" (multiples of {g.multiple})" if g.multiple > 1 else ""
        print(f"{g.name:<24} {g.channels:>8}  {', '.join(g.producers)} -> {', '.join(g.consumers)}{step}")
    print(f"{len(groups)} prunable groups" + (f"; kept whole: {', '.join(whole)}" if whole else ""))
    return {"groups": [dataclasses.asdict(g) for g in groups], "kept_whole": whole}


def cmd_export(a) -> dict:

    batch = a.batch if a.batch is not None else get_device(a.device).batch
    if batch < 1:
        raise TrtpruneError(f"--batch {batch} is not a batch size", fix="use 1 or more")
    model, spec = load_model(_spec(a), resolve_weights(a.model, a.weights, a.data))
    e = onnx_from_torch(model, a.output, spec.input_shape, batch)
    print(f"wrote {e.path} (batch {batch}, {e.nodes} nodes, max |onnxruntime - torch| = {e.max_abs_diff:.2e})")
    return {"onnx": str(e.path), "batch": batch, "nodes": e.nodes, "max_abs_diff": e.max_abs_diff}


def _onnx_shape(path) -> tuple[int, ...] | None:
    """The (C, H, W) an ONNX model's first input takes, or None where it is not a static image batch."""
    model = read_onnx(path)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] if model.graph.input else []
    return tuple(dims[1:]) if len(dims) == 4 and all(dims[1:]) else None


def _onnx_spec(a):
    """The spec for an ONNX file: its input shape is the file's (what --input-shape, if given, must agree with)."""
    spec, shape = _spec(a), _onnx_shape(a.onnx)
    if shape is None or shape == spec.input_shape:
        return spec
    if a.input_shape is not None:
        given = "x".join(map(str, spec.input_shape))
        raise TrtpruneError(
            f"--input-shape {given} does not match '{a.onnx}', which takes {'x'.join(map(str, shape))} images",
            fix="leave --input-shape out (the file's own shape is used), or export the model again at that shape",
        )
    return dataclasses.replace(spec, input_shape=shape)


def cmd_quantize(a) -> dict:

    spec = _onnx_spec(a)
    calib = calibration(a.calib, a.data, spec, a.images)
    out = qdq_from_onnx(a.onnx, a.output, calib, method=a.method, target=a.target)
    s = qdq_summary(out)
    print(
        f"wrote {out}: INT8 Q/DQ for {a.target} ({s['quantize']} Q / {s['dequantize']} DQ nodes), {a.method} "
        f"calibration on {len(calib)} images"
    )
    return {"onnx": str(out), "target": a.target, "method": a.method, "calibration_images": len(calib), **s}


def _once(paths: list[str]) -> None:
    """Each ONNX file once: the figures are keyed by file, so a file given twice would print a row the JSON lacks."""
    for i, path in enumerate(paths):
        twice = next((p for p in paths[:i] if same_file(p, path)), None)
        if twice is not None:
            raise TrtpruneError(
                f"'{path}' is given twice" + (f" (also as '{twice}')" if twice != path else ""),
                why="each model is timed once in the interleaved run and its figures are keyed by its file; a file "
                "given twice would be two rows of one model, and one of them missing from the JSON",
                fix="give each ONNX file once (a copy under another name is timed as a model of its own)",
            )


def cmd_measure(a) -> dict:

    _once(a.onnx)
    device = get_device(a.device)
    for m in a.onnx:
        check_precision(read_onnx(m), m, device)
    with get_backend(device) as backend:
        timings = backend.compare(a.onnx, rounds=a.rounds)
        info = backend.info()
    print(f"device {info['device']}: {info['key']} (one interleaved run, {a.rounds} rounds)")
    print(f"{'model':<40} {'median ms':>10} {'p90 ms':>10} {'n':>6} {'speed-up':>9}")
    for m, t in zip(a.onnx, timings):
        print(f"{m:<40} {t.median_ms:>10.3f} {t.p90_ms:>10.3f} {t.n:>6} {timings[0].median_ms / t.median_ms:>8.2f}x")
    result = {"device": info, "models": {m: t.to_dict() for m, t in zip(a.onnx, timings)}, "provenance": provenance()}
    if a.json_file:
        write_json(a.json_file, result)
    return result


def _task(a):
    """The task of --task (classification by default) and the data it reads: --data, else the task's loaders."""
    task = get_task(a.task)
    return task, task_data(task, a.data)


def cmd_eval(a) -> dict:

    task, data = _task(a)
    spec = _spec(a)
    if a.onnx:
        shape, what = _onnx_shape(a.onnx) or spec.input_shape, a.onnx
    else:
        model, spec = load_model(spec, resolve_weights(a.model, a.weights, data))
        shape, what = spec.input_shape, f"{spec.name} ({a.weights or 'published weights'})"
    # an ONNX file's shape is checked against the images by its evaluation, which names the file
    images = open_images(data, a.split, shape, a.limit, check=not a.onnx) if task.images_metric else None
    if a.onnx and task.metric_key == "top1":
        result = accuracy_onnx(a.onnx, images, spec.mean, spec.std)
    elif a.onnx:  # the task's metric on the file, called as the model (--model gives the structure of its outputs)
        structure = structure_of(build_model(spec), shape) if a.model else None
        result = task.evaluate(OnnxModule(a.onnx, structure), images, spec.mean, spec.std)
    else:
        result = task.evaluate(model, images, spec.mean, spec.std)
    if task.metric_key == "top1":
        top5 = f", top-5 {result['top5']:.2f} %" if "top5" in result else ""
        print(f"top-1 {result['top1']:.2f} %{top5} on {len(images):,} {a.split} images: {what}")
    else:
        others = "".join(f", {k} {v:.2f}" for k, v in result.items() if k != task.metric_key)
        print(f"{task.metric_name} {result[task.metric_key]:.2f}{others}: {what}")
    out = {**result, "model": what, "task": task.to_dict()}
    return {**out, "images": len(images), "split": a.split} if images is not None else out


def _budget(a):
    """The budget given by --budget (text) or --budget-ms (argparse makes them exclusive); None for none."""
    return Budget.parse(ms=a.budget_ms) if a.budget_ms is not None else Budget.from_text(a.budget)


def _items(text: str) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _floor(a) -> float:
    if not 0 < a.floor < 1:
        raise TrtpruneError(f"--floor {a.floor} is not a fraction of a group's channels", fix="use e.g. 0.1 or 0.25")
    return a.floor


def cmd_search(a) -> dict:
    import tempfile

    budget = _budget(a)
    if budget is None:
        raise TrtpruneError("trtprune search needs a budget", fix="pass --budget 0.5x or --budget-ms 1.2")
    device = get_device(a.device)
    task, data = _task(a)
    weights = resolve_weights(a.model, a.weights, data)
    with tempfile.TemporaryDirectory(prefix="trtprune-search-") as tmp:
        plan = runner.search(
            _spec(a),
            weights,
            device,
            budget,
            a.method,
            workdir=Path(tmp),
            lut_path=a.lut,
            importance=a.importance,
            data=data,
            round_to=a.round_to,
            protocol=a.protocol,
            ignore=a.ignore,
            min_fraction=_floor(a),
            ranked=parse_ranked(_items(a.rank)),
            stairs_from=a.stairs_from,
            remove_depth=a.depth,
            task=task,
        )
    plan.save(a.output)
    print(
        f"wrote {a.output}: {plan.method} for {plan.budget} on {device.name}: measured {plan.measured_ms:.3f} ms vs "
        f"baseline {plan.baseline_ms:.3f} ms ({plan.measured_ms / plan.baseline_ms:.3f}x; predicted "
        f"{plan.predicted_ms:.3f} ms), search {plan.meta['wall_s']:.0f} s"
    )
    return {"plan": str(a.output), **dataclasses.asdict(plan)}


def cmd_prune(a) -> dict:

    task, data = _task(a)
    model, spec = load_model(_spec(a), resolve_weights(a.model, a.weights, data))
    if a.plan:
        plan = Plan.load(a.plan)
        if plan.model != spec.name:
            raise TrtpruneError(
                f"plan '{a.plan}' is for {plan.model}, not {spec.name}",
                fix=f"use --model {model_argument(plan.model)}",
            )
    else:  # no device is involved: the plan's device is empty; bad --ratio/--round-to fail here, before scoring
        groups = GroupPruner(model, spec.input_shape, a.ignore).groups()
        plan = uniform_plan_of(groups, a.ratio, a.round_to, spec.name, importance=a.importance)
    prune_with_data(model, spec, plan, a.importance, data, a.ignore, task)
    save_pruned(a.output, model, spec.name, model.trtprune_history, plan=plan.keep_channels)
    kept, total = sum(plan.keep_channels.values()), sum(plan.channels.values())
    if a.plan:
        print(f"wrote {a.output}: pruned to {a.plan} ({kept} of {total} channels kept)")
        return {"checkpoint": str(a.output), "plan": str(a.plan), "keep_channels": plan.keep_channels}
    plan_path = Path(a.output).with_suffix(".plan.json")
    plan.save(plan_path)  # the Plan format: prune --plan takes it back
    print(f"wrote {a.output} and {plan_path}: {kept} of {total} channels kept")
    return {"checkpoint": str(a.output), "plan": str(plan_path), "keep_channels": plan.keep_channels}


def cmd_finetune(a) -> dict:

    cfg = _ft_config(a)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)  # by torchrun
    if launched > 1 and a.nproc != 1:
        raise TrtpruneError(
            f"--nproc {a.nproc} under torchrun (WORLD_SIZE={launched})",
            fix="leave --nproc out: torchrun starts the processes",
        )
    DI.check_processes(a.nproc, cfg.batch_size)
    DI.check_processes(launched, cfg.batch_size, source=f"WORLD_SIZE={launched} from torchrun")
    if cfg.distill > 0 and not a.teacher:
        raise TrtpruneError("--distill needs a teacher", fix="pass the unpruned weights with --teacher")
    if Path(a.output).exists() and not a.resume:
        raise TrtpruneError(f"'{a.output}' exists", fix="pass --resume to continue it, or choose another -o")
    if a.nproc > 1:
        ensure_cifar10(*fetch.data_root(a.data))  # a download, if any, once: not by every process
        records = DI.launch(_finetune_job, a.nproc, a, cfg, verbose=a.verbose)
    else:
        with DI.from_env():
            records = _finetune_job(a, cfg)
    if os.environ.get("RANK", "0") in ("", "0"):
        last, task = records[-1], read_checkpoint(a.output).get("task", {})  # the task file is not imported twice
        key, name = task.get("metric_key", "top1"), task.get("metric", "top-1 (%)")
        print(
            f"wrote {a.output}: {name} {last[key]:.2f} after {last['epoch']} epochs"
            if key in last
            else f"wrote {a.output} after {last['epoch']} epochs"
        )
    return {"checkpoint": str(a.output), "records": records}


def _finetune_job(a, cfg) -> list[dict]:
    """Fine-tuning in this process; with --nproc or torchrun, in each of them (see trtprune.training.distributed)."""
    import contextlib

    # a process started by --nproc does not inherit the CLI's --unsafe-pickle scope
    with unsafe_pickle() if a.unsafe_pickle else contextlib.nullcontext():
        model, spec = load_model(_spec(a), a.weights)
        history = read_checkpoint(a.weights).get("history", [])
        teacher = load_model(_spec(a), a.teacher)[0] if cfg.distill > 0 else None
    task, data = _task(a)
    return finetune(
        model,
        open_images(data, "train", spec.input_shape),
        open_images(data, "test", spec.input_shape, a.eval_limit),
        spec.mean,
        spec.std,
        cfg,
        checkpoint=Path(a.output),
        base_model=spec.name,
        history=history,
        teacher=teacher,
        resume=a.resume,
        task=task,
    )


# what each kind of file is usually named: an engine written under another kind's suffix misleads whoever loads it
_SUFFIXES = {".onnx": (".onnx",), ".plan": (".plan", ".engine", ".trt")}
_OTHER_KINDS = {".onnx", ".plan", ".engine", ".trt", ".pt", ".pth", ".th", ".pb", ".tflite"}


def _check_engine_suffix(out: Path, device) -> None:
    suffix, wanted = out.suffix.lower(), _SUFFIXES.get(device.engine_suffix, (device.engine_suffix,))
    if suffix in _OTHER_KINDS and suffix not in wanted:
        raise TrtpruneError(
            f"-o '{out}' ends in {suffix}, but device '{device.name}' delivers "
            + ("an ONNX model" if device.engine_suffix == ".onnx" else "a TensorRT engine")
            + f" ({', '.join(wanted)})",
            why="the file's suffix says what it is to whoever loads it (ONNX Runtime, trtexec, torch.load)",
            fix=f"-o {out.with_suffix(wanted[0])}",
        )


def cmd_build(a) -> dict:

    device = get_device(a.device)
    if a.output:
        _check_engine_suffix(Path(a.output), device)
    model, spec = load_model(_spec(a), a.weights)
    out = Path(a.output or f"engines/{spec.name}-{device.name}{device.engine_suffix}")
    calib = calibration(a.calib, a.data, spec, a.calib_images) if device.int8_form else None
    e = engine_from_model(model, spec.input_shape, device, out, calib)
    print(f"wrote {out}: {e.kind} for {device.name} ({e.key})")
    return {"engine": str(out), "device": device.name, "key": e.key, "kind": e.kind}


def verdict(report: dict, max_top1_drop: float | None) -> int:
    """The exit status of a finished run: 0, or BUDGET_MISSED / TOP1_GATE / both, printed on stderr."""
    status = 0
    if report.get("budget") and not report["budget"]["met"]:
        status |= BUDGET_MISSED
        v = report["budget"]
        print(
            f"trtprune: the delivered model misses its budget {v['budget']}: {v['ratio']:.3f}x of the baseline in the "
            f"report's side-by-side measurement (exit status {BUDGET_MISSED})",
            file=sys.stderr,
        )
    key, name = report.get("task", {}).get("metric_key", "top1"), report.get("task", {}).get("metric", "top-1")
    drop = report["baseline"][key] - report["pruned"][key]
    if max_top1_drop is not None and drop > max_top1_drop:
        status |= TOP1_GATE
        print(
            f"trtprune: {name} dropped {drop:.2f} points ({report['baseline'][key]:.2f} -> "
            f"{report['pruned'][key]:.2f}), more than --max-top1-drop {max_top1_drop:g} (exit status {TOP1_GATE})",
            file=sys.stderr,
        )
    return status


def cmd_run(a) -> dict:

    name = run_name(a.name, a.model, a.device)
    budget = _budget(a)
    # before any file is made: the data fits the input shape, the weights load into the model, it runs at its input
    # shape, --ignore names its modules, (where it is used) --round-to prunes something, and an int8 device's
    # calibration images (read at the end) can be read
    task, data = _task(a)
    spec = _spec(a)
    if task.images_metric:
        check_images(data, "test", spec.input_shape)
    model, spec = load_model(spec, resolve_weights(a.model, a.weights, data))
    groups = GroupPruner(model, spec.input_shape, a.ignore).groups()
    if budget is None or a.method in ("uniform", "flops"):
        check_round_to(groups, a.round_to)
    if get_device(a.device).int8_form:
        calibration(a.calib, data, spec, a.calib_images)
    cfg = RunConfig(
        model=a.model,
        input_shape=a.input_shape,
        mean=a.mean,
        std=a.std,
        weights=a.weights,
        device=a.device,
        method=a.method,
        budget=None if budget is None else str(budget),  # its one text form, read back by Budget.from_text
        ratio=a.ratio,
        round_to=a.round_to,
        importance=a.importance,
        ignore=list(a.ignore),
        floor=_floor(a),
        ranked=[f"{c}:{f:g}" for c, f in parse_ranked(_items(a.rank))],
        stairs_from=a.stairs_from,
        depth=a.depth,
        finetune=_ft_config(a),
        calib=a.calib,
        calib_images=a.calib_images,
        eval_limit=a.eval_limit,
        task=a.task,
    )
    with Run(Path(a.runs_dir) / name, cfg, a.data, a.engines_dir, fresh=a.fresh, lut=a.lut, task=task) as run:
        report = run_all(run)
    b, p, key = report["baseline"], report["pruned"], task.metric_key
    print(
        f"{report['model']} on {report['device']['device']}: {b['latency']['median_ms']:.3f} -> "
        f"{p['latency']['median_ms']:.3f} ms ({report['speedup']:.2f}x, measured side by side), {task.metric_name} "
        f"{b[key]:.2f} -> {p[key]:.2f}"
    )
    print(f"engine: {report['engine']}\nreport: {run.path('report.md')}")
    return {**report, "exit_status": verdict(report, a.max_top1_drop)}


def cmd_report(a) -> dict:

    path = Path(a.run_dir) / "config.json"
    if not Path(a.run_dir).exists():
        raise TrtpruneError(
            f"run directory '{a.run_dir}' does not exist",
            why="report re-measures a run that trtprune run made, from the files in its folder",
            fix="give runs/<name> of a run (ls runs), or make it first: trtprune run ... --name <name>",
        )
    if not Path(a.run_dir).is_dir():
        raise TrtpruneError(
            f"'{a.run_dir}' is a file, not a run directory",
            why="report takes the run's folder, runs/<name>, and reads its config.json and stage files",
            fix=f"give the folder: trtprune report {Path(a.run_dir).parent}",
        )
    if not path.is_file():
        raise TrtpruneError(f"'{a.run_dir}' is not a run directory (no config.json)", fix="give runs/<name> of a run")
    cfg = RunConfig.from_dict(read_config(path), str(path))
    with Run(a.run_dir, cfg, a.data, a.engines_dir) as run:
        check_finished(run)
        report = stage_report(run)
    print(f"wrote {run.path('report.md')} and {run.path('report.json')}")
    return {**report, "exit_status": verdict(report, a.max_top1_drop)}


def refuse_file_as_folder(label: str, folder: Path) -> None:
    """Refuse an output folder that is a file, or inside one."""
    file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
    if file is not None:
        raise TrtpruneError(
            f"{label} '{folder}' is not a folder: '{file}' is a file",
            why="profile writes its results into that folder (stairs.json, stairs.md, model.onnx, one plot per group)",
            fix=f"give {label} a folder, new or existing (e.g. profiles/{folder.name}-stairs)",
        )


def cmd_profile(a) -> dict:
    import onnx

    if not 0 < a.rel < 1:
        raise TrtpruneError(f"--rel {a.rel} is not a fraction", fix="use e.g. 0.01 for 1 %")
    if a.ray_workers is not None and (a.ray != "local" or a.ray_workers < 1):
        raise TrtpruneError(
            f"--ray-workers {a.ray_workers} needs --ray local and a count of at least 1",
            fix="e.g. --ray local --ray-workers 2; a cluster's workers are its nodes' device resources",
        )
    device = get_device(a.device)
    model, spec = load_model(_spec(a), a.weights)
    groups = GroupPruner(model, spec.input_shape).groups()
    out = Path(a.out or f"profiles/{spec.name}-{device.name}")
    refuse_file_as_folder("--out", out)  # before the LUT is opened (it would be created): nothing is written
    tol = Tolerance(rel=a.rel)
    if a.ray:
        measurer = Fleet(device, a.ray, workers=a.ray_workers)
    else:
        measurer = get_backend(device)
    with measurer, LUT(a.lut) as lut:  # an absent engine, Ray cluster or a bad --lut fails before work
        onnx_from_torch(model, out / "model.onnx", spec.input_shape, device.batch)
        gls, left_out = profilable(group_layers(groups, layers_of(onnx.load(str(out / "model.onnx")))), model)
        profiler = Profiler.on(measurer, lut, protocol=a.protocol)
        source = a.source
        method = a.method if a.method != "auto" else "three_point" if source == "engine" else profiler.default_method()
        t0 = time.perf_counter()
        if source == "engine":
            if a.ray or a.method == "exhaustive":
                raise TrtpruneError(
                    "--from engine profiles with the three-point search on one device",
                    fix="drop --ray / --method exhaustive, or profile single layers with --from layers",
                )
            engine_profiler = EngineProfiler(measurer, model, spec.input_shape, out / "engines")
            found = {
                gl.group.name: engine_profiler.stairs(gl.group, tol)
                for gl in progress(gls, desc="profiling groups (engines)", unit="group")
            }
        else:
            found = profile_groups(profiler, gls, tol, method)
        wall_s = time.perf_counter() - t0
        results = {}
        for gl in gls:
            s, g = found[gl.group.name], gl.group
            results[g.name] = {
                "channels": g.channels,
                "edges": list(s.edges),
                "dips": list(s.dips),
                "latency_ms": {str(c): v for c, v in sorted(s.latency.items())},
                "producers": list(g.producers),
                "consumers": list(g.consumers),
            }
            if not a.no_plots:
                title = f"{spec.name} / {g.name} on {device.name}"
                stairs_plot(out / f"{safe_file_name(g.name)}.png", title, s, g.channels)
        info, lut_path = measurer.info(), lut.path
        fleet = measurer.summary() if a.ray else None
    summary = {
        "model": spec.name,
        "device": info,
        "method": method,
        "source": source,
        **({"engine_builds": engine_profiler.builds} if source == "engine" else {}),
        "tolerance_rel": a.rel,
        "protocol": profiler.protocol,
        "lut": str(lut_path),
        "lut_key": profiler.key(),
        "measured": profiler.measured,
        "timing_runs": profiler.runs,
        "retimed_in_spells": profiler.retimed,
        "requested": profiler.requested,
        "saved_by_sharing": profiler.requested - profiler.measured,
        "left_out": left_out,  # modules the profiler could not time, by group
        "seconds": profiler.seconds,  # measuring, summed over the threads of a fleet run
        "wall_s": wall_s,
        **({"ray": {"address": a.ray, **fleet}} if fleet else {}),
    }
    write_json(out / "stairs.json", {**summary, "groups": results})
    lines = [
        f"# Stairs of {spec.name} on `{device.name}`",
        "",
        f"{profiler.key()}; {method} search, 'same latency' within {a.rel:.0%}; "
        + (
            f"each count from the per-layer profile of the whole model's engine ({engine_profiler.builds} engines)"
            if source == "engine"
            else "single layers timed into the latency table"
        )
        + f"{' (quick protocol: noisier)' if a.protocol == 'quick' else ''}. Edges are the counts worth "
        "keeping (the largest on each stair); dips are counts the engine runs slower than a larger one.",
        "",
        "| group | channels | edges (recommended counts) | dips measured |",
        "|---|---:|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['channels']} | {', '.join(map(str, r['edges']))} | "
            f"{', '.join(map(str, r['dips'])) or '-'} |"
        )
    write_text(out / "stairs.md", "\n".join(lines) + "\n")
    print(
        f"{len(gls)} groups: {profiler.measured} points measured, {summary['saved_by_sharing']} served by the "
        f"LUT (latency sharing), {wall_s:.1f} s"
    )
    if fleet:
        print(
            f"Ray: {fleet['workers']} worker(s), batches per worker {sorted(fleet['jobs_per_worker'].values())}, "
            f"{len(fleet['lost'])} lost, {fleet['retried']} batch(es) sent again, {len(fleet['left_out'])} left out"
        )
    print(
        f"wrote {out / 'stairs.md'}, {out / 'stairs.json'}{'' if a.no_plots else ' and one plot per group'}; "
        f"LUT: {lut_path}"
    )
    return {**summary, "groups": results, "stairs": str(out / "stairs.json")}
