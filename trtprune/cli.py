"""The command line: one subcommand per pipeline stage, and `run` for all of them.

User mistakes print one message (what, why, what to do) and exit 2 without a traceback; ``-v`` shows
the traceback and debug logs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .errors import TrtpruneError

log = logging.getLogger("trtprune")


# -- shared option groups ---------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="count", default=0, help="more detail; -vv for debug logs")
    p.add_argument(
        "--data",
        help="folder with cifar10/ and weights/ (default: $TRTPRUNE_DATA, else the user "
        "cache, downloading what is missing)",
    )


def _model(
    p: argparse.ArgumentParser,
    weights_help: str = "checkpoint or state dict (default: the model's published weights, if it has them)",
) -> None:
    from .models import BUILTIN

    p.add_argument(
        "--model", default="resnet56", help=f"{', '.join(BUILTIN)} or path/file.py:factory (default: resnet56)"
    )
    p.add_argument("--weights", help=weights_help)


def _device(p: argparse.ArgumentParser) -> None:
    from .devices import DEFAULT_DEVICE, DEVICES

    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"{', '.join(DEVICES)} (default: {DEFAULT_DEVICE})")


def _pruning(p: argparse.ArgumentParser) -> None:
    from .importance import IMPORTANCE

    p.add_argument("--ratio", type=float, default=0.5, help="fraction of every channel group to remove (default 0.5)")
    p.add_argument("--round-to", type=int, default=8, help="keep a multiple of this many channels (default 8)")
    p.add_argument("--importance", default="l1", choices=list(IMPORTANCE), help="which channels go (default l1)")


def _finetuning(p: argparse.ArgumentParser, distill: float = 0.0) -> None:
    from .finetune import FinetuneConfig

    d = FinetuneConfig(distill=distill)
    p.add_argument("--epochs", type=int, default=d.epochs, help=f"fine-tuning epochs (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"training batch (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate, cosine decay (default {d.lr})")
    p.add_argument(
        "--distill",
        type=float,
        default=d.distill,
        help=f"weight of distillation from the unpruned model, 0..1 (default {d.distill}; 0 = off)",
    )
    p.add_argument("--train-limit", type=int, default=0, help="train on the first N images only (default: all)")
    p.add_argument("--no-channels-last", action="store_true", help="train in NCHW instead of NHWC memory format")
    p.add_argument("--seed", type=int, default=0)


def _ft_config(a):
    from .finetune import FinetuneConfig

    if a.epochs < 0 or a.batch_size < 1 or a.lr <= 0 or not 0 <= a.distill <= 1:
        raise TrtpruneError(
            "fine-tuning settings out of range",
            fix="use --epochs >= 0, --batch-size >= 1, --lr > 0 and --distill in [0, 1]",
        )
    return FinetuneConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        distill=a.distill,
        train_limit=a.train_limit,
        channels_last=not a.no_channels_last,
        seed=a.seed,
    )


# -- commands ---------------------------------------------------------------------------------------
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

    batch = a.batch or get_device(a.device).batch
    model, spec = load_model(a.model, resolve_weights(a.model, a.weights, a.data))
    e = onnx_from_torch(model, a.output, spec.input_shape, batch)
    print(f"wrote {e.path} (batch {batch}, {e.nodes} nodes, max |onnxruntime - torch| = {e.max_abs_diff:.2e})")


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
        acc = top1_onnx(a.onnx, x, y, spec.mean, spec.std)
        what = a.onnx
    else:
        model, spec = load_model(a.model, resolve_weights(a.model, a.weights, a.data))
        acc = top1_torch(model, x, y, spec.mean, spec.std)
        what = f"{spec.name} ({a.weights or 'published weights'})"
    print(f"top-1 {acc:.2f} % on {len(x):,} {a.split} images: {what}")


def cmd_prune(a) -> None:
    from .fsutil import write_json
    from .pipeline import resolve_weights
    from .prune import GroupPruner, uniform_plan
    from .weights import load_model, save_pruned

    model, spec = load_model(a.model, resolve_weights(a.model, a.weights, a.data))
    pruner = GroupPruner(model, spec.input_shape)
    groups = pruner.groups()
    plan = uniform_plan(groups, a.ratio, a.round_to)
    pruner.prune_to(plan, a.importance)
    save_pruned(a.output, model, spec.name, pruner.history(), plan=plan)
    plan_path = Path(a.output).with_suffix(".plan.json")
    write_json(
        plan_path,
        {
            "method": "uniform",
            "ratio": a.ratio,
            "round_to": a.round_to,
            "keep_channels": plan,
            "channels": {g.name: g.channels for g in groups},
        },
    )
    print(f"wrote {a.output} and {plan_path}: {sum(plan.values())} of {sum(g.channels for g in groups)} channels kept")


def cmd_finetune(a) -> None:
    from .finetune import finetune
    from .pipeline import load_split
    from .weights import is_pruned_checkpoint, load_model, read_checkpoint

    cfg = _ft_config(a)
    model, spec = load_model(a.model, a.weights)
    history = read_checkpoint(a.weights).get("history", []) if is_pruned_checkpoint(a.weights) else []
    teacher = load_model(a.model, a.teacher)[0] if a.teacher else None
    if cfg.distill > 0 and teacher is None:
        raise TrtpruneError("--distill needs a teacher", fix="pass the unpruned weights with --teacher")
    if Path(a.output).exists() and not a.resume:
        raise TrtpruneError(f"'{a.output}' exists", fix="pass --resume to continue it, or choose another -o")
    records = finetune(
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
    if records:
        print(
            f"wrote {a.output}: top-1 {records[-1].get('top1', float('nan')):.2f} % after {records[-1]['epoch']} epochs"
        )


def cmd_build(a) -> None:
    from .devices import get_device
    from .export import onnx_from_torch
    from .weights import load_model

    device = get_device(a.device)
    model, spec = load_model(a.model, a.weights)
    out = Path(a.output or f"engines/{spec.name}-{device.name}.onnx")
    e = onnx_from_torch(model, out, spec.input_shape, device.batch)
    print(
        f"wrote {out} for device {device.name} (batch {device.batch}, max |onnxruntime - torch| = {e.max_abs_diff:.2e})"
    )


def _run_config(a):
    from .pipeline import RunConfig

    return RunConfig(
        model=a.model,
        weights=a.weights,
        device=a.device,
        ratio=a.ratio,
        round_to=a.round_to,
        importance=a.importance,
        finetune=_ft_config(a),
        eval_limit=a.eval_limit,
    )


def cmd_run(a) -> None:
    from .pipeline import Run, run_all

    cfg = _run_config(a)
    name = a.name or f"{Path(cfg.model).stem if ':' in cfg.model else cfg.model}-{cfg.device}"
    with Run(Path(a.runs_dir) / name, cfg, a.data, a.engines_dir) as run:
        if a.fresh:
            run.clear()
        report = run_all(run)
    b, p = report["baseline"], report["pruned"]
    print(
        f"{report['model']} on {report['device']['device']}: {b['latency']['median_ms']:.3f} -> "
        f"{p['latency']['median_ms']:.3f} ms ({report['speedup']:.2f}x, measured side by side), top-1 "
        f"{b['top1']:.2f} -> {p['top1']:.2f} %"
    )
    print(f"engine: {report['engine']}\nreport: {run.path('report.md')}")


def cmd_report(a) -> None:
    from .finetune import FinetuneConfig
    from .pipeline import Run, RunConfig
    from .report import stage_report

    path = Path(a.run_dir) / "config.json"
    if not path.is_file():
        raise TrtpruneError(f"'{a.run_dir}' is not a run directory (no config.json)", fix="give runs/<name> of a run")
    d = json.loads(path.read_text())
    cfg = RunConfig(**{**d, "finetune": FinetuneConfig(**d["finetune"])})
    with Run(a.run_dir, cfg, a.data, a.engines_dir) as run:
        for name in ("baseline.onnx", "model.pt", "pruned.onnx"):
            if not run.path(name).is_file():
                raise TrtpruneError(
                    f"the run has no {name} yet", fix=f"finish it: trtprune run ... --name {run.dir.name}"
                )
        stage_report(run)
    print(f"wrote {run.path('report.md')} and {run.path('report.json')}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="trtprune",
        description="Prune CNNs onto the latency stairs of the device "
        "they run on. Start with: trtprune run --model resnet56 --device cpu",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_):
        p = sub.add_parser(name, help=help_, description=help_)
        _common(p)
        p.set_defaults(fn=fn)
        return p

    add("list", cmd_list, "list models, devices, backends and importance criteria")
    p = add("groups", cmd_groups, "list the prunable channel groups of a model")
    _model(p, "checkpoint (default: random weights; groups do not depend on weights)")
    p = add("export", cmd_export, "export a model to ONNX (static batch, simplified, checked against torch)")
    _model(p)
    _device(p)
    p.add_argument("--batch", type=int, help="static batch (default: the device's)")
    p.add_argument("-o", "--output", required=True, help="ONNX file to write")
    p = add("measure", cmd_measure, "time ONNX models on a device, side by side in one interleaved run")
    p.add_argument("onnx", nargs="+", help="ONNX files (the first is the reference for speed-ups)")
    _device(p)
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds (default 30)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p = add("eval", cmd_eval, "top-1 accuracy of a model (torch) or of an ONNX file (ONNX Runtime)")
    _model(p)
    p.add_argument("--onnx", help="evaluate this ONNX file instead (its --model gives the normalisation)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=int, default=0, help="first N images only (default: all)")
    p = add("prune", cmd_prune, "prune every channel group by a uniform ratio")
    _model(p)
    _pruning(p)
    p.add_argument("-o", "--output", required=True, help="pruned checkpoint to write (.pt); the plan goes beside it")
    p = add("finetune", cmd_finetune, "fine-tune a (pruned) checkpoint; a checkpoint is written every epoch")
    _model(p, "the checkpoint to fine-tune (e.g. from trtprune prune)")
    _finetuning(p)
    p.add_argument("--teacher", help="unpruned weights to distil from (with --distill)")
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N test images (default: all)")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint at -o")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write")
    p = add("build", cmd_build, "build the deployable model for a device (ONNX for ONNX Runtime devices)")
    _model(p, "the (pruned, fine-tuned) checkpoint")
    _device(p)
    p.add_argument("-o", "--output", help="default: engines/<model>-<device>.onnx")
    p = add("report", cmd_report, "re-measure and rewrite the report of a finished run")
    p.add_argument("run_dir", help="runs/<name>")
    p.add_argument("--engines-dir", default="engines")
    p = add("run", cmd_run, "export, prune, fine-tune, build and report, in a run directory (resumable)")
    _model(p)
    _device(p)
    _pruning(p)
    _finetuning(p, distill=0.5)  # the unpruned model is at hand: distilling from it recovers accuracy faster
    p.add_argument("--eval-limit", type=int, default=0, help="evaluate on the first N test images (default: all)")
    p.add_argument("--name", help="run name (default: <model>-<device>)")
    p.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    p.add_argument("--engines-dir", default="engines", help="where deployable models go (default: engines)")
    p.add_argument("--fresh", action="store_true", help="discard the run's earlier outputs and start over")
    return ap


def main(argv: list[str] | None = None) -> int:
    from . import log as logsetup

    args = parser().parse_args(argv)
    logsetup.setup(args.verbose)
    try:
        args.fn(args)
    except TrtpruneError as e:
        if args.verbose:
            log.exception("details")
        print(f"trtprune {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trtprune {args.command}: interrupted; finished files are kept, re-run to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
