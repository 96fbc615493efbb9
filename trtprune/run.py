"""`trtprune run`: the stages in order, each reading and writing files in a run directory.

``runs/<name>/`` holds ``config.json`` (what was asked), ``baseline.onnx``, ``plan.json``,
``pruned.pt`` (pruned, before fine-tuning), ``finetune.pt`` (the per-epoch checkpoint), ``model.pt``
(the fine-tuned model), ``pruned.onnx``, ``report.json`` and ``report.md``. A stage whose output
exists is skipped, so an interrupted run resumes where it stopped; every file is written atomically.
``stages.json`` records the SHA-256 of each file a stage made (and of the files it was made from), and of the
delivered engine: a file changed or copied in since is refused, not reused (runs made before it: not checked).
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import shutil
import time
from pathlib import Path

from trtprune.config import RunConfig, parse_ranked
from trtprune.deploy.export import onnx_from_torch, read_onnx
from trtprune.deploy.quantize import calibration, qdq_from_onnx
from trtprune.errors import TrtpruneError
from trtprune.fsutil import atomic_path, is_plain_name, sha256_of, write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.pruning.prune import GroupPruner, uniform_plan_of
from trtprune.report import stage_report
from trtprune.searching import runner
from trtprune.searching.plan import Budget, Plan
from trtprune.searching.runner import prune_with_data
from trtprune.sources.images import open_images
from trtprune.sources.models import model_spec
from trtprune.sources.weights import load_model, read_checkpoint, resolve_weights, save_pruned
from trtprune.tasks import get_task, task_data
from trtprune.training.finetune import finetune

log = logging.getLogger(__name__)


def run_name(name: str | None, model: str, device: str) -> str:
    """The run directory's name: ``name`` if given, else ``<model>-<device>`` with the model's spec name (a user
    factory ``f.py:a`` gives ``f.a``, so two factories of one file get two runs). A name is one path component."""
    if name is None:
        return f"{model_spec(model).name}-{device}"
    if not is_plain_name(name):
        raise TrtpruneError(
            f"run name '{name}' is not a plain name",
            why="the run goes to <runs-dir>/<name> and its engine to <engines-dir>/<name>.<onnx|plan>: a name with "
            "a path separator or '..' would write elsewhere",
            fix="give a name without '/', '\\' or '..' (e.g. --name resnet56-half); use --runs-dir to choose the "
            "folder",
        )
    return name


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
        "baseline.int8.onnx",
        "pruned.int8.onnx",
        "report.json",
        "report.md",
        "channels.png",
        "stages.json",
    )

    def __init__(
        self,
        directory: str | Path,
        cfg: RunConfig,
        data: str | None = None,
        engines_dir: str | Path = "engines",
        fresh: bool = False,
        lut: str | Path | None = None,
        task=None,
    ):
        self.dir, self.cfg, self.lut = Path(directory), cfg, lut
        self.task = task or get_task(cfg.task)  # given when the caller has it already (its loaders are open)
        self.data = task_data(self.task, data)
        self.engines_dir = Path(engines_dir)
        self.device = get_device(cfg.device)
        self.spec = model_spec(cfg.model, input_shape=cfg.input_shape, mean=cfg.mean, std=cfg.std)
        self.fresh = fresh
        self._lock = None

    def path(self, name: str) -> Path:
        assert name in self.FILES, name
        return self.dir / name

    def model(self, name: str):
        """The run's checkpoint ``name`` (pruned.pt, model.pt) loaded into the run's model: :func:`load_stage`."""
        return load_stage(self, name)

    def device_onnx(self, role: str) -> Path:
        return device_onnx(self, role)

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
        # settings added since the file was written take their defaults (from_dict): a run resumes across versions
        found = _outcome(RunConfig.from_dict(read_config(path), str(path)).to_dict())
        wanted = _outcome(wanted)
        if found != wanted:
            diff = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
            made = [n for n in self.FILES[1:] if self.path(n).exists()] + ["search"] * (self.dir / "search").exists()
            if not made:  # a run that stopped before its first stage made anything: its settings may change
                log.info(
                    "run       | nothing was made with the earlier settings (%s): these replace them", ", ".join(diff)
                )
                write_json(path, self.cfg.to_dict())
                return
            raise TrtpruneError(
                f"run directory '{self.dir}' was made with other settings ({', '.join(diff)})",
                fix="use another --name, or --fresh to start this run over",
            )

    @property
    def engine_path(self) -> Path:
        """``engines/<run name>.<onnx|plan>``: named after the run, so that two runs of one model on one device
        (different --name) do not overwrite each other's engine (the default name is ``<model>-<device>``)."""
        return self.engines_dir / f"{self.dir.name}{self.device.engine_suffix}"


