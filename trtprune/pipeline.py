"""`trtprune run`: the stages in order, each reading and writing files in a run directory.

``runs/<name>/`` holds ``config.json`` (what was asked), ``baseline.onnx``, ``plan.json``,
``pruned.pt`` (pruned, before fine-tuning), ``finetune.pt`` (the per-epoch checkpoint), ``model.pt``
(the fine-tuned model), ``pruned.onnx``, ``report.json`` and ``report.md``. A stage whose output
exists is skipped, so an interrupted run resumes where it stopped; every file is written atomically.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import shutil
import time
from pathlib import Path

from . import fetch
from .config import RunConfig
from .data import load_cifar10
from .devices import get_device
from .errors import TrtpruneError
from .finetune import finetune
from .fsutil import atomic_path, write_json
from .search.plan import Budget

log = logging.getLogger(__name__)


def resolve_weights(model_name: str, weights: str | None, data: str | None) -> Path:
    """The weights to start from: the given file, or the model's published checkpoint."""
    from .models import model_spec

    if weights:
        return Path(weights)
    spec = model_spec(model_name)
    file = spec.factory_path.rsplit(":", 1)[0]
    if file.endswith(".py") and not Path(file).is_file():  # say that first, not that it has no weights
        raise TrtpruneError(f"model file '{file}' does not exist", fix="check the path before ':'")
    if spec.pretrained is None:
        raise TrtpruneError(
            f"model '{model_name}' has no published weights",
            fix="train it first and pass the state dict with --weights",
        )
    root, may_download = fetch.data_root(data)
    return fetch.ensure_resource(spec.pretrained, root, may_download)


def load_split(data: str | None, split: str, limit: int = 0):
    root, may_download = fetch.data_root(data)
    x, y = load_cifar10(fetch.ensure_cifar10(root, may_download), split)
    return (x[:limit], y[:limit]) if limit else (x, y)


def read_config(path: Path) -> dict:
    """A run's ``config.json`` as a dict; a clear error when it is not JSON (it was edited or copied badly)."""
    try:
        found = json.loads(path.read_text())
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError
        raise TrtpruneError(
            f"'{path}' is not a run configuration: {e}",
            why="trtprune writes it whole, as JSON; it was edited or damaged since",
            fix="start the run over with --fresh, or restore the file",
        ) from e
    if not isinstance(found, dict):
        raise TrtpruneError(f"'{path}' is not a run configuration (not a JSON object)", fix="start over with --fresh")
    return found


# Settings that change how fast a run goes, not what it produces: a run may resume with them changed.
_SPEED_ONLY = {"finetune": ("compile",)}


def _outcome(cfg: dict) -> dict:
    """``cfg`` without its speed-only settings: what two configurations must agree on to share a run."""
    out = dict(cfg)
    for section, keys in _SPEED_ONLY.items():
        if isinstance(out.get(section), dict):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
    return out


class Run:
    """A run directory for one configuration. Use as a context manager: it holds the directory lock."""

    FILES = (
        "config.json",
        "baseline.onnx",
        "plan.json",
        "pruned.pt",
        "finetune.pt",
        "model.pt",
        "pruned.onnx",
        "report.json",
        "report.md",
        "channels.png",
    )

    def __init__(
        self,
        directory: str | Path,
        cfg: RunConfig,
        data: str | None = None,
        engines_dir: str | Path = "engines",
        fresh: bool = False,
        lut: str | Path | None = None,
    ):
        self.dir, self.cfg, self.data, self.lut = Path(directory), cfg, data, lut
        self.engines_dir = Path(engines_dir)
        self.device = get_device(cfg.device)
        self.fresh = fresh
        self._lock = None

    def path(self, name: str) -> Path:
        assert name in self.FILES, name
        return self.dir / name

    def __enter__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if self.fresh:
                for name in self.FILES:
                    self.path(name).unlink(missing_ok=True)
                shutil.rmtree(self.dir / "search", ignore_errors=True)
            self._check_config()
        except BlockingIOError:
            self._lock.close()
            raise TrtpruneError(
                f"run directory '{self.dir}' is in use by another trtprune process",
                fix="wait for it to finish, or choose another --name",
            ) from None
        except BaseException:
            self._lock.close()
            raise
        return self

    def __exit__(self, *exc):
        self._lock.close()

    def _check_config(self) -> None:
        wanted = self.cfg.to_dict()
        path = self.path("config.json")
        if not path.is_file():
            write_json(path, wanted)
            return
        found, wanted = _outcome(read_config(path)), _outcome(wanted)
        if found != wanted:
            diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            raise TrtpruneError(
                f"run directory '{self.dir}' was made with other settings ({', '.join(diff)})",
                fix="use another --name, or --fresh to start this run over",
            )

    @property
    def engine_path(self) -> Path:
        from .models import model_spec

        return self.engines_dir / f"{model_spec(self.cfg.model).name}-{self.device.name}{self.device.engine_suffix}"


def stage(label: str, output: str):
    """A pipeline stage that writes ``run.path(output)``: skipped when that file exists, timed otherwise."""

    def wrap(fn):
        @functools.wraps(fn)
        def run_stage(run: Run) -> None:
            out = run.path(output)
            if out.exists():
                log.info("%-9s | done already: %s", label, out)
                return
            t0 = time.perf_counter()
            log.info("%-9s | start", label)
            fn(run, out)
            log.info("%-9s | done in %.1f s -> %s", label, time.perf_counter() - t0, out)

        return run_stage

    return wrap


def _load_base(run: Run):
    from .weights import load_model

    return load_model(run.cfg.model, resolve_weights(run.cfg.model, run.cfg.weights, run.data))


