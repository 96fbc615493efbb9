"""Fine-tuning in several processes with torch.distributed: process group, launcher, synchronised BatchNorm.

Two ways to start the processes: ``trtprune finetune --nproc N`` spawns N on this machine (:func:`launch`,
a free port on 127.0.0.1), and ``torchrun ... -m trtprune finetune`` starts them itself and describes the
group in the environment (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT; :func:`from_env`). Either way every
process runs the same loop, :func:`trtprune.training.finetune.finetune`, which notices the process group and

* draws the same global batch as one process would (order and augmentation from the seed) and trains on its
  slice of it (:func:`shard`), so a step sees the same images and augmentations whatever the number of processes;
* averages the gradients with DistributedDataParallel;
* normalises with the BatchNorm statistics of the whole global batch (:func:`synced_batchnorm`) and keeps
  the running statistics equal on every process: ``torch.nn.SyncBatchNorm`` works on GPUs only;
* evaluates its share of the test set (:func:`top1`); only rank 0 writes the checkpoint.

Together this computes the gradient of one process training on the global batch: the weights agree with a
one-process run up to floating-point rounding (sums are split differently), not bit for bit; see
:mod:`trtprune.training.finetune` for how far apart that leaves them.

Backends: gloo for CPU tensors always; where torch sees CUDA GPUs and NCCL, the group is created as
``cpu:gloo,cuda:nccl``, so that training on GPUs (``--train-device``, one GPU per process, by LOCAL_RANK)
reduces its gradients and BatchNorm statistics with NCCL while the small bookkeeping collectives (losses,
counts, checks) stay on gloo.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import signal
import socket
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.utils._pytree as pytree
from torch import nn

from trtprune import log as logsetup
from trtprune.cpus import usable_cpus
from trtprune.errors import TrtpruneError
from trtprune.metrics import top1_torch
from trtprune.signals import on_sigterm
from trtprune.sources.images import as_images

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600  # joining the group, and any one collective (the longest wait: rank 0 writing a checkpoint)


class WorkerError(RuntimeError):
    """A process started by :func:`launch` failed with an unexpected error; the message holds its traceback."""


# -- the process group ------------------------------------------------------------------------------
def world() -> tuple[int, int]:
    """``(rank, world size)`` of this process in the default process group; ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def timeout() -> timedelta:
    raw = os.environ.get("TRTPRUNE_DIST_TIMEOUT", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
        if seconds <= 0:
            raise ValueError
    except ValueError:
        raise TrtpruneError(
            f"TRTPRUNE_DIST_TIMEOUT={raw!r} is not a number of seconds", fix="set it to e.g. 600, or unset it"
        ) from None
    return timedelta(seconds=seconds)


def check_processes(n: int, batch_size: int, source: str | None = None) -> None:
    """A clear error unless ``n`` processes can share the global batch ``batch_size`` equally.

    ``source`` says where ``n`` came from, for the message (default ``--nproc N``)."""
    source = source or f"--nproc {n}"
    if n < 1:
        raise TrtpruneError(
            f"{source}: fine-tuning needs at least 1 process", fix="use --nproc 1 (the default) or more"
        )
    if batch_size % n:
        raise TrtpruneError(
            f"--batch-size {batch_size} cannot be split equally into {n} processes ({source})",
            why="the global batch stays --batch-size: each process trains on batch-size / N images per step",
            fix=f"choose a --batch-size that is a multiple of {n}, or a number of processes that divides {batch_size}",
        )


def backend() -> str:
    """gloo, plus NCCL for CUDA tensors where torch has both CUDA GPUs and NCCL."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"


@contextlib.contextmanager
def process_group(init_method: str, rank: int, size: int):
    """Join a process group of ``size`` processes as ``rank`` (:func:`backend`); leave it on exit. Logs of ranks
    > 0 are quiet."""
    try:
        dist.init_process_group(backend(), init_method=init_method, rank=rank, world_size=size, timeout=timeout())
    except (RuntimeError, ValueError) as e:  # DistStoreError, DistNetworkError (timeouts, refused connections)
        first = str(e).strip().split("\n")[0]
        raise TrtpruneError(
            f"process {rank} of {size} could not join the process group ({init_method}): {type(e).__name__}: {first}",
            why="every process must reach MASTER_ADDR:MASTER_PORT within TRTPRUNE_DIST_TIMEOUT "
            f"({timeout().total_seconds():.0f} s)",
            fix="check that all processes were started, that MASTER_ADDR is reachable from every node and "
            "MASTER_PORT is free on it",
        ) from e
    logger = logging.getLogger("trtprune")
    level = logger.level
    if rank:  # every process runs the same steps: rank 0 speaks for all
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
        dist.destroy_process_group()


@contextlib.contextmanager
def from_env():
    """Join the process group that torchrun describes in the environment; nothing without one (WORLD_SIZE <= 1).

    Already in a group (a process of :func:`launch`): nothing either."""
    size = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if size <= 1 or world()[1] > 1:
        yield
        return
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise TrtpruneError(
            f"WORLD_SIZE={size} is set but {', '.join(missing)} not",
            fix="start the processes with torchrun (which sets them all), or unset WORLD_SIZE",
        )
    with process_group("env://", int(os.environ["RANK"]), size):
        yield


def all_sum(*values: float) -> list[float]:
    """The sums over all processes of each value (the values themselves without a process group)."""
    if world()[1] == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def check_same(value, what: str, fix: str) -> None:
    """A clear error, in every process, unless ``value`` is the same in all of them."""
    if world()[1] == 1:
        return
    values = [None] * world()[1]
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise TrtpruneError(
            f"the processes disagree about {what}",
            why=", ".join(f"rank {r}: {v}" for r, v in enumerate(values)),
            fix=fix,
        )


def shard(t: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """This process's slice of a global batch: contiguous, sizes differing by at most 1 (the last batch)."""
    return t if size == 1 else torch.tensor_split(t, size)[rank]


def top1(model: nn.Module, images, mean, std) -> float:
    """Top-1 in percent of ``model`` on all of ``images``, each process evaluating its share (same weights
    everywhere)."""

    images = as_images(images)
    rank, size = world()
    if size == 1:
        return top1_torch(model, images, mean, std, desc="eval")
    lo, hi = len(images) * rank // size, len(images) * (rank + 1) // size
    share = images.take(lo, hi)
    correct = round(top1_torch(model, share, mean, std, desc="eval") * (hi - lo) / 100) if hi > lo else 0
    return 100.0 * all_sum(correct)[0] / len(images)


def evaluate(model: nn.Module, images, mean, std, task) -> dict[str, float]:
    """The task's figures of ``model`` on ``images``: top-1 shared out among the processes for classification;
    any other task evaluated whole by every process (the same weights give the same figures)."""
    if task.metric_key == "top1" and task.images_metric:
        return {"top1": top1(model, images, mean, std)}
    return task.evaluate(model, images, mean, std)


def shard_targets(targets, rank: int, size: int, n: int):
    """This process's slice of a global batch's targets (tensors with one row per image, in any structure); targets
    that cannot be sliced by image (a detector's flat box list) are an error with several processes."""
    if size == 1:
        return targets
    leaves = pytree.tree_leaves(targets)
    if not leaves or not all(isinstance(v, torch.Tensor) and v.dim() and len(v) == n for v in leaves):
        raise TrtpruneError(
            "the targets of a batch cannot be split among the processes",
            why="each process trains on its slice of the global batch, and its targets must be sliced alike: tensors "
            f"with one row per image ({n} here); these are {type(targets).__name__} of other shapes",
            fix="fine-tune in one process (--nproc 1), or give targets with one row per image",
        )
    return pytree.tree_map(lambda v: shard(v, rank, size), targets)


# -- BatchNorm over the global batch ----------------------------------------------------------------
class _SyncBatchNormFn(torch.autograd.Function):
    """Batch normalisation with the mean and variance of the batch on all processes.

    Forward: each process's count, mean and (biased) variance per channel are gathered and combined in float64
    (Chan et al.'s parallel variance, stable where E[x^2] - E[x]^2 is not). Backward: the sums of dy and of
    dy * x_hat over all processes give each process the gradient of the summed losses with respect to its own
    inputs, as ``torch.nn.SyncBatchNorm`` does; DDP's averaging then gives the gradient of the global batch.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, group):
        c = x.shape[1]
        dims = [d for d in range(x.dim()) if d != 1]
        view = [1, c] + [1] * (x.dim() - 2)
        ftype = torch.promote_types(x.dtype, torch.float32)  # bf16 (autocast) in fp32, float64 kept
        xf = x.to(ftype)
        n = xf.numel() // c
        if n:
            var, mean = torch.var_mean(xf, dims, correction=0)
        else:  # an empty slice (a last batch with fewer images than processes) adds nothing
            var = mean = torch.zeros(c, dtype=ftype, device=x.device)
        count = torch.tensor([float(n)], dtype=torch.float64, device=x.device)
        local = torch.cat([count, mean.double(), var.double()])
        gathered = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
        dist.all_gather(gathered, local, group=group)
        g = torch.stack(gathered)
        counts, means, variances = g[:, :1], g[:, 1 : 1 + c], g[:, 1 + c :]
        total = float(counts.sum())
        if total <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {list(x.shape)}")
        mean64 = (counts * means).sum(0) / total
        var64 = (counts * (variances + (means - mean64) ** 2)).sum(0) / total
        if running_mean is not None:
            running_mean.mul_(1 - momentum).add_(mean64.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_((var64 * total / (total - 1)).to(running_var.dtype), alpha=momentum)
        mean, invstd = mean64.to(ftype), torch.rsqrt(var64 + eps).to(ftype)
        xhat = (xf - mean.view(view)) * invstd.view(view)
        y = xhat if weight is None else xhat * weight.to(ftype).view(view) + bias.to(ftype).view(view)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.meta = (total, group, x.dtype, ftype, dims, view)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, gy):
        xhat, weight, invstd = ctx.saved_tensors
        total, group, dtype, ftype, dims, view = ctx.meta
        g = gy.to(ftype)
        sum_dy = g.sum(dims)
        sum_dy_xhat = (g * xhat).sum(dims)
        c = sum_dy.numel()
        both = torch.cat([sum_dy, sum_dy_xhat])
        dist.all_reduce(both, group=group)
        scale = invstd if weight is None else invstd * weight.to(ftype)
        gx = (g - (both[:c] / total).view(view) - xhat * (both[c:] / total).view(view)) * scale.view(view)
        gw = gb = None
        if weight is not None:  # this process's share; DDP averages it over the processes
            gw, gb = sum_dy_xhat.to(weight.dtype), sum_dy.to(weight.dtype)
        return gx.to(dtype), gw, gb, None, None, None, None, None


class _SyncedBatchNorm:
    """Mixed into the BatchNorm classes: in training, the statistics of the batch on all processes."""

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        self._check_input_dim(x)
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        track = self.track_running_stats and self.running_mean is not None
        return _SyncBatchNormFn.apply(
            x,
            self.weight,
            self.bias,
            self.running_mean if track else None,
            self.running_var if track else None,
            momentum,
            self.eps,
            self._trtprune_sync_group,
        )


class _SyncedBatchNorm1d(_SyncedBatchNorm, nn.BatchNorm1d):
    pass


class _SyncedBatchNorm2d(_SyncedBatchNorm, nn.BatchNorm2d):
    pass


class _SyncedBatchNorm3d(_SyncedBatchNorm, nn.BatchNorm3d):
    pass


_SYNCED = {nn.BatchNorm1d: _SyncedBatchNorm1d, nn.BatchNorm2d: _SyncedBatchNorm2d, nn.BatchNorm3d: _SyncedBatchNorm3d}


@contextlib.contextmanager
def synced_batchnorm(model: nn.Module):
    """Within the block, ``model``'s BatchNorm layers normalise over the batch on all processes.

    The layers keep their parameters, buffers and state-dict keys (only their class changes, back on exit), so
    checkpoints written meanwhile are ordinary. Yields the number of layers synchronised.
    """
    # apart from DDP's gradient reductions; NCCL for a model on a GPU
    on_gpu = any(p.is_cuda for p in model.parameters())
    group = dist.new_group(backend="nccl" if on_gpu else "gloo")
    swapped = []
    for m in model.modules():
        if type(m) in _SYNCED:
            swapped.append((m, type(m)))
            m.__class__ = _SYNCED[type(m)]
            m._trtprune_sync_group = group
    other = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        - {c.__name__ for c in _SYNCED.values()}
    )
    if other:
        log.warning("BatchNorm layers of type %s keep per-process statistics", ", ".join(other))
    try:
        yield len(swapped)
    finally:
        for m, cls in swapped:
            m.__class__ = cls
            del m._trtprune_sync_group
        dist.destroy_process_group(group)


# -- launching processes on this machine --------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, size: int, port: int, tmp: str, verbose: int, payload: bytes) -> None:

    signal.signal(signal.SIGTERM, on_sigterm)  # like the CLI: files being written are removed
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(size),
        LOCAL_WORLD_SIZE=str(size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if "OMP_NUM_THREADS" not in os.environ:  # share the cores instead of every process taking them all
        torch.set_num_threads(max(1, usable_cpus() // size))
    logsetup.setup(verbose)
    try:
        fn, args, kwargs = pickle.loads(payload)
        with process_group("env://", rank, size):
            result = fn(*args, **kwargs)
        if rank == 0:
            with open(Path(tmp) / "result.pkl", "wb") as f:
                pickle.dump(result, f)
    except Exception as e:
        info = {
            "rank": rank,
            "time": time.time(),
            "type": type(e).__name__,
            "message": str(e),
            "traceback": traceback.format_exc(),
            # a process that fails because another one died sees its connections close: not the cause
            "communication": isinstance(e, dist.DistError) or "gloo" in str(e).lower(),
        }
        if isinstance(e, TrtpruneError):
            info.update(what=e.what, why=e.why, fix=e.fix)
        (Path(tmp) / f"error-{rank}.json").write_text(json.dumps(info))
        raise


def _failure(tmp: Path, size: int, exc: Exception) -> Exception:
    infos = sorted((json.loads(p.read_text()) for p in tmp.glob("error-*.json")), key=lambda i: i["time"])
    cause = next((i for i in infos if not i["communication"]), infos[0] if infos else None)
    if cause is None:  # no Python exception: killed by a signal, or os._exit
        index = getattr(exc, "error_index", "?")
        how = getattr(exc, "signal_name", None) or f"exit code {getattr(exc, 'exit_code', '?')}"
        return WorkerError(
            f"process {index} of {size} died ({how})"
            + ("; SIGKILL often means the system ran out of memory (try fewer processes)" if how == "SIGKILL" else "")
        )
    for i in infos:
        log.debug("process %d of %d failed:\n%s", i["rank"], size, i["traceback"])
    if "what" in cause:
        return TrtpruneError(cause["what"], cause["why"], cause["fix"])
    return WorkerError(
        f"process {cause['rank']} of {size} failed: {cause['type']}: {cause['message']}\n"
        f"its traceback:\n{cause['traceback']}"
    )


def launch(fn: Callable, nproc: int, *args, verbose: int = 0, **kwargs):
    """Run ``fn(*args, **kwargs)`` in ``nproc`` new processes joined in a process group on 127.0.0.1.

    Returns what rank 0's call returned. Each process gets its own copy of the arguments (they are pickled, so
    ``fn`` must be importable). An exception in any process stops them all and is raised here: a TrtpruneError
    as itself, anything else as :class:`WorkerError` carrying the process's traceback. A process stuck in a
    collective gives up after TRTPRUNE_DIST_TIMEOUT seconds.
    """
    import torch.multiprocessing as mp

    if nproc < 1:
        raise TrtpruneError(f"{nproc} processes: at least 1 is needed")
    payload = pickle.dumps((fn, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    with tempfile.TemporaryDirectory(prefix="trtprune-dist-") as tmp:
        ctx = mp.start_processes(
            _worker,
            args=(nproc, _free_port(), tmp, verbose, payload),
            nprocs=nproc,
            join=False,
            start_method="spawn",
        )
        try:
            while not ctx.join(grace_period=5):
                pass
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
            raise _failure(Path(tmp), nproc, e) from None
        finally:  # also on Ctrl-C or SIGTERM in this process: no process is left behind
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            for p in ctx.processes:
                p.join(10)
                if p.is_alive():
                    p.kill()
                    p.join()
        result = Path(tmp) / "result.pkl"
        if not result.is_file():  # all exited cleanly, rank 0 without a result: they were interrupted (SIGINT)
            raise KeyboardInterrupt
        with open(result, "rb") as f:
            return pickle.load(f)