# What each file of a run is made from, in order: a damaged file is made again, and so is every file after it.
CHAINS = (
    ("baseline.onnx", "baseline.int8.onnx"),
    ("plan.json", "pruned.pt", "finetune.pt", "model.pt", "pruned.onnx", "pruned.int8.onnx"),
)


def damaged(path: Path) -> str | None:
    """Why a file a run wrote cannot be read back (cut short, emptied, edited since), or None when it can: ONNX
    models are loaded and checked, checkpoints loaded, plans read; other files must not be empty."""
    try:
        if path.stat().st_size == 0:
            return f"'{path}' is empty"
        if path.suffix == ".onnx":
            read_onnx(path)
        elif path.suffix == ".pt":
            read_checkpoint(path)
        elif path.name == "plan.json":
            Plan.load(path)
    except TrtpruneError as e:
        return e.what
    return None


def _made_from(name: str) -> tuple[str, ...]:
    return next((chain[chain.index(name) + 1 :] for chain in CHAINS if name in chain), ())


def reusable(run: Run, name: str, label: str) -> bool:
    """Whether the run's file ``name`` is there to reuse. One that does not read back is removed, with the files
    made from it, and a warning: the stage makes it again, so a damaged run resumes instead of delivering it."""
    path = run.path(name)
    if not path.exists():
        return False
    why = damaged(path)
    if why is None:
        return True
    later = [n for n in _made_from(name) if run.path(n).exists()]
    log.warning("%-9s | %s: making it again%s", label, why, f" (and {', '.join(later)})" if later else "")
    for n in (name, *later):
        run.path(n).unlink(missing_ok=True)
    return False


def rerun_command(run: Run) -> str:
    """How to go on with the run in the messages: ``trtprune run ... --name <run>`` (and its --runs-dir)."""
    where = "" if run.dir.parent == Path("runs") else f" --runs-dir {run.dir.parent}"
    return f"trtprune run ...{where} --name {run.dir.name}"


def check_finished(run: Run) -> None:
    """Before the report times anything: the files of every stage are there and read back, and so does the
    engine the report names."""
    rerun = rerun_command(run)
    for name in ("baseline.onnx", "plan.json", "model.pt", "pruned.onnx"):
        path = run.path(name)
        if not path.is_file():
            raise TrtpruneError(
                f"the run has no {name} yet",
                why=f"the report reads the files a finished run leaves in '{run.dir}': baseline.onnx, plan.json, "
                "model.pt and pruned.onnx; the run stopped before it wrote this one, or it was deleted",
                fix=f"finish it: {rerun} (with the run's settings)",
            )
        why = damaged(path)
        if why is not None:
            raise TrtpruneError(
                f"the run's {name} is damaged: {why}",
                why="it was cut short or changed after the run wrote it",
                fix=f"{rerun} with the run's settings: it makes {name} again (and what is made from it) and reports",
            )
    for name in ("baseline.onnx", "plan.json", "pruned.pt", "model.pt", "pruned.onnx"):
        refuse_changed(run, name)
    run.model("model.pt")  # a checkpoint of another model (a run made before stages.json): named before any timing
    engine = run.engine_path
    if not engine.is_file() or damaged(engine) is not None:
        state = "does not exist" if not engine.is_file() else "is damaged"
        raise TrtpruneError(
            f"engine '{engine}' {state}",
            why=f"the report names the run's deployable model, {engine.name} in --engines-dir '{run.engines_dir}'",
            fix=f"give --engines-dir the folder the run delivered to (default: engines), or deliver it again: {rerun}",
        )
    check_engine(run)


# The files each recorded file is made from (config.json aside): a change in one of them is a change in the file.
MADE_FROM = {
    "pruned.pt": ("plan.json",),
    "model.pt": ("pruned.pt",),
    "pruned.onnx": ("model.pt",),
    "baseline.int8.onnx": ("baseline.onnx",),
    "pruned.int8.onnx": ("pruned.onnx",),
}


def _records(run: Run) -> dict:
    """stages.json: ``{file: {"sha256": ..., "from": {input: sha256}}}``; empty for a run made before it."""
    path = run.path("stages.json")
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def record(run: Run, name: str, path: Path, sources=None) -> None:
    """Record the digest of ``path`` (the run's file ``name``, or "engine") and of the run files it was made from."""
    sources = MADE_FROM.get(name, ()) if sources is None else sources
    records = _records(run)
    records[name] = {"sha256": sha256_of(path), "from": {s: sha256_of(run.path(s)) for s in sources}}
    write_json(run.path("stages.json"), records)


