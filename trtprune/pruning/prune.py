"""Channel groups and structural pruning, on top of Torch-Pruning's dependency graph.

A *group* is a set of channels that must go together: the outputs of one or more convs (coupled by
residual adds or concats), their BNs, and the inputs of every consumer. Groups are named after the
first producing conv in module order (``layer1.0.conv1``); a *plan* maps group names to the absolute
number of channels to keep. Pruning records a replayable history, so a pruned checkpoint can be
rebuilt from the dense architecture: ``replay(build_model(spec), history)``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.pruning.importance import get_criterion
from trtprune.search.plan import Plan
from trtprune.sources.models.shortcut import ChannelPadShortcut

log = logging.getLogger(__name__)


class _ShortcutPruner(tp.pruner.BasePruningFunc):
    """Teaches Torch-Pruning the option-A shortcut: inputs and outputs prune independently."""

    TARGET_MODULES = ChannelPadShortcut

    def prune_out_channels(self, layer, idxs):
        layer.remove_outputs(idxs)
        return layer

    def prune_in_channels(self, layer, idxs):  # a different function: no in/out coupling
        layer.remove_inputs(idxs)
        return layer

    def get_out_channels(self, layer):
        return layer.out_channels

    def get_in_channels(self, layer):
        return layer.in_channels


CUSTOM_PRUNERS = {ChannelPadShortcut: _ShortcutPruner()}


@dataclass(frozen=True)
class ChannelGroup:
    name: str  # the first producing conv, in module order
    channels: int  # current number of channels
    producers: tuple[str, ...]  # modules whose output channels these are
    consumers: tuple[str, ...]  # modules whose input channels these are


def _trace_outputs(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module | None, torch.Size]:
    """The last conv/linear to run in a forward pass (its outputs are the classes) and the output shape."""
    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: order.append(m))
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    try:
        with torch.no_grad():
            out = model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return (order[-1] if order else None), out.shape


class GroupPruner:
    """The dependency graph of one model, its channel groups, and pruning to a plan."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...]):
        self.model = model
        self._example = torch.zeros(1, *input_shape)
        example = self._example
        try:
            classifier, self._out_shape = _trace_outputs(model, example)
        except Exception as e:
            raise TrtpruneError(
                f"the model does not run on an input of shape {tuple(example.shape)}: {type(e).__name__}: {e}",
                fix="give the image shape the model takes with --input-shape CxHxW (e.g. 3x224x224), or check --model",
            ) from e
        self._ignored = [classifier] if classifier is not None else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TP warns about every op it treats as element-wise
            try:
                self.dg = tp.DependencyGraph().build_dependency(
                    model, example, customized_pruners=CUSTOM_PRUNERS, verbose=False
                )
            except Exception as e:
                raise TrtpruneError(
                    f"could not trace the model for pruning: {type(e).__name__}: {e}",
                    why=f"Torch-Pruning traces one forward pass with autograd on an input of shape {(1, *input_shape)}",
                    fix="check that the model runs on that input in train mode with gradients enabled",
                ) from e
        self._names = {m: n for n, m in model.named_modules()}
        self._order = {n: i for i, (n, _) in enumerate(model.named_modules())}

    def _tp_groups(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield from self.dg.get_all_groups(ignored_layers=self._ignored, root_module_types=(nn.Conv2d, nn.Linear))

    def _describe(self, group) -> ChannelGroup:
        producers, consumers = set(), set()
        for dep, _ in group:
            module = dep.target.module
            if not isinstance(module, (nn.Conv2d, nn.Linear, ChannelPadShortcut)):
                continue
            name = self._names[module]
            if self.dg.is_out_channel_pruning_fn(dep.handler):
                producers.add(name)
            elif self.dg.is_in_channel_pruning_fn(dep.handler):
                consumers.add(name)
        key = self._order.__getitem__
        producers = tuple(sorted(producers, key=key))
        consumers = tuple(sorted(consumers - set(producers), key=key))
        return ChannelGroup(producers[0], len(group[0].idxs), producers, consumers)

    def groups(self) -> list[ChannelGroup]:
        """Every prunable channel group, in module order of its name."""
        found = [self._describe(g) for g in self._tp_groups()]
        if not found:
            raise TrtpruneError(
                "the model has no prunable channel groups",
                why="trtprune prunes the channels of Conv2d layers and of Linear layers before the classifier; "
                "the output layer is kept whole, and this model has nothing else",
                fix="give a model with convolutions (or hidden linear layers), e.g. --model resnet20",
            )
        return sorted(found, key=lambda g: self._order[g.name])

    def scores(self, importance: str = "l1", batches=None) -> dict[str, np.ndarray]:
        """One importance score per channel of every group, before any pruning (see trtprune.pruning.importance).

        Criteria that need gradients take them from ``batches`` (a few (x, y) training batches).
        """

        criterion = get_criterion(importance)
        if criterion.needs_data and batches is None:
            raise TrtpruneError(
                f"importance '{importance}' needs training data", fix="give the data (--data), or use l1, l2 or bn"
            )
        scorer = criterion.scorer(self.model, batches)
        out = {}
        for tp_group in self._tp_groups():
            out[self._describe(tp_group).name] = scorer(tp_group).detach().cpu().numpy().astype(np.float64)
        criterion.done(self.model)
        return out

    def prune_to(self, plan: Mapping[str, int], importance: str = "l1", scores: Mapping | None = None) -> None:
        """Keep ``plan[name]`` channels of each named group, dropping the least important ones (by
        ``scores`` from :meth:`scores` if given, else by the ``importance`` criterion)."""
        scorer = None
        if scores is None:
            criterion = get_criterion(importance)
            if criterion.needs_data:  # scored once, from batches: the caller passes scores()
                raise TrtpruneError(f"importance '{importance}' needs training batches: pass scores=pruner.scores(...)")
            scorer = criterion.scorer(self.model, None)
        todo = dict(plan)
        current = {g.name: g for g in self.groups()}
        unknown = sorted(set(todo) - set(current))
        if unknown:
            raise TrtpruneError(
                f"the plan names groups the model does not have: {', '.join(unknown[:5])}",
                why=f"the model's groups are {', '.join(list(current)[:8])}{' ...' if len(current) > 8 else ''}",
                fix="make the plan for this model (trtprune groups lists them)",
            )
        for tp_group in self._tp_groups():  # lazily, as each prune changes the graph
            info = self._describe(tp_group)
            if info.name not in todo:
                continue
            keep = int(todo.pop(info.name))
            if not 1 <= keep <= info.channels:
                raise TrtpruneError(
                    f"plan keeps {keep} channels of group '{info.name}', which has {info.channels}",
                    fix=f"keep between 1 and {info.channels}",
                )
            if keep == info.channels:
                continue
            group_scores = torch.as_tensor(scores[info.name]) if scores is not None else scorer(tp_group)
            drop = torch.argsort(group_scores, stable=True)[: info.channels - keep].tolist()
            root = tp_group[0].dep
            self.dg.get_pruning_group(root.target.module, root.handler, sorted(drop)).prune()
            log.debug("%-24s | %4d -> %4d ch", info.name, info.channels, keep)
        assert not todo, f"groups left unpruned: {todo}"
        _, out_shape = _trace_outputs(self.model, self._example)
        if out_shape != self._out_shape:
            raise TrtpruneError(
                f"pruning changed the model's output shape from {tuple(self._out_shape)} to {tuple(out_shape)}",
                why="the output layer is taken to be the last conv or linear "
                "to run in forward(); in this model it is not",
                fix="make the classifier the last layer applied in forward()",
            )

    def history(self) -> list:
        """Replayable record of every pruning step: ``[module_name, is_out_channels, indices]``."""
        return [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in self.dg.pruning_history()]


def replay(model: nn.Module, input_shape: tuple[int, ...], history: list) -> nn.Module:
    """Apply a recorded pruning history to a freshly built dense model (in place)."""
    if history:
        pruner = GroupPruner(model, input_shape)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner.dg.load_pruning_history(history)
    return model


def check_round_to(groups: list[ChannelGroup], round_to: int) -> None:
    """A group with fewer channels than ``round_to`` cannot be pruned to a multiple of it and keeps all of them:
    an error when that is every group (nothing would be pruned), a warning naming them when it is some."""
    small = [g for g in groups if g.channels < round_to]
    if groups and len(small) == len(groups):
        raise TrtpruneError(
            f"--round-to {round_to} exceeds the channels of every group (at most {max(g.channels for g in groups)})",
            why="counts are rounded to a multiple of --round-to, and a group smaller than it keeps all its channels: "
            "nothing would be pruned",
            fix=f"use a --round-to of at most {min(g.channels for g in groups)} (8 suits most CPUs and GPUs)",
        )
    if small:
        log.warning(
            "--round-to %d exceeds the channels of %d group(s), which keep all their channels: %s",
            round_to,
            len(small),
            ", ".join(f"{g.name} ({g.channels})" for g in small[:6]) + (" ..." if len(small) > 6 else ""),
        )


def uniform_plan(groups: list[ChannelGroup], ratio: float, round_to: int = 1) -> dict[str, int]:
    """Remove ``ratio`` of every group, keeping a multiple of ``round_to`` (at least one multiple)."""
    if not 0.0 <= ratio < 1.0:
        raise TrtpruneError(f"pruning ratio {ratio} is out of range", fix="use a ratio in [0, 1), e.g. 0.5")
    if round_to < 1:
        raise TrtpruneError(f"round_to {round_to} must be >= 1")
    check_round_to(groups, round_to)
    plan = {}
    for g in groups:
        keep = g.channels * (1.0 - ratio)
        keep = max(round_to, round_to * math.floor(keep / round_to + 0.5))  # nearest multiple
        plan[g.name] = min(g.channels, keep)
    return plan


def uniform_plan_of(
    groups: list[ChannelGroup], ratio: float, round_to: int, model: str, device: str = "", **meta
) -> Plan:
    """The :class:`Plan` of uniform pruning (``uniform_plan``): the one plan format, loadable by ``prune --plan``.
    ``device`` is empty when no device was involved (``trtprune prune --ratio``)."""
    keep = uniform_plan(groups, ratio, round_to)
    return Plan(
        model,
        device,
        "uniform",
        f"ratio {ratio}",
        keep,
        {g.name: g.channels for g in groups},
        meta={"ratio": ratio, "round_to": round_to, **meta},
    )


def prune_uniform(
    model: nn.Module,
    input_shape: tuple[int, ...],
    ratio: float,
    round_to: int = 1,
    importance: str = "l1",
    scores: Mapping | None = None,
    model_name: str = "",
) -> tuple[Plan, list]:
    """Prune every group of ``model`` by ``ratio`` (in place), by ``scores`` (from :meth:`GroupPruner.scores`)
    if given, else by a data-free ``importance``. Returns the plan (named ``model_name``) and the history."""
    pruner = GroupPruner(model, input_shape)
    plan = uniform_plan_of(pruner.groups(), ratio, round_to, model_name, importance=importance)
    pruner.prune_to(plan.keep_channels, importance, scores=scores)
    return plan, pruner.history()
