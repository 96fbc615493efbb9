"""`trtprune run`: the stages in order, each reading and writing files in a run directory.

``runs/<name>/`` holds ``config.json`` (what was asked), ``baseline.onnx``, ``plan.json``,
``pruned.pt`` (pruned, before fine-tuning), ``finetune.pt`` (the per-epoch checkpoint), ``model.pt``
(the fine-tuned model), ``pruned.onnx``, ``report.json`` and ``report.md``. A stage whose output
exists is skipped, so an interrupted run resumes where it stopped; every file is written atomically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import fetch
from .data import load_cifar10
from .devices import DEFAULT_DEVICE, get_device
from .errors import TrtpruneError
from .finetune import FinetuneConfig, finetune
from .fsutil import atomic_path, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunConfig:
    model: str = "resnet56"
    weights: str | None = None  # None: the model's published checkpoint from the data root
    device: str = DEFAULT_DEVICE
    ratio: float = 0.5  # fraction of every channel group removed (uniform pruning)
    round_to: int = 8  # keep a multiple of this many channels per group
    importance: str = "l1"  # which channels go: see trtprune.importance
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    eval_limit: int = 0  # evaluate on the first N test images (0 = all 10,000)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_weights(model_name: str, weights: str | None, data: str | None) -> Path:
    """The weights to start from: the given file, or the model's published checkpoint."""
    from .models import model_spec

    if weights:
        return Path(weights)
    spec = model_spec(model_name)
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
    )

    def __init__(
        self, directory: str | Path, cfg: RunConfig, data: str | None = None, engines_dir: str | Path = "engines"
    ):
        self.dir, self.cfg, self.data = Path(directory), cfg, data
        self.engines_dir = Path(engines_dir)
        self.device = get_device(cfg.device)
        self._lock = None

    def path(self, name: str) -> Path:
        assert name in self.FILES, name
        return self.dir / name

    def __enter__(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.dir / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise TrtpruneError(
                f"run directory '{self.dir}' is in use by another trtprune process",
                fix="wait for it to finish, or choose another --name",
            ) from None
        self._check_config()
        return self

    def __exit__(self, *exc):
        self._lock.close()

    def _check_config(self) -> None:
        wanted = self.cfg.to_dict()
        path = self.path("config.json")
        if path.is_file():
            found = json.loads(path.read_text())
            if found != wanted:
                diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
                raise TrtpruneError(
                    f"run directory '{self.dir}' was made with other settings ({', '.join(diff)})",
                    fix="use another --name, or --fresh to start this run over",
                )
        else:
            write_json(path, wanted)

    def clear(self) -> None:
        """Remove every output of this run (``--fresh``)."""
        for name in self.FILES:
            self.path(name).unlink(missing_ok=True)
        write_json(self.path("config.json"), self.cfg.to_dict())

    @property
    def engine_path(self) -> Path:
        from .models import model_spec

        return self.engines_dir / f"{model_spec(self.cfg.model).name}-{self.device.name}.onnx"


@contextlib.contextmanager
def _stage(name: str, output: Path, force: bool = False):
    """Log a stage's start and end; yield False (skip) when its output already exists."""
    if output.exists() and not force:
        log.info("%-9s | done already: %s", name, output)
        yield False
        return
    t0 = time.perf_counter()
    log.info("%-9s | start", name)
    yield True
    log.info("%-9s | done in %.1f s -> %s", name, time.perf_counter() - t0, output)


def stage_baseline(run: Run) -> None:
    from .export import onnx_from_torch
    from .weights import load_model

    with _stage("export", run.path("baseline.onnx")) as todo:
        if todo:
            model, spec = load_model(run.cfg.model, resolve_weights(run.cfg.model, run.cfg.weights, run.data))
            onnx_from_torch(model, run.path("baseline.onnx"), spec.input_shape, run.device.batch)


def stage_prune(run: Run) -> None:
    from .prune import GroupPruner, uniform_plan
    from .weights import load_model, save_pruned

    with _stage("prune", run.path("pruned.pt")) as todo:
        if todo:
            model, spec = load_model(run.cfg.model, resolve_weights(run.cfg.model, run.cfg.weights, run.data))
            pruner = GroupPruner(model, spec.input_shape)
            groups = pruner.groups()
            plan = uniform_plan(groups, run.cfg.ratio, run.cfg.round_to)
            write_json(
                run.path("plan.json"),
                {
                    "method": "uniform",
                    "ratio": run.cfg.ratio,
                    "round_to": run.cfg.round_to,
                    "keep_channels": plan,
                    "channels": {g.name: g.channels for g in groups},
                },
            )
            pruner.prune_to(plan, run.cfg.importance)
            save_pruned(run.path("pruned.pt"), model, spec.name, pruner.history(), plan=plan)


def stage_finetune(run: Run) -> None:
    from .weights import load_model, read_checkpoint

    with _stage("finetune", run.path("model.pt")) as todo:
        if todo:
            model, spec = load_model(run.cfg.model, run.path("pruned.pt"))
            history = read_checkpoint(run.path("pruned.pt"))["history"]
            cfg = run.cfg.finetune
            teacher = None
            if cfg.distill > 0:
                teacher, _ = load_model(run.cfg.model, resolve_weights(run.cfg.model, run.cfg.weights, run.data))
            train = load_split(run.data, "train")
            test = load_split(run.data, "test", run.cfg.eval_limit)
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
            with atomic_path(run.path("model.pt")) as tmp:
                shutil.copyfile(run.path("finetune.pt"), tmp)


def stage_build(run: Run) -> None:
    from .export import onnx_from_torch
    from .weights import load_model

    with _stage("build", run.path("pruned.onnx")) as todo:
        if todo:
            model, spec = load_model(run.cfg.model, run.path("model.pt"))
            onnx_from_torch(model, run.path("pruned.onnx"), spec.input_shape, run.device.batch)
    with atomic_path(run.engine_path) as tmp:
        shutil.copyfile(run.path("pruned.onnx"), tmp)
    log.info("engine    | %s", run.engine_path)


def run_all(run: Run) -> dict:
    """Every stage in order; returns the report."""
    from .report import stage_report

    stage_baseline(run)
    stage_prune(run)
    stage_finetune(run)
    stage_build(run)
    return stage_report(run)