def changed(run: Run, name: str, path: Path | None = None) -> tuple[str, str] | None:
    """``(what changed, the first file to remake)`` when ``name`` is not the file the run recorded (edited, or copied
    in from elsewhere), or was made from other files than the run's; None when it is, or is not recorded."""
    found = _records(run).get(name)
    path = path or run.path(name)
    if not isinstance(found, dict) or not path.is_file():
        return None
    if found.get("sha256") != sha256_of(path):
        return f"'{path}' changed since the run made it", name
    for source, digest in (found.get("from") or {}).items():
        if not run.path(source).is_file() or sha256_of(run.path(source)) != digest:
            return f"'{path}' was made from another {source} than the run's '{run.path(source)}'", source
    return None


def refuse_changed(run: Run, name: str) -> None:
    """Refuse a run file that is not the one the run made (:func:`changed`): reused, it would be delivered and
    reported as the run's."""
    found = changed(run, name)
    if found is None:
        return
    what, first = found
    later = [n for n in _made_from(first) if run.path(n).exists()]
    raise TrtpruneError(
        what,
        why="the run records the digest of every file its stages make (stages.json): reusing a file it did not make "
        "would deliver and report a model the run did not make",
        fix=f"delete {run.path(first)}{' and ' + ', '.join(later) if later else ''} to make it again "
        f"({rerun_command(run)}), or use --fresh to start the run over",
    )


def load_stage(run: Run, name: str):
    """Load the run's checkpoint ``name`` into the run's model. One that does not fit it (another model's, copied in)
    is named as the run's file, with the advice to remake it: not to change --model, as for a file given."""
    path = run.path(name)
    try:
        return load_model(run.spec, path)
    except TrtpruneError as e:
        later = [n for n in _made_from(name) if run.path(n).exists()]
        raise TrtpruneError(
            f"the run's {name} is not a model of this run: {e.what}",
            why=f"the run made {name} from its own model ({run.cfg.model}); this one was copied in from elsewhere or "
            "changed since",
            fix=f"delete {path}{' and ' + ', '.join(later) if later else ''} to make it again "
            f"({rerun_command(run)}), or use --fresh to start the run over",
        ) from e


def check_engine(run: Run) -> None:
    """The engine the report names is the one the run delivered from the model it measures (recorded digests):
    not another file since, nor one delivered for other settings (config.json edited to another device)."""
    found = _records(run).get("engine")
    engine = run.engine_path
    if not isinstance(found, dict) or not engine.is_file():
        return
    measured = "pruned.int8.onnx" if run.device.int8_form else "pruned.onnx"
    made_from = found.get("from") or {}
    ok = found.get("sha256") == sha256_of(engine) and set(made_from) == {measured}
    if ok and not (run.path(measured).is_file() and sha256_of(run.path(measured)) == made_from[measured]):
        ok = False
    if not ok:
        raise TrtpruneError(
            f"engine '{engine}' is not the model this report measures ({run.path(measured)})",
            why="the run records what it delivered (stages.json): this engine was changed since, or delivered from "
            f"{', '.join(made_from) or 'another file'} with other settings (config.json edited since the run)",
            fix=f"deliver it again with the run's settings: {rerun_command(run)}, or start over with --fresh",
        )


