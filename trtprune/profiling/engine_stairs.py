"""Group stairs from whole-engine per-layer profiles: the TensorRT way of profiling a group.

A single-layer micro-model is what the latency table times (``trtprune.profiling.profile``); on TensorRT
the layer inside the whole engine can run another tactic than alone (fusions with its neighbours, myelin
regions, reformats it needs or not). Here a group's latency at ``c`` channels is read from the engine of
the whole model with that group at ``c`` and every other group at full width: ``trtexec --exportProfile``
gives each engine layer's time and ``--exportLayerInfo`` the ONNX nodes it holds, joined to the group's
producers and consumers by :func:`trtprune.latency.engine_map.group_times` (fused regions split by
multiply-accumulates). One count is one engine build plus one profiling run, so the stair search
(:func:`trtprune.profiling.stairs.three_point`) chooses the counts, and each count measured is kept for
the groups that ask for it again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from pathlib import Path

from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.fsutil import safe_file_name
from trtprune.profiling.predict import export_timed
from trtprune.profiling.stairs import Stairs, Tolerance, on_multiples, three_point
from trtprune.pruning.prune import ChannelGroup, GroupPruner

log = logging.getLogger(__name__)


class EngineProfiler:
    """Per-group latency from the per-layer profile of whole-model engines on ``backend`` (a TensorRT
    backend: ``group_profile``). Subnets are written under ``workdir``."""

    def __init__(self, backend, model: nn.Module, input_shape, workdir: str | Path, ignore=(), iterations: int = 200):
        if not getattr(backend, "layer_profiles", False):
            raise TrtpruneError(
                f"the '{backend.name}' engine gives no per-layer profile of a whole model",
                fix="profile from the engine on a TensorRT device; elsewhere profile single layers (the default)",
            )
        self.backend, self.model, self.input_shape = backend, model, tuple(input_shape)
        self.workdir, self.ignore, self.iterations = Path(workdir), tuple(ignore), iterations
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.groups = {g.name: g for g in GroupPruner(model, self.input_shape, self.ignore).groups()}
        self.builds = 0  # engines built and profiled
        self.other_ms: dict[str, float] = {}  # time in no group, per subnet
        self._cache: dict[tuple[str, int], float] = {}

    def _subnet(self, keep: Mapping[str, int], path: Path) -> Path:
        model = copy.deepcopy(self.model)
        GroupPruner(model, self.input_shape, self.ignore).prune_to(keep)
        return export_timed(model, path, self.input_shape, self.backend)

    def curve(self, group: ChannelGroup, counts: list[int]) -> dict[int, float]:
        """The group's engine-profile latency (ms) at each count, the other groups at full width."""
        out = {}
        for c in counts:
            key = (group.name, c)
            if key not in self._cache:
                keep = {group.name: c} if c < group.channels else {}
                path = self._subnet(keep, self.workdir / f"{safe_file_name(group.name)}-{c}.onnx")
                times, other, unknown = self.backend.group_profile(path, list(self.groups.values()), self.iterations)
                self.builds += 1
                self.other_ms[path.name] = other
                if unknown:
                    log.warning("engine profile of %s: layers missing from the layer info: %s", path.name, unknown[:4])
                by_group = {t.group: t for t in times}
                if not by_group[group.name].engine_layers:
                    raise TrtpruneError(
                        f"no engine layer of {path.name} holds a layer of group {group.name}",
                        why="the engine's layer info names no ONNX node of the group's convolutions (profiling "
                        "verbosity too low, or a fusion the map does not know)",
                        fix="profile single layers instead (trtprune profile without --engine-profile)",
                    )
                for t in times:  # the dense engine gives every group's time at full width
                    if t.group == group.name:
                        self._cache[key] = t.ms
                    elif c == group.channels:
                        self._cache.setdefault((t.group, self.groups[t.group].channels), t.ms)
            out[c] = self._cache[key]
        return out

    def stairs(self, group: ChannelGroup, tol: Tolerance, lo: int = 1) -> Stairs:
        """The group's stairs over counts ``lo..channels`` (multiples only for grouped convs)."""
        return on_multiples(three_point, lo, group.channels, group.multiple, lambda cs: self.curve(group, cs), tol)
