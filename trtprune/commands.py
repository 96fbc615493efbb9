"""What each subcommand does, given its parsed arguments. Heavy modules are imported per command."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .errors import TrtpruneError


def _ft_config(a):
    from .finetune import FinetuneConfig

    if a.epochs < 1 or a.batch_size < 1 or a.lr <= 0 or not 0 <= a.distill <= 1:
        raise TrtpruneError(
            "fine-tuning settings out of range",
            fix="use --epochs >= 1, --batch-size >= 1, --lr > 0 and --distill in [0, 1]",
        )
    return FinetuneConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        distill=a.distill,
        train_limit=a.train_limit,
        channels_last=not a.no_channels_last,
        precision=a.precision,
        train_device=a.train_device,
        compile=a.compile,
        seed=a.seed,
    )


def cmd_list(a) -> None:
    from .devices import DEVICES
    from .importance import IMPORTANCE
    from .latency import BACKENDS
    from .models import BUILTIN

    print("models:     " + ", ".join(f"{n}{' (pretrained)' if s.pretrained else ''}" for n, s in BUILTIN.items()))
    print("devices:    " + ", ".join(f"{n} ({d.description})" for n, d in DEVICES.items()))
    print("backends:   " + ", ".join(BACKENDS))
    print("importance: " + ", ".join(IMPORTANCE))


def cmd_groups(a) -> None:
    from .prune import GroupPruner
    from .weights import load_model

    model, spec = load_model(a.model, a.weights)
    groups = GroupPruner(model, spec.input_shape).groups()
    print(f"{'group':<24} {'channels':>8}  producers -> consumers")
    for g in groups:
        print(f"{g.name:<24} {g.channels:>8}  {', '.join(g.producers)} -> {', '.join(g.consumers)}")
    print(f"{len(groups)} prunable groups")


def cmd_export(a) -> None:
    from .devices import get_device
    from .export import onnx_from_torch
    from .pipeline import resolve_weights
    from .weights import load_model

    batch = a.batch if a.batch is not None else get_device(a.device).batch
    if batch < 1:
        raise TrtpruneError(f"--batch {batch} is not a batch size", fix="use 1 or more")
    model, spec = load_model(a.model, resolve_weights(a.model, a.weights, a.data))
    e = onnx_from_torch(model, a.output, spec.input_shape, batch)
    print(f"wrote {e.path} (batch {batch}, {e.nodes} nodes, max |onnxruntime - torch| = {e.max_abs_diff:.2e})")


def cmd_quantize(a) -> None:
    from .models import model_spec
    from .quantize import calib_from_training, calib_images, qdq_from_onnx, qdq_summary

    spec = model_spec(a.model)
    calib = calib_images(a.calib, spec, a.images) if a.calib else calib_from_training(a.data, spec, a.images)
    out = qdq_from_onnx(a.onnx, a.output, calib, method=a.method, target=a.target)
    s = qdq_summary(out)
    print(
        f"wrote {out}: INT8 Q/DQ for {a.target} ({s['quantize']} Q / {s['dequantize']} DQ nodes), {a.method} "
        f"calibration on {len(calib)} images"
    )


def cmd_measure(a) -> None:
    from .devices import get_device
    from .export import read_onnx
    from .latency import get_backend

    for m in a.onnx:
        read_onnx(m)
    with get_backend(get_device(a.device)) as backend:
        timings = backend.compare(a.onnx, rounds=a.rounds)
        info = backend.info()
    print(f"device {info['device']}: {info['key']} (one interleaved run, {a.rounds} rounds)")
    print(f"{'model':<40} {'median ms':>10} {'p90 ms':>10} {'n':>6} {'speed-up':>9}")
    for m, t in zip(a.onnx, timings):
        print(f"{m:<40} {t.median_ms:>10.3f} {t.p90_ms:>10.3f} {t.n:>6} {timings[0].median_ms / t.median_ms:>8.2f}x")
    if a.json:
        from .fsutil import write_json
        from .provenance import provenance

        write_json(
            a.json,
            {"device": info, "models": {m: t.to_dict() for m, t in zip(a.onnx, timings)}, "provenance": provenance()},
        )


def cmd_eval(a) -> None:
    from .metrics import top1_onnx, top1_torch
    from .models import model_spec
    from .pipeline import load_split, resolve_weights
    from .weights import load_model

    x, y = load_split(a.data, a.split, a.limit)
    if a.onnx:
        from .export import read_onnx

        read_onnx(a.onnx)
        spec = model_spec(a.model)
        acc, what = top1_onnx(a.onnx, x, y, spec.mean, spec.std), a.onnx
    else:
        model, spec = load_model(a.model, resolve_weights(a.model, a.weights, a.data))
        acc, what = top1_torch(model, x, y, spec.mean, spec.std), f"{spec.name} ({a.weights or 'published weights'})"
    print(f"top-1 {acc:.2f} % on {len(x):,} {a.split} images: {what}")


def _budget(a):
    from .search import Budget

    if a.budget_ms is not None:
        return Budget.parse(ms=a.budget_ms)
    if a.budget is None or str(a.budget).lower() == "none":
        return None
    return Budget.parse(a.budget)


def cmd_search(a) -> None:
    import tempfile

    from .devices import get_device
    from .pipeline import resolve_weights
    from .search import runner

    budget = _budget(a)
    if budget is None:
        raise TrtpruneError("trtprune search needs a budget", fix="pass --budget 0.5x or --budget-ms 1.2")
    device = get_device(a.device)
    weights = resolve_weights(a.model, a.weights, a.data)
    with tempfile.TemporaryDirectory(prefix="trtprune-search-") as tmp:
        plan = runner.search(
            a.model,
            weights,
            device,
            budget,
            a.method,
            workdir=Path(tmp),
            lut_path=a.lut,
            importance=a.importance,
            data=a.data,
            round_to=a.round_to,
            protocol=a.protocol,
            ignore=a.ignore,
        )
    plan.save(a.output)
    print(
        f"wrote {a.output}: {plan.method} for {plan.budget} on {device.name}: measured {plan.measured_ms:.3f} ms vs "
        f"baseline {plan.baseline_ms:.3f} ms ({plan.measured_ms / plan.baseline_ms:.3f}x; predicted "
        f"{plan.predicted_ms:.3f} ms), search {plan.meta['search_s']:.0f} s"
    )


def cmd_prune(a) -> None:
    from .fsutil import write_json
    from .pipeline import resolve_weights
    from .prune import GroupPruner, prune_uniform
    from .search.runner import channel_scores
    from .weights import load_model, save_pruned

    model, spec = load_model(a.model, resolve_weights(a.model, a.weights, a.data))
    if a.plan:
        from .search import Plan

        loaded = Plan.load(a.plan)
        if loaded.model != spec.name:
            raise TrtpruneError(
                f"plan '{a.plan}' is for {loaded.model}, not {spec.name}", fix=f"use --model {loaded.model}"
            )
        pruner = GroupPruner(model, spec.input_shape, a.ignore)
        pruner.prune_to(loaded.keep_channels, scores=channel_scores(model, spec, a.importance, a.data, a.ignore))
        save_pruned(a.output, model, spec.name, pruner.history(), plan=loaded.keep_channels)
        print(
            f"wrote {a.output}: pruned to {a.plan} ({sum(loaded.keep_channels.values())} of "
            f"{sum(loaded.channels.values())} channels kept)"
        )
        return
    scores = channel_scores(model, spec, a.importance, a.data, a.ignore)
    plan, history = prune_uniform(
        model, spec.input_shape, a.ratio, a.round_to, a.importance, scores=scores, ignore=a.ignore
    )
    save_pruned(a.output, model, spec.name, history, plan=plan["keep_channels"])
    plan_path = Path(a.output).with_suffix(".plan.json")
    write_json(plan_path, plan)
    kept, total = sum(plan["keep_channels"].values()), sum(plan["channels"].values())
    print(f"wrote {a.output} and {plan_path}: {kept} of {total} channels kept")


def cmd_finetune(a) -> None:
    from . import distributed as DI
    from . import fetch

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
        fetch.ensure_cifar10(*fetch.data_root(a.data))  # a download, if any, once: not by every process
        records = DI.launch(_finetune_job, a.nproc, a, cfg, verbose=a.verbose)
    else:
        with DI.from_env():
            records = _finetune_job(a, cfg)
    if os.environ.get("RANK", "0") in ("", "0"):
        last = records[-1]
        print(f"wrote {a.output}: top-1 {last['top1']:.2f} % after {last['epoch']} epochs")


def _finetune_job(a, cfg) -> list[dict]:
    """Fine-tuning in this process; with --nproc or torchrun, in each of them (see trtprune.distributed)."""
    import contextlib

    from .finetune import finetune
    from .pipeline import load_split
    from .weights import load_model, read_checkpoint, unsafe_pickle

    # a process started by --nproc does not inherit the CLI's --unsafe-pickle scope
    with unsafe_pickle() if a.unsafe_pickle else contextlib.nullcontext():
        model, spec = load_model(a.model, a.weights)
        history = read_checkpoint(a.weights).get("history", [])
        teacher = load_model(a.model, a.teacher)[0] if cfg.distill > 0 else None
    return finetune(
        model,
        load_split(a.data, "train"),
        load_split(a.data, "test", a.eval_limit),
        spec.mean,
        spec.std,
        cfg,
        checkpoint=Path(a.output),
        base_model=spec.name,
        history=history,
        teacher=teacher,
        resume=a.resume,
    )


def cmd_build(a) -> None:
    import tempfile

    from .devices import get_device
    from .export import onnx_from_torch
    from .weights import load_model

    device = get_device(a.device)
    model, spec = load_model(a.model, a.weights)
    out = Path(a.output or f"engines/{spec.name}-{device.name}{device.engine_suffix}")
    if device.engine_suffix == ".plan":  # TensorRT: export, then build the engine on the device
        from .latency import get_backend

        with tempfile.TemporaryDirectory() as tmp, get_backend(device) as backend:
            onnx = Path(tmp) / f"{spec.name}.onnx"
            onnx_from_torch(model, onnx, spec.input_shape, device.batch)
            if device.precision == "int8":
                from .quantize import calib_from_training, qdq_from_onnx

                onnx = qdq_from_onnx(onnx, Path(tmp) / "int8.onnx", calib_from_training(a.data, spec))
            backend.build(onnx, out)
            print(
                f"wrote {out}: TensorRT engine for {device.name} ({backend.key()}), built on {backend.info()['where']}"
            )
        return
    e = onnx_from_torch(model, out, spec.input_shape, device.batch)
    print(
        f"wrote {out} for device {device.name} (batch {device.batch}, max |onnxruntime - torch| = {e.max_abs_diff:.2e})"
    )


def cmd_run(a) -> None:
    from .pipeline import Run, RunConfig, run_all

    budget = _budget(a)
    cfg = RunConfig(
        model=a.model,
        weights=a.weights,
        device=a.device,
        method=a.method,
        budget=None if budget is None else (f"{budget.ms}ms" if budget.ms is not None else str(budget)),
        ratio=a.ratio,
        round_to=a.round_to,
        importance=a.importance,
        ignore=list(a.ignore),
        finetune=_ft_config(a),
        eval_limit=a.eval_limit,
    )
    name = a.name or f"{Path(cfg.model.split(':')[0]).stem}-{cfg.device}"
    with Run(Path(a.runs_dir) / name, cfg, a.data, a.engines_dir, fresh=a.fresh, lut=a.lut) as run:
        report = run_all(run)
    b, p = report["baseline"], report["pruned"]
    print(
        f"{report['model']} on {report['device']['device']}: {b['latency']['median_ms']:.3f} -> "
        f"{p['latency']['median_ms']:.3f} ms ({report['speedup']:.2f}x, measured side by side), top-1 "
        f"{b['top1']:.2f} -> {p['top1']:.2f} %"
    )
    print(f"engine: {report['engine']}\nreport: {run.path('report.md')}")


def cmd_report(a) -> None:
    from .pipeline import Run, RunConfig, read_config
    from .report import stage_report

    path = Path(a.run_dir) / "config.json"
    if not path.is_file():
        raise TrtpruneError(f"'{a.run_dir}' is not a run directory (no config.json)", fix="give runs/<name> of a run")
    cfg = RunConfig.from_dict(read_config(path), str(path))
    with Run(a.run_dir, cfg, a.data, a.engines_dir) as run:
        for name in ("baseline.onnx", "model.pt", "pruned.onnx"):
            if not run.path(name).is_file():
                raise TrtpruneError(
                    f"the run has no {name} yet", fix=f"finish it: trtprune run ... --name {run.dir.name}"
                )
        stage_report(run)
    print(f"wrote {run.path('report.md')} and {run.path('report.json')}")


def _profilable(gls, model) -> tuple[list, dict[str, list[str]]]:
    """The groups with at least one layer the profiler can time, and the conv/linear modules it cannot time
    (not a Conv or Gemm with constant weights in the exported graph), which are left out with a warning."""
    import logging

    from torch import nn

    log = logging.getLogger(__name__)
    timeable = {n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    kept, left_out = [], {}
    for gl in gls:
        found = {layer.name for layer in (*gl.producers, *gl.consumers)}
        missing = [n for n in (*gl.group.producers, *gl.group.consumers) if n in timeable and n not in found]
        if missing:
            left_out[gl.group.name] = missing
            log.warning(
                "group %s: %s not found as Conv/Gemm with constant weights in the exported graph: %s",
                gl.group.name,
                ", ".join(missing),
                "profiled without them" if found else "group not profiled",
            )
        if found:
            kept.append(gl)
    if not kept:
        raise TrtpruneError(
            "no channel group of the model has a layer the profiler can time",
            why="the profiler times Conv and Gemm layers with constant weights, found by the torch module names of "
            "their weights in the exported ONNX graph",
            fix="use plain nn.Conv2d / nn.Linear modules whose weights are used as they are",
        )
    return kept, left_out


def cmd_profile(a) -> None:
    import onnx

    from .devices import get_device
    from .export import onnx_from_torch
    from .fsutil import write_json, write_text
    from .latency import get_backend
    from .layers import layers_of
    from .lut import LUT
    from .plots import stairs_plot
    from .profile import Profiler, group_layers, profile_groups
    from .prune import GroupPruner
    from .stairs import Tolerance
    from .weights import load_model

    if not 0 < a.rel < 1:
        raise TrtpruneError(f"--rel {a.rel} is not a fraction", fix="use e.g. 0.01 for 1 %")
    if a.ray_workers is not None and (a.ray != "local" or a.ray_workers < 1):
        raise TrtpruneError(
            f"--ray-workers {a.ray_workers} needs --ray local and a count of at least 1",
            fix="e.g. --ray local --ray-workers 2; a cluster's workers are its nodes' device resources",
        )
    device = get_device(a.device)
    model, spec = load_model(a.model, a.weights)
    groups = GroupPruner(model, spec.input_shape).groups()
    out = Path(a.out or f"profiles/{spec.name}-{device.name}")
    tol = Tolerance(rel=a.rel)
    if a.ray:
        from .fleet import Fleet

        measurer = Fleet(device, a.ray, workers=a.ray_workers)
    else:
        measurer = get_backend(device)
    with measurer, LUT(a.lut) as lut:  # an absent engine, Ray cluster or a bad --lut fails before work
        onnx_from_torch(model, out / "model.onnx", spec.input_shape, device.batch)
        gls, left_out = _profilable(group_layers(groups, layers_of(onnx.load(str(out / "model.onnx")))), model)
        profiler = Profiler.on(measurer, lut, protocol=a.protocol)
        t0 = time.perf_counter()
        found = profile_groups(profiler, gls, tol, a.method)
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
                stairs_plot(out / f"{g.name}.png", f"{spec.name} / {g.name} on {device.name}", s, g.channels)
        info, lut_path = measurer.info(), lut.path
        fleet = measurer.summary() if a.ray else None
    summary = {
        "model": spec.name,
        "device": info,
        "method": a.method,
        "tolerance_rel": a.rel,
        "protocol": profiler.protocol,
        "lut": str(lut_path),
        "lut_key": profiler.key(),
        "measured": profiler.measured,
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
        f"{profiler.key()}; {a.method} search, 'same latency' within {a.rel:.0%}"
        f"{' (quick protocol: noisier)' if a.protocol == 'quick' else ''}. Edges are the counts worth "
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