@stage("export", "baseline.onnx")
def stage_baseline(run: Run, out: Path) -> None:
    from .export import onnx_from_torch

    model, spec = _load_base(run)
    onnx_from_torch(model, out, spec.input_shape, run.device.batch)


def budget_of(cfg) -> Budget | None:
    """The run's budget: "0.5x" of the baseline or "1.2ms"; None for a plain uniform ratio."""
    if cfg.budget is None:
        return None
    text = str(cfg.budget).strip()
    return Budget.parse(ms=float(text[:-2])) if text.endswith("ms") else Budget.parse(text)


@stage("search", "plan.json")
def stage_search(run: Run, out: Path) -> None:
    from .search import runner
    from .search.plan import Plan

    cfg, budget = run.cfg, budget_of(run.cfg)
    if budget is None:
        from .prune import GroupPruner, uniform_plan

        model, spec = _load_base(run)
        groups = GroupPruner(model, spec.input_shape, cfg.ignore).groups()
        plan = Plan(
            spec.name,
            run.device.name,
            "uniform",
            f"ratio {cfg.ratio}",
            uniform_plan(groups, cfg.ratio, cfg.round_to),
            {g.name: g.channels for g in groups},
            meta={"ratio": cfg.ratio, "round_to": cfg.round_to},
        )
    else:
        weights = resolve_weights(cfg.model, cfg.weights, run.data)
        plan = runner.search(
            cfg.model,
            weights,
            run.device,
            budget,
            cfg.method,
            workdir=run.dir / "search",
            lut_path=run.lut,
            importance=cfg.importance,
            data=run.data,
            round_to=cfg.round_to,
            ignore=cfg.ignore,
        )
    plan.save(out)


@stage("prune", "pruned.pt")
def stage_prune(run: Run, out: Path) -> None:
    from .prune import GroupPruner
    from .search.plan import Plan
    from .search.runner import channel_scores
    from .weights import save_pruned

    plan = Plan.load(run.path("plan.json"))
    model, spec = _load_base(run)
    scores = channel_scores(model, spec, run.cfg.importance, run.data, run.cfg.ignore)
    pruner = GroupPruner(model, spec.input_shape, run.cfg.ignore)
    pruner.prune_to(plan.keep_channels, scores=scores)
    save_pruned(out, model, spec.name, pruner.history(), plan=plan.keep_channels)


@stage("finetune", "model.pt")
def stage_finetune(run: Run, out: Path) -> None:
    from .weights import load_model, read_checkpoint

    model, spec = load_model(run.cfg.model, run.path("pruned.pt"))
    history = read_checkpoint(run.path("pruned.pt"))["history"]
    cfg = run.cfg.finetune
    teacher = _load_base(run)[0] if cfg.distill > 0 else None
    train, test = load_split(run.data, "train"), load_split(run.data, "test", run.cfg.eval_limit)
    finetune(
        model,
        train,
        test,
        spec.mean,
        spec.std,
        cfg,
        checkpoint=run.path("finetune.pt"),
        base_model=spec.name,
        history=history,
        teacher=teacher,
        resume=True,
    )
    with atomic_path(out) as tmp:
        shutil.copyfile(run.path("finetune.pt"), tmp)


@stage("build", "pruned.onnx")
def stage_build(run: Run, out: Path) -> None:
    from .export import onnx_from_torch
    from .weights import load_model

    model, spec = load_model(run.cfg.model, run.path("model.pt"))
    onnx_from_torch(model, out, spec.input_shape, run.device.batch)


def int8_onnx(run: Run) -> Path:
    """For an int8 TensorRT device: the pruned model as a symmetric Q/DQ ONNX (TensorRT's explicit quantization),
    calibrated on 512 training images. TensorRT's ``--int8`` on a plain fp32 model would run uncalibrated."""
    from .models import model_spec
    from .quantize import calib_from_training, qdq_from_onnx

    out = run.dir / "pruned.int8.onnx"
    if not out.is_file() or out.stat().st_mtime < run.path("pruned.onnx").stat().st_mtime:
        calib = calib_from_training(run.data, model_spec(run.cfg.model))
        qdq_from_onnx(run.path("pruned.onnx"), out, calib, target="tensorrt")
    return out


def deliver(run: Run) -> Path:
    """The deployable model at ``engines/<model>-<device>.<plan|onnx>`` (always: the run may be newer): a
    TensorRT plan built on the device (from the calibrated Q/DQ model for int8), or the pruned ONNX model for
    ONNX Runtime."""
    if run.device.engine_suffix == ".plan":
        from .latency import get_backend

        source = int8_onnx(run) if run.device.precision == "int8" else run.path("pruned.onnx")
        with get_backend(run.device) as backend:
            backend.build(source, run.engine_path)
    else:
        with atomic_path(run.engine_path) as tmp:
            shutil.copyfile(run.path("pruned.onnx"), tmp)
    log.info("engine    | %s", run.engine_path)
    return run.engine_path


def check_device(device) -> None:
    """Open the device's backend once before hours of work: a missing engine or unreachable host fails now."""
    from .latency import get_backend

    with get_backend(device) as backend:
        log.info("device    | %s | %s", device.name, backend.key())


def run_all(run: Run) -> dict:
    """Every stage in order, then the report (always re-measured); returns the report."""
    from .report import stage_report

    if run.cfg.finetune.epochs < 1:
        raise TrtpruneError("a run fine-tunes at least one epoch", fix="use --epochs 1 or more")
    check_device(run.device)
    stage_baseline(run)
    stage_search(run)
    stage_prune(run)
    stage_finetune(run)
    stage_build(run)
    deliver(run)
    return stage_report(run)
