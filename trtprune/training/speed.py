"""The fastest way to run a fine-tuning step on this machine, chosen by timing it.

Which memory layout (NCHW or channels-last NHWC) and which arithmetic (fp32, or bf16 autocast where the
hardware computes bf16 natively) trains a given network fastest depends on the CPU, the network and the
batch, and not in a way that can be written down once: on an Intel Xeon with AMX (2 threads, the pruned
ResNet-56 of the default ``make engine``, batch 128, distillation teacher included) NCHW + bf16 took 306 ms
per step, channels-last + bf16 555 ms, NCHW fp32 567 ms and channels-last fp32 742 ms (issue 19). So the
candidates are timed on the real model and batch before training, interleaved round by round (a step of
each in turn, as latencies are measured everywhere in trtprune, so that drift of the machine hits them
alike), and the one with the lowest median step wins. Forward and backward passes run with BatchNorm
statistics and weights restored afterwards: the probe changes nothing but the choice.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trtprune.outputs import to_device, to_float

log = logging.getLogger(__name__)

ROUNDS = 3  # timed steps per candidate, after one untimed warm-up step each


@dataclass(frozen=True)
class Setting:
    channels_last: bool
    amp: torch.dtype | None  # autocast dtype, None = fp32

    @property
    def name(self) -> str:
        return f"{'NHWC' if self.channels_last else 'NCHW'} {'bf16' if self.amp else 'fp32'}"


def _step(model, teacher, x, y, setting: Setting, device, loss_fn) -> float:
    fmt = torch.channels_last if setting.channels_last else torch.contiguous_format
    xb = x.contiguous(memory_format=fmt)
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=setting.amp or torch.bfloat16, enabled=setting.amp is not None):
        if teacher is not None:  # distillation runs the teacher on every batch: part of the step's cost
            with torch.no_grad():
                teacher(xb)
        loss = loss_fn(to_float(model(xb)), y)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return elapsed


def fastest_setting(
    model: nn.Module,
    teacher: nn.Module | None,
    x: torch.Tensor,
    y: torch.Tensor,
    candidates: list[Setting],
    device: torch.device,
    rounds: int = ROUNDS,
    loss_fn=None,
) -> tuple[Setting, dict[str, float]]:
    """The candidate with the lowest median step on the batch ``(x, y)`` (``loss_fn(outputs, y)``: the task's loss,
    cross-entropy by default); and every candidate's ms per step."""
    loss_fn = loss_fn or F.cross_entropy
    if len(candidates) == 1:
        return candidates[0], {}
    saved = copy.deepcopy(model.state_dict())  # train-mode passes move BatchNorm's running statistics
    x, y = x.to(device), to_device(y, device)
    times: dict[Setting, list[float]] = {c: [] for c in candidates}
    model.train()
    try:
        for r in range(rounds + 1):
            for c in candidates:
                fmt = torch.channels_last if c.channels_last else torch.contiguous_format
                model.to(memory_format=fmt)
                if teacher is not None:
                    teacher.to(memory_format=fmt)
                elapsed = _step(model, teacher, x, y, c, device, loss_fn)
                if r > 0:  # round 0 warms every candidate up (one-off allocations, kernel selection)
                    times[c].append(elapsed)
    finally:
        model.load_state_dict(saved)
    ms = {c.name: 1000 * float(torch.tensor(t).median()) for c, t in times.items()}
    best = min(candidates, key=lambda c: ms[c.name])
    log.info(
        "setting  | %s: %.0f ms per step (%s; timed on this batch, %d rounds)",
        best.name,
        ms[best.name],
        ", ".join(f"{n} {v:.0f}" for n, v in ms.items() if n != best.name),
        rounds,
    )
    return best, ms


def candidates(native_bf16: bool) -> list[Setting]:
    """Every layout, with fp32 and (where the hardware has it natively) bf16 autocast."""
    amps = [None, torch.bfloat16] if native_bf16 else [None]
    return [Setting(layout, amp) for layout in (False, True) for amp in amps]