def stage(label: str, output: str):
    """A pipeline stage that writes ``run.path(output)``: skipped when that file exists and reads back, timed
    otherwise (a damaged output is made again: :func:`reusable`)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run_stage(run: Run) -> None:
            out = run.path(output)
            if reusable(run, output, label):
                refuse_changed(run, output)
                log.info("%-9s | done already: %s", label, out)
                return
            t0 = time.perf_counter()
            log.info("%-9s | start", label)
            stale = [n for n in _made_from(output) if run.path(n).exists()]
            if stale:  # made from the earlier one: they go too, and are made again from this one
                log.info("%-9s | %s made from the earlier %s: made again too", label, ", ".join(stale), output)
            for n in stale:
                run.path(n).unlink()
            fn(run, out)
            record(run, output, out)
            log.info("%-9s | done in %.1f s -> %s", label, time.perf_counter() - t0, out)

        return run_stage

    return wrap


def _load_base(run: Run):

    return load_model(run.spec, resolve_weights(run.cfg.model, run.cfg.weights, run.data))


@stage("export", "baseline.onnx")
def stage_baseline(run: Run, out: Path) -> None:

    model, spec = _load_base(run)
    onnx_from_torch(model, out, spec.input_shape, run.device.batch)


@stage("search", "plan.json")
def stage_search(run: Run, out: Path) -> None:

    cfg, budget = run.cfg, Budget.from_text(run.cfg.budget)
    if budget is None:
        model, spec = _load_base(run)
        groups = GroupPruner(model, spec.input_shape, cfg.ignore).groups()
        plan = uniform_plan_of(groups, cfg.ratio, cfg.round_to, spec.name, run.device.name)
    else:
        weights = resolve_weights(cfg.model, cfg.weights, run.data)
        plan = runner.search(
            run.spec,
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
            min_fraction=cfg.floor,
            ranked=parse_ranked(cfg.ranked),
            stairs_from=cfg.stairs_from,
            remove_depth=cfg.depth,
            task=run.task,
        )
    plan.save(out)


@stage("prune", "pruned.pt")
def stage_prune(run: Run, out: Path) -> None:

    plan = Plan.load(run.path("plan.json"))
    model, spec = _load_base(run)
    # the search may have chosen another criterion's plan (``--rank``): its channels are the ones it ranked
    importance = plan.meta.get("importance", run.cfg.importance)
    prune_with_data(model, spec, plan, importance, run.data, run.cfg.ignore, run.task)
    save_pruned(out, model, spec.name, model.trtprune_history, plan=plan.keep_channels)


@stage("finetune", "model.pt")
def stage_finetune(run: Run, out: Path) -> None:

    model, spec = run.model("pruned.pt")
    history = read_checkpoint(run.path("pruned.pt"))["history"]
    cfg = run.cfg.finetune
    reusable(run, "finetune.pt", "finetune")  # a damaged per-epoch checkpoint: fine-tune from the start
    teacher = _load_base(run)[0] if cfg.distill > 0 else None
    train = open_images(run.data, "train", spec.input_shape)
    test = open_images(run.data, "test", spec.input_shape, run.cfg.eval_limit)
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
        task=run.task,
    )
    with atomic_path(out) as tmp:
        shutil.copyfile(run.path("finetune.pt"), tmp)


@stage("build", "pruned.onnx")
def stage_build(run: Run, out: Path) -> None:

    model, spec = run.model("model.pt")
    onnx_from_torch(model, out, spec.input_shape, run.device.batch)


def device_onnx(run: Run, role: str) -> Path:
    """The file the device times, checks and delivers for ``role`` ("baseline" or "pruned"): the exported ONNX,
    or for an int8 device its Q/DQ form (``Device.int8_form``: TensorRT's symmetric explicit quantization, or
    ONNX Runtime's CPU form) calibrated on the run's calibration images (``--calib``, or 512 training images),
    ``<role>.int8.onnx``, made once per export. The report times and checks that very file; a TensorRT plan is
    built from it, and for ONNX Runtime it is the delivered model."""
    src = run.path(f"{role}.onnx")
    form = run.device.int8_form
    if form is None:
        return src
    out = run.path(f"{role}.int8.onnx")
    if not reusable(run, out.name, "calibrate") or out.stat().st_mtime < src.stat().st_mtime:
        calib = calibration(run.cfg.calib, run.data, run.spec, run.cfg.calib_images)
        qdq_from_onnx(src, out, calib, target=form)
        record(run, out.name, out)
    else:
        refuse_changed(run, out.name)
    return out


def deliver(run: Run) -> Path:
    """The deployable model at ``engines/<run name>.<plan|onnx>`` (always: the run may be newer): a
    TensorRT plan built on the device (from the calibrated Q/DQ model for int8), or the pruned ONNX model for
    ONNX Runtime (its calibrated Q/DQ form for int8)."""
    source = device_onnx(run, "pruned")
    if run.device.engine_suffix == ".plan":
        with get_backend(run.device) as backend:
            backend.build(source, run.engine_path)
    else:
        with atomic_path(run.engine_path) as tmp:
            shutil.copyfile(source, tmp)
    record(run, "engine", run.engine_path, sources=(source.name,))
    log.info("engine    | %s", run.engine_path)
    return run.engine_path


def check_device(device) -> None:
    """Open the device's backend once before hours of work: a missing engine or unreachable host fails now."""

    with get_backend(device) as backend:
        log.info("device    | %s | %s", device.name, backend.key())


def run_all(run: Run) -> dict:
    """Every stage in order, then the report (always re-measured); returns the report."""

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
