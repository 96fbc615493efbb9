"""The parameter-free "option A" shortcut of the CIFAR ResNets, written so it can be pruned.

He et al. (2016) downsample the identity with ``x[:, :, ::2, ::2]`` and pad the channel axis with
zeros (``planes // 4`` on each side). Written as a lambda, Torch-Pruning sees an unknown op, couples
its input and output channels one to one, and produces a model that fails in forward. Here the
shortcut is a module with an explicit channel map: output channel ``j`` carries input channel
``gather[j]`` or zeros (``-1``). Pruning its inputs turns the matching outputs into zeros; pruning
its outputs drops entries from the map. Inputs and outputs are *not* coupled, which is the truth: the
residual streams on both sides of a downsampling block are independent channel groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ChannelPadShortcut(nn.Module):
    """Spatial subsampling by ``stride`` and a channel map with zero channels.

    Holds no parameters or buffers, so checkpoints keep the original key layout.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(f"out_channels {out_channels} < in_channels {in_channels}")
        self.stride = stride
        self.in_channels = in_channels
        lo = (out_channels - in_channels) // 2
        self.gather: list[int] = [-1] * lo + list(range(in_channels))
        self.gather += [-1] * (out_channels - len(self.gather))

    @property
    def out_channels(self) -> int:
        return len(self.gather)

    def _padding(self) -> tuple[int, int] | None:
        """(front, back) zero channels if the map is zeros + every input in order + zeros."""
        lo = next((j for j, g in enumerate(self.gather) if g >= 0), len(self.gather))
        body = self.gather[lo : lo + self.in_channels]
        if body != list(range(self.in_channels)):
            return None
        rest = self.gather[lo + self.in_channels :]
        if any(g >= 0 for g in rest):
            return None
        return lo, len(rest)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        padding = self._padding()
        if padding is not None:  # the original op: exports as a single Pad
            return F.pad(x, (0, 0, 0, 0, padding[0], padding[1]))
        x = F.pad(x, (0, 0, 0, 0, 0, 1))  # channel `in_channels` is the zero channel
        index = [g if g >= 0 else self.in_channels for g in self.gather]
        return x.index_select(1, torch.tensor(index, device=x.device))

    # -- pruning: called by the Torch-Pruning adapter in trtprune.pruning.prune --------------------------
    def remove_inputs(self, idxs: Sequence[int]) -> None:
        """Input channels ``idxs`` are gone: their outputs become zeros, the rest renumber."""
        gone = set(int(i) for i in idxs)
        keep = [c for c in range(self.in_channels) if c not in gone]
        new_index = {old: new for new, old in enumerate(keep)}
        self.gather = [new_index.get(g, -1) if g >= 0 else -1 for g in self.gather]
        self.in_channels = len(keep)

    def remove_outputs(self, idxs: Sequence[int]) -> None:
        """Output channels ``idxs`` are gone from the map; inputs are untouched."""
        gone = set(int(i) for i in idxs)
        self.gather = [g for j, g in enumerate(self.gather) if j not in gone]

    def extra_repr(self) -> str:
        return f"in={self.in_channels}, out={self.out_channels}, stride={self.stride}"
