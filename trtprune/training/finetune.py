"""Fine-tuning a pruned model: SGD with momentum, a per-step cosine schedule, optional distillation.

A checkpoint (weights, optimizer, epoch, step and the pruning history needed to rebuild the
architecture) is written atomically after every epoch; ``resume=True`` continues from it.

In a torch.distributed process group (``trtprune finetune --nproc N`` or torchrun; see
:mod:`trtprune.training.distributed`) every process draws the same global batch of ``batch_size`` images and trains on
its slice, with DDP averaging the gradients and BatchNorm normalising over the global batch:

* identical to one process, up to floating-point rounding: the images and augmentations of every step, the
  gradient (losses are weighted by each slice's share of the global batch, so an uneven last batch counts
  every image once), BatchNorm's batch statistics and running statistics, the learning rate, the optimizer
  step, the recorded loss and top-1, and the checkpoint (written by rank 0 only; any process count resumes it);
* not identical: the rounding, as sums over the batch are split across processes. In float64 the weights agree
  to 1e-13; in float32 the rounding flips a few ReLUs next to zero, which moves the gradient by up to 1e-3, and
  training amplifies that (after 2 steps the runs differ by 1.5-4 % of the update; tests/test_distributed.py).
  Also per-process timings (``train_s``), and anything drawn from torch's global random generator (no built-in
  model has dropout).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trtprune.config import FinetuneConfig
from trtprune.errors import TrtpruneError
from trtprune.log import progress
from trtprune.outputs import count, output_leaves, run_on, to_device, to_float
from trtprune.sources.images import as_images
from trtprune.sources.weights import load_state, read_checkpoint, save_pruned
from trtprune.tasks import Classification, Task
from trtprune.tasks.base import kl_distillation
from trtprune.training import distributed as DI
from trtprune.training.proxy import recalibrate_bn
from trtprune.training.speed import Setting, fastest_setting

log = logging.getLogger(__name__)


def cosine_lr(step: int, total: int, peak: float, warmup: int = 0) -> float:
    """Linear warm-up from 0 over the first ``warmup`` steps, then cosine decay from ``peak`` to 0 at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: KL between softened distributions, scaled by T^2 to keep gradients comparable (the
    classification task's distillation; see :mod:`trtprune.tasks`)."""
    return kl_distillation(student, teacher, temperature)


# Settings that shape the optimisation trajectory: a resumed run must use the same ones.
_RESUME_KEYS = ("batch_size", "lr", "momentum", "weight_decay", "distill", "temperature", "train_limit", "seed")
_RESUME_DEFAULTS = {"warmup": 0.0}  # settings added later: a checkpoint without them had their default


def training_device(requested: str = "auto") -> torch.device:
    """Where to train: ``cpu``, ``cuda`` or ``auto`` (a GPU when torch sees one). In a process group on GPUs,
    each process takes the GPU of its LOCAL_RANK (set by torchrun and --nproc)."""
    if requested not in ("auto", "cpu", "cuda"):
        raise TrtpruneError(f"unknown training device '{requested}'", fix="use auto, cpu or cuda")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise TrtpruneError(
            "--train-device cuda, but torch sees no CUDA GPU",
            why=f"this torch ({torch.__version__}) is a CPU build or finds no driver"
            if torch.version.cuda is None
            else "no GPU is visible (driver, CUDA_VISIBLE_DEVICES)",
            fix="install a CUDA build of torch on a machine with an NVIDIA GPU, or train with --train-device cpu",
        )
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    if local >= torch.cuda.device_count():
        raise TrtpruneError(
            f"process {local} on this node has no GPU of its own ({torch.cuda.device_count()} visible)",
            fix="start at most one process per GPU on each node (--nproc / --nproc_per_node)",
        )
    torch.cuda.set_device(local)
    return torch.device("cuda", local)


def autocast_dtype(precision: str, device: torch.device | str = "cpu") -> torch.dtype | None:
    """The autocast dtype: bf16 if asked, or by default where the hardware has it natively (CPUs with
    AVX512-BF16/AMX, GPUs from Ampere on); None for fp32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise TrtpruneError(f"unknown training precision '{precision}'", fix="use auto, fp32 or bf16")
    if torch.device(device).type == "cuda":
        native = torch.cuda.is_bf16_supported()
        if precision == "bf16" and not native:
            raise TrtpruneError("this GPU has no bf16 arithmetic", fix="train with --precision fp32 (or auto)")
    elif precision == "auto":
        try:
            native = torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a private probe: treat its absence as "no"
            native = False
    if precision == "auto":
        precision = "bf16" if native else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def compiled(module: nn.Module) -> nn.Module:
    """``torch.compile(module)``, after checking that the compiler it needs on a CPU is there."""
    if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
        raise TrtpruneError(
            "--compile needs a C++ compiler (torch.compile generates and builds C++ kernels for the CPU)",
            fix="install one (Debian: apt install g++), or fine-tune without --compile",
        )
    return torch.compile(module)


def _check_resumable(ckpt: dict, cfg: FinetuneConfig, path: Path) -> None:
    if not {"optimizer", "epoch", "step"} <= set(ckpt):
        raise TrtpruneError(
            f"'{path}' is not a fine-tuning checkpoint (it has no optimizer state)",
            fix="resume only from a checkpoint written by trtprune finetune, or choose another -o",
        )
    saved = ckpt.get("finetune", {})
    keys = (*_RESUME_KEYS, *_RESUME_DEFAULTS)
    changed = [
        f"{k} {saved.get(k, _RESUME_DEFAULTS.get(k))} -> {getattr(cfg, k)}"
        for k in keys
        if saved.get(k, _RESUME_DEFAULTS.get(k)) != getattr(cfg, k)
    ]
    if changed:
        raise TrtpruneError(
            f"'{path}' was fine-tuned with other settings: {', '.join(changed)}",
            fix="resume with the same settings, or start a new checkpoint",
        )
    if saved.get("epochs") != cfg.epochs:
        log.warning(
            "resuming with %s epochs instead of %s: the cosine schedule is stretched from here on",
            cfg.epochs,
            saved.get("epochs"),
        )


def _stop_diverged(loss: float, step: int, epoch: int, cfg: FinetuneConfig, checkpoint: Path) -> None:
    """A loss of NaN or inf: the weights are (or are about to be) ruined; stop before a checkpoint is overwritten."""
    kept = (
        f"the checkpoint '{checkpoint}' of epoch {epoch}, the last good one, is kept"
        if epoch > 0 and checkpoint.is_file()
        else "nothing was written"
    )
    raise TrtpruneError(
        f"the training loss became {loss} at step {step + 1} (epoch {epoch + 1}/{cfg.epochs}): training stopped",
        why=f"the learning rate ({cfg.lr:g}) is too high for this model, or the weights hold NaN or infinite values; "
        f"{kept}",
        fix=f"fine-tune again with a lower --lr (e.g. {cfg.lr / 10:g})",
    )


def _check_head(model, train, mean, std, device, task: Task) -> None:
    """Outputs that do not fit the targets (a head with fewer outputs than the data has classes) fail later inside
    the loss, unclearly: say it now, on the first training batch."""
    first = next(iter(train.take(0, 2).batches(2, mean, std)), None)
    if first is None:
        raise TrtpruneError(
            "the training data holds no images", fix="give a training set (or loader) with at least one batch"
        )
    xb, yb = first
    was = model.training
    with torch.no_grad():
        out = run_on(model.eval(), xb.to(device), first=True)
    model.train(was)
    task.check(out, to_device(yb, device), train)


def _setting(model, teacher, train, mean, std, cfg: FinetuneConfig, device, size: int, task: Task) -> Setting:
    """Memory layout and arithmetic: the ones asked for, or where left to ``auto`` the fastest of the choices
    timed on the first training batch (:mod:`trtprune.training.speed`). A process group, or ``--compile``
    (whose first steps compile), takes channels-last and the native arithmetic without timing."""
    native = autocast_dtype(cfg.precision, device)
    layouts = [cfg.channels_last] if cfg.channels_last is not None else [False, True]
    amps = [None, native] if cfg.precision == "auto" and native is not None else [native]
    if size > 1 or cfg.compile:
        return Setting(True if cfg.channels_last is None else cfg.channels_last, native)
    candidates = [Setting(layout, amp) for layout in layouts for amp in amps]
    if len(candidates) == 1:
        return candidates[0]
    xb, yb = next(iter(train.batches(cfg.batch_size, mean, std, shuffle=True, augment=True, seed=cfg.seed)))
    return fastest_setting(model, teacher, xb, yb, candidates, device, loss_fn=task.loss)[0]


def _recover(model, train, test, mean, std, cfg: FinetuneConfig, device, fmt, task: Task, scored: bool) -> dict:
    """Before the first step: the task's metric (top-1) of the pruned model as it is, then after re-estimating its
    BatchNorm statistics on ``cfg.recalibrate`` training images (the same images in every process of a group, so
    every process holds the same statistics). Kept in the checkpoint as ``recovery``."""
    key = task.metric_key
    record: dict = {"recalibrated_images": 0}
    if scored:
        record[f"{key}_pruned"] = DI.evaluate(model, test, mean, std, task)[key]
    if cfg.recalibrate > 0 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        images = train.take(0, min(cfg.recalibrate, len(train)))
        batch = min(100, len(images))
        with torch.autocast(device.type, enabled=False):
            recalibrate_bn(model, images, mean, std, batches=-(-len(images) // batch), batch_size=batch, seed=cfg.seed,
                           device=device, memory_format=fmt)  # fmt: skip
        record["recalibrated_images"] = len(images)
    if scored:
        record[key] = (
            DI.evaluate(model, test, mean, std, task)[key] if record["recalibrated_images"] else record[f"{key}_pruned"]
        )
        log.info(
            "recovery | %s %.2f as pruned, %.2f after re-estimating BatchNorm on %d training images",
            task.metric_name,
            record[f"{key}_pruned"],
            record[key],
            record["recalibrated_images"],
        )
    return record


def finetune(
    model: nn.Module,
    train,
    test,
    mean,
    std,
    cfg: FinetuneConfig,
    *,
    checkpoint: Path,
    base_model: str,
    history: list,
    teacher: nn.Module | None = None,
    resume: bool = True,
    task: Task | None = None,
) -> list[dict]:
    """Train ``model`` in place; returns one record per epoch, resumed ones included (loss, the task's metric -
    ``top1`` for classification - and seconds). ``task`` (:mod:`trtprune.tasks`; None: classification) gives the
    loss, the distillation and the metric.
    Before the first step the BatchNorm statistics are re-estimated (``cfg.recalibrate``); the top-1 before and
    after that is logged and kept in the checkpoint (``recovery``).

    ``train`` and ``test`` (None: no evaluation) are :class:`~trtprune.sources.images.Images`, ``(x, y)`` uint8
    NHWC arrays or loaders of ``(x, y)`` batches (used as given: ``mean``/``std`` and the augmentation are then
    the loader's own).

    In a process group of N processes (see the module's docstring) every process calls this with the same
    arguments; each returns the same records, and only rank 0 writes ``checkpoint``.
    """
    task = task or Classification()
    scored = test is not None or not task.images_metric  # a user's metric reads its own validation data
    rank, size = DI.world()
    DI.check_processes(size, cfg.batch_size, source=f"a process group of {size}")
    train = as_images(train).limit(cfg.train_limit)
    steps_per_epoch = -(-len(train) // cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    device = training_device(cfg.train_device)
    model.to(device=device)
    if cfg.distill > 0:
        assert teacher is not None, "distillation needs a teacher"
        teacher.eval().to(device=device)
    _check_head(model, train, mean, std, device, task)  # before anything computes a loss or a metric with it
    setting = _setting(model, teacher if cfg.distill > 0 else None, train, mean, std, cfg, device, size, task)
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)  # before the optimizer: its state follows the parameters
    opt = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )
    start_epoch = step = 0
    records: list[dict] = []
    checkpoint = Path(checkpoint)
    if resume and checkpoint.is_file():
        ckpt = read_checkpoint(checkpoint)
        _check_resumable(ckpt, cfg, checkpoint)
        load_state(model, ckpt["state_dict"], str(checkpoint))
        opt.load_state_dict(ckpt["optimizer"])
        start_epoch, step = int(ckpt["epoch"]), int(ckpt["step"])
        records = list(ckpt.get("records", []))
        log.info("resuming from %s after epoch %d/%d", checkpoint, start_epoch, cfg.epochs)
    DI.check_same(
        f"after epoch {start_epoch}" if start_epoch else "none",
        f"the checkpoint at '{checkpoint}' to resume",
        fix="put -o on a filesystem that every node reads, so that all processes resume from the same checkpoint",
    )
    recovery = (
        ckpt.get("recovery") if start_epoch else _recover(model, train, test, mean, std, cfg, device, fmt, task, scored)
    )
    amp = setting.amp
    log.info(
        "training on %s, %s autocast" if amp else "training on %s, %s",
        device,
        setting.name,
    )
    soft_targets = teacher
    if cfg.distill > 0:
        teacher.to(memory_format=fmt)
        soft_targets = compiled(teacher) if cfg.compile else teacher
    with contextlib.ExitStack() as stack:
        net = model
        if size > 1:
            synced = stack.enter_context(DI.synced_batchnorm(model))
            # starts every process from rank 0's weights
            net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
            log.info(
                "%d processes, %d images each per step, %d BatchNorm layers synchronised",
                size,
                cfg.batch_size // size,
                synced,
            )
        if cfg.compile:  # the checkpoints, the evaluation and the caller keep the module itself
            net = compiled(net)
            log.info("torch.compile: the first steps compile the model (minutes on a CPU), the rest run faster")
        first_step = step
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            t0, loss_sum, seen = time.perf_counter(), 0.0, 0
            bar = progress(
                train.batches(cfg.batch_size, mean, std, shuffle=True, augment=True, seed=cfg.seed * 1000 + epoch),
                total=steps_per_epoch,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                unit="batch",
            )
            for xb, yb in bar:  # the global batch, the same in every process
                lr = cosine_lr(step, total_steps, cfg.lr, round(cfg.warmup * steps_per_epoch))
                for g in opt.param_groups:
                    g["lr"] = lr
                # this process's slice; its mean loss is weighted by its share of the global batch (times N, as
                # DDP averages N gradients), so that every image of an uneven last batch counts alike
                n_global = count(xb)
                xb, yb = DI.shard(xb, rank, size), DI.shard_targets(yb, rank, size, n_global)
                n = count(xb)
                xb = xb.to(device, non_blocking=True).contiguous(memory_format=fmt)
                yb = to_device(yb, device, non_blocking=True)
                with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                    out = to_float(net(xb))  # losses in fp32
                    if cfg.distill > 0:
                        with torch.no_grad():
                            soft = to_float(soft_targets(xb))
                if step == first_step:  # outputs that do not fit the targets fail inside the loss, unclearly
                    task.check(out, yb, train)
                if n:
                    loss = task.loss(out, yb)
                    if cfg.distill > 0:
                        loss = (1 - cfg.distill) * loss + cfg.distill * task.distill(out, soft, cfg.temperature)
                    objective = loss if size == 1 else loss * (n * size / n_global)
                else:  # a last batch with fewer images than processes: this one has none, but takes part
                    loss = objective = sum(t.sum() for _, t in output_leaves(out)) * 0.0
                loss_value = float(loss.detach())
                diverged = not math.isfinite(loss_value)
                if size > 1:  # every process stops together (one alone would leave the others waiting in DDP)
                    diverged = DI.all_sum(float(diverged))[0] > 0
                if diverged:
                    _stop_diverged(loss_value, step, epoch, cfg, checkpoint)
                opt.zero_grad(set_to_none=True)
                objective.backward()
                opt.step()
                step += 1
                loss_sum += loss_value * n
                seen += n
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.3f}", lr=f"{lr:.4f}")
            loss_sum, seen = DI.all_sum(loss_sum, seen)
            model.eval()
            record = {"epoch": epoch + 1, "loss": loss_sum / max(seen, 1), "train_s": time.perf_counter() - t0}
            if scored:
                record.update(DI.evaluate(model, test, mean, std, task))
            records.append(record)
            if rank == 0:
                save_pruned(
                    checkpoint,
                    model,
                    base_model,
                    history,
                    optimizer=opt.state_dict(),
                    epoch=epoch + 1,
                    step=step,
                    finetune=asdict(cfg),
                    records=records,
                    recovery=recovery,
                    setting=setting.name,
                    task=task.to_dict(),
                )
            log.info(
                "epoch %d/%d | loss %.4f | %s %s | %.0f s",
                epoch + 1,
                cfg.epochs,
                record["loss"],
                task.metric_name,
                f"{record[task.metric_key]:.2f}" if task.metric_key in record else "-",
                record["train_s"],
            )
    model.to(device="cpu", memory_format=torch.contiguous_format).eval()
    if teacher is not None:
        teacher.to("cpu")
    return records
