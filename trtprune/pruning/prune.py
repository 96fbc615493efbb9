"""Channel groups and structural pruning, on top of Torch-Pruning's dependency graph.

A *group* is a set of channels that must go together: the outputs of one or more convs (coupled by
residual adds or concats), their BNs, and the inputs of every consumer. Groups are named after the
first producing conv in module order (``layer1.0.conv1``); a *plan* maps group names to the absolute
number of channels to keep. Pruning records a replayable history, so a pruned checkpoint can be
rebuilt from the dense architecture: ``replay(build_model(spec), history)``.

Grouped convolutions (1 < groups < channels) keep ``groups`` equal blocks of channels: a group that feeds
or comes out of one keeps a multiple of ``groups`` channels (:attr:`ChannelGroup.multiple`), and the same
positions are removed from every block (scores summed over the blocks), the only pattern Torch-Pruning's
conv pruner slices correctly. A group that cannot be pruned (a grouped conv reading part of a concat) is
left whole, with one log line saying so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.outputs import model_failed, output_leaves
from trtprune.pruning.blocks import remove_blocks, split_history
from trtprune.pruning.importance import get_criterion
from trtprune.searching.plan import Plan
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
    multiple: int = 1  # kept counts are multiples of it: the groups of the grouped convs it touches
    fan_in: tuple[int, ...] = ()  # per consumer, its input channels per channel of the group (a flatten: H*W)
    self_fed: tuple[str, ...] = ()  # producers that also read the group (a module called on its own output)

    def fan(self, consumer: str) -> int:
        """Input channels of ``consumer`` per channel of this group (1 unless a flatten comes between)."""
        return self.fan_in[self.consumers.index(consumer)] if self.fan_in else 1


def _is_grouped(module: nn.Module) -> bool:
    """A grouped, not depthwise, conv: its channels come in ``groups`` equal blocks."""
    return isinstance(module, nn.Conv2d) and module.groups > 1 and not _is_depthwise(module)


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and module.groups == module.in_channels == module.out_channels > 1


class _Unsupported(Exception):
    """A group trtprune cannot prune correctly (kept whole)."""


_LIMITS: list[int] = []  # the index bounds of the _bounded_index_mapping blocks open now (generators interleave)
_UNBOUNDED_FLATTEN = tp.dependency.index_mapping._FlattenIndexMapping.__call__


def _bounded_flatten(self, idxs):
    if _LIMITS and not self.reverse and len(idxs) * self._stride > min(_LIMITS):
        raise _Unsupported(
            f"Torch-Pruning's channel mapping through a reshape runs away ({len(idxs)} x {self._stride} indices, more "
            f"than the {min(_LIMITS)} channels of the widest layer): a reshape it cannot follow (attention heads)"
        )
    return _UNBOUNDED_FLATTEN(self, idxs)


tp.dependency.index_mapping._FlattenIndexMapping.__call__ = _bounded_flatten


@contextlib.contextmanager
def _bounded_index_mapping(limit: int):
    """Torch-Pruning's flatten index mapping multiplies a group's indices by the flattened size; around a reshape
    it cannot follow (attention heads) it goes round a cycle and multiplies them without end (YOLO11n's C2PSA
    took all 24 GiB). Within the block, a mapping that makes more indices than the widest layer has channels
    raises :class:`_Unsupported`, and that group is kept whole."""
    _LIMITS.append(limit)
    try:
        yield
    finally:
        _LIMITS.remove(limit)


def _check_split(node) -> None:
    """Torch-Pruning maps a split's channels by the order of the layers that read it, one piece each; a piece read
    by several layers, or read out of order (ultralytics' C2f: ``cv1(x).chunk(2)`` with one half read by the
    bottleneck, its residual add and the concat), is mapped to the wrong channels: such a group is kept whole."""
    fn = node.grad_fn
    size = getattr(fn, "_saved_split_size", None)
    sizes = getattr(fn, "_saved_split_sizes", None)
    full = getattr(fn, "_saved_self_sym_sizes", None)
    dim = getattr(fn, "_saved_dim", None)
    if sizes is not None:
        pieces = len(sizes)
    elif size and full is not None and dim is not None and 0 <= dim < len(full):
        pieces = -(-int(full[dim]) // int(size))
    else:
        pieces = None
    readers = [
        sorted({nr for f, nr in (getattr(out.grad_fn, "next_functions", None) or ()) if f is fn})
        for out in node.outputs
    ]
    if pieces is None or len(node.outputs) != pieces or any(r != [i] for i, r in enumerate(readers)):
        raise _Unsupported(
            f"a split of its channels into {pieces or '?'} pieces is read by {len(node.outputs)} layers "
            f"(pieces read: {readers}); Torch-Pruning maps such a split's channels only when each piece has one "
            "reader, in order"
        )


def _check_indices(module: nn.Module, name: str, out: bool, idxs) -> None:
    """Every channel index Torch-Pruning would remove exists in the layer (else its mapping went wrong)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        width = module.num_features
    elif isinstance(module, nn.Linear):
        width = module.out_features if out else module.in_features
    else:
        width = getattr(module, "out_channels" if out else "in_channels", None)
    top = max((int(i) for i in idxs), default=-1)
    if width is not None and top >= width:
        raise _Unsupported(
            f"Torch-Pruning maps this group to {'output' if out else 'input'} channel {top} of '{name}', which has "
            f"{width}"
        )


def _trace_outputs(
    model: nn.Module, example: torch.Tensor, carriers: Iterable[nn.Module] = ()
) -> tuple[list[nn.Module], list[tuple[str, tuple]], dict[nn.Module, list[nn.Module]]]:
    """The output layers, the shape of every output (:func:`trtprune.outputs.output_leaves`), and for each of
    ``carriers`` (modules without a conv or linear of their own: a BatchNorm, a ReLU, a pooling) the layers whose
    channels it carries (None where it did not run on a tensor).

    The output layers are the convs and linears from which a model output is reached with no other conv or linear
    in between: their output channels are what the model returns (a classifier's classes, a detector's box and
    class channels, a segmenter's per-pixel classes), so they are kept. Found by walking autograd's graph back from
    every output until such a layer's result; the example input requires a gradient, so frozen layers count too.
    A carrier's layers are found the same way, from its output."""
    made: dict = {}  # the autograd node of a layer's output -> the layer
    ends: dict = {}  # a carrier -> the autograd node of its (first) output
    carriers = list(carriers)

    def hook(m, inputs, output):
        if isinstance(output, torch.Tensor) and output.grad_fn is not None:
            made.setdefault(output.grad_fn, m)

    def end(m, inputs, output):  # a carrier returning the model's input itself (an Identity first) has no node
        ends.setdefault(m, output.grad_fn if isinstance(output, torch.Tensor) else None)

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks += [m.register_forward_hook(end) for m in carriers]
    try:
        with torch.enable_grad():
            out = model.eval()(example.clone().requires_grad_(True))
    finally:
        for h in hooks:
            h.remove()
    leaves = output_leaves(out)
    carried = {m: (_layers_behind([ends[m]], made) if ends[m] else []) if m in ends else None for m in carriers}
    return _layers_behind([t.grad_fn for _, t in leaves], made), [(n, tuple(t.shape)) for n, t in leaves], carried


def _layers_behind(fns, made: dict) -> list[nn.Module]:
    """The layers of ``made`` (autograd node -> layer) reached first walking back from ``fns``."""
    found: list[nn.Module] = []
    stack, seen = list(fns), set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in made:
            if made[fn] not in found:
                found.append(made[fn])
            continue
        stack.extend(f for f, _ in fn.next_functions)
    return found


class GroupPruner:
    """The dependency graph of one model, its channel groups, and pruning to a plan."""

    def __init__(self, model: nn.Module, input_shape: tuple[int, ...], ignore: Iterable[str] = ()):
        """``ignore``: module names whose output channels are kept whole (a container: every conv and
        linear inside it)."""
        if isinstance(model, torch.jit.ScriptModule):
            raise TrtpruneError(
                f"the model is a TorchScript {type(model).__name__}, not a torch.nn.Module",
                why="trtprune traces the module's Python code to find which channels go together and removes them "
                "from its layers; a scripted (torch.jit.script/trace) model has neither",
                fix="give the nn.Module itself (return it from the factory before torch.jit.script)",
            )
        self.model = model
        self._example = torch.zeros(1, *input_shape)
        example = self._example
        self._ignore = tuple(ignore)
        layers, carriers = _modules_named(model, self._ignore)
        try:
            self._outputs, self._out_shapes, carried = _trace_outputs(model, example, carriers.values())
        except TrtpruneError:
            raise
        except Exception as e:
            raise model_failed(model, e, example.shape) from e
        self._ignored = list(self._outputs)
        self._ignored += layers
        self._ignored += _carried(model, carriers, carried)
        self._kept_whole: set[str] = set()  # groups already logged as unprunable
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
        with torch.no_grad():  # tensors a model keeps from its last call (anchors) must not hold the traced graph
            model.eval()(example)
        self._names = {m: n for n, m in model.named_modules()}
        self._order = {n: i for i, (n, _) in enumerate(model.named_modules())}
        # the most channels any layer has (a flatten before a linear: its inputs): no index mapping goes beyond
        self._widest = max(
            [
                getattr(m, a, 0) or 0
                for m in model.modules()
                for a in ("in_channels", "out_channels", "in_features", "out_features", "num_features")
            ]
            + [1]
        )

    def _tp_groups(self):
        """Torch-Pruning's groups that trtprune can prune, with their descriptions, one per conv or linear whose
        outputs no earlier group holds (as ``DependencyGraph.get_all_groups`` walks them, but each group on its own:
        a group Torch-Pruning cannot map, or whose mapping runs away, is kept whole - logged once - and the others
        go on)."""
        ignored = {id(m) for m in [*self._ignored, *self.dg.IGNORED_LAYERS_IN_TRACING]}
        visited: set[int] = set()
        with warnings.catch_warnings(), _bounded_index_mapping(self._widest):
            warnings.simplefilter("ignore")  # TP warns about every op it treats as element-wise
            for m in list(self.dg.module2node):
                if id(m) in ignored or id(m) in visited or not isinstance(m, (nn.Conv2d, nn.Linear)):
                    continue
                pruner = self.dg.get_pruner_of_module(m)
                if pruner is None or pruner.get_out_channels(m) is None:
                    continue
                try:
                    tp_group = self.dg.get_pruning_group(
                        m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m)))
                    )
                    outs = [d.target.module for d, _ in tp_group if self.dg.is_out_channel_pruning_fn(d.handler)]
                    visited.update(id(o) for o in outs)
                    if any(id(o) in ignored for o in outs):
                        continue
                    yield tp_group, self._describe(tp_group)
                except _Unsupported as e:
                    self._keep_whole(self._names[m], str(e))
                except Exception as e:  # anything Torch-Pruning raises about one group: that group is kept whole
                    visited.add(id(m))
                    first = (str(e).splitlines() or [""])[0]
                    self._keep_whole(self._names[m], f"Torch-Pruning cannot group it: {type(e).__name__}: {first}")

    def _keep_whole(self, root: str, why: str) -> None:
        if root not in self._kept_whole:
            self._kept_whole.add(root)
            log.info("%-24s | kept whole: %s", root, why)

    def _describe(self, group) -> ChannelGroup:
        channels = len(group[0].idxs)
        producers, consumers, fan, multiple = set(), set(), {}, 1
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, tp.ops._SplitOp):
                _check_split(dep.target)
            if not isinstance(module, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, ChannelPadShortcut)):
                continue
            name = self._names[module]
            out = self.dg.is_out_channel_pruning_fn(dep.handler)
            _check_indices(module, name, out, idxs)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                continue
            if out:
                producers.add(name)
            elif self.dg.is_in_channel_pruning_fn(dep.handler):
                consumers.add(name)
                fan[name] = fan.get(name, 0) + len(idxs)
            if _is_grouped(module):
                width = module.out_channels if out else module.in_channels
                if len(idxs) != width:
                    raise _Unsupported(
                        f"'{name}' (a conv in {module.groups} groups) {'makes' if out else 'reads'} "
                        f"{len(idxs)} of its {width} channels from this group"
                    )
                multiple = math.lcm(multiple, module.groups)
        key = self._order.__getitem__
        self_fed = tuple(sorted((n for n in producers & consumers if not _is_depthwise(self._module(n))), key=key))
        producers = tuple(sorted(producers, key=key))
        consumers = tuple(sorted(consumers - set(producers), key=key))
        fan_in = tuple(fan[n] // channels for n in consumers)
        fan_in = fan_in if any(f != 1 for f in fan_in) else ()
        return ChannelGroup(producers[0], channels, producers, consumers, multiple, fan_in, self_fed)

    def _module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def groups(self) -> list[ChannelGroup]:
        """Every prunable channel group, in module order of its name."""
        found = [info for _, info in self._tp_groups()]
        if not found and self._ignore:
            said = " ".join(n or repr(n) for n in self._ignore)
            raise TrtpruneError(
                f"--ignore {said} keeps every channel group of the model whole",
                why="the modules it names hold (or feed) every prunable layer"
                + (" ('' is the whole model)" if "" in self._ignore else "")
                + ": there would be nothing left to prune",
                fix="ignore fewer modules (trtprune groups without --ignore lists the groups and their layers)",
            )
        if not found:
            raise TrtpruneError(
                "the model has no prunable channel groups",
                why="trtprune prunes the channels of Conv2d layers and of Linear layers before the classifier; "
                "the output layer is kept whole, and this model has nothing else",
                fix="give a model with convolutions (or hidden linear layers), e.g. --model resnet20",
            )
        return sorted(found, key=lambda g: self._order[g.name])

    def scores(self, importance: str = "l1", batches=None, loss=None) -> dict[str, np.ndarray]:
        """One importance score per channel of every group, before any pruning (see trtprune.pruning.importance).

        Criteria that need gradients take them from ``batches`` (a few (x, y) training batches) and ``loss``
        (the task's, ``loss(outputs, targets)``; None: cross-entropy).
        """

        criterion = get_criterion(importance)
        if criterion.needs_data and batches is None:
            raise TrtpruneError(
                f"importance '{importance}' needs training data", fix="give the data (--data), or use l1, l2 or bn"
            )
        if criterion.needs_data and not batches:
            raise TrtpruneError(
                f"importance '{importance}' needs training data, and the training data holds no images",
                fix="give a training set (or loader) with at least one batch, or use l1, l2 or bn",
            )
        scorer = criterion.scorer(self.model, batches, loss)
        out = {}
        for tp_group, info in self._tp_groups():
            out[info.name] = _score(scorer, tp_group, info).detach().cpu().numpy().astype(np.float64)
        criterion.done(self.model)
        return out

    def _kept_by_ignore(self, names: list[str]) -> list[str]:
        """Those of ``names`` that are layers of the model that ``ignore`` keeps whole."""
        ignored = {id(m) for m in self._ignored if m not in self._outputs}
        modules = dict(self.model.named_modules())
        return [n for n in names if n in modules and id(modules[n]) in ignored]

    def check_plan(self, plan: Mapping[str, int], complete: bool = False) -> None:
        """That ``plan`` names only groups of the model and, if ``complete``, every one of them."""
        current = {g.name: g for g in self.groups()}
        unknown = sorted(set(plan) - set(current))
        kept = self._kept_by_ignore(unknown)
        if kept:
            raise TrtpruneError(
                f"--ignore {' '.join(self._ignore)} keeps whole the group(s) {', '.join(kept[:5])}, which the plan "
                "prunes",
                why="the plan gives those groups a channel count, and --ignore keeps their channels whole: the two "
                "conflict",
                fix="leave --ignore out to prune as the plan says (a plan keeps the modules it was searched with "
                "whole), or search a plan again with this --ignore",
            )
        if unknown:
            raise TrtpruneError(
                f"the plan names groups the model does not have: {', '.join(unknown[:5])}",
                why=f"the model's groups are {', '.join(list(current)[:8])}{' ...' if len(current) > 8 else ''}",
                fix="make the plan for this model (trtprune groups lists them)",
            )
        absent = [name for name in current if name not in plan]
        if complete and absent:
            raise TrtpruneError(
                f"the plan gives no channel count for group(s) of the model: {', '.join(absent[:5])}"
                + (f" and {len(absent) - 5} more" if len(absent) > 5 else ""),
                why="a plan names every group of the model it was made for; a group left out would be kept whole "
                "without a word",
                fix="make the plan for this model (trtprune search), or give the group its full count to keep it",
            )

    def prune_to(
        self, plan: Mapping[str, int], importance: str = "l1", scores: Mapping | None = None, complete: bool = False
    ) -> None:
        """Keep ``plan[name]`` channels of each named group, dropping the least important ones (by
        ``scores`` from :meth:`scores` if given, else by the ``importance`` criterion). A group the plan does not
        name keeps its channels, unless ``complete`` (a :class:`Plan`: it names every group): then it is an error."""
        scorer = None
        if scores is None:
            criterion = get_criterion(importance)
            if criterion.needs_data:  # scored once, from batches: the caller passes scores()
                raise TrtpruneError(f"importance '{importance}' needs training batches: pass scores=pruner.scores(...)")
            scorer = criterion.scorer(self.model, None)
        todo = dict(plan)
        self.check_plan(todo, complete)
        for tp_group, info in self._tp_groups():  # lazily, as each prune changes the graph
            if info.name not in todo:
                continue
            keep = int(todo.pop(info.name))
            if not 1 <= keep <= info.channels or keep % info.multiple:
                raise TrtpruneError(
                    f"plan keeps {keep} channels of group '{info.name}', which has {info.channels}",
                    why=f"a multiple of {info.multiple} (it feeds or leaves a conv in {info.multiple} groups)"
                    if info.multiple > 1
                    else "",
                    fix=f"keep between {info.multiple} and {info.channels}"
                    + (f", a multiple of {info.multiple}" if info.multiple > 1 else ""),
                )
            if keep == info.channels:
                continue
            group_scores = torch.as_tensor(scores[info.name]) if scores is not None else _score(scorer, tp_group, info)
            drop = _drop(group_scores, info.channels - keep, info.multiple)
            root = tp_group[0].dep
            try:
                self.dg.get_pruning_group(root.target.module, root.handler, drop).prune()
            except Exception as e:
                raise TrtpruneError(
                    f"Torch-Pruning could not prune group '{info.name}' (layers {', '.join(info.producers)} -> "
                    f"{', '.join(info.consumers)}): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                    why="a layer of this group is a structure trtprune does not prune",
                    fix=f"keep it whole: --ignore {info.name}",
                ) from e
            log.debug("%-24s | %4d -> %4d ch", info.name, info.channels, keep)
        assert not todo, f"groups left unpruned: {todo}"
        _, out_shapes, _ = _trace_outputs(self.model, self._example)
        changed = [f"{n} {list(a)} -> {list(b)}" for (n, a), (_, b) in zip(self._out_shapes, out_shapes) if a != b]
        if changed or len(out_shapes) != len(self._out_shapes):
            raise TrtpruneError(
                f"pruning changed the model's outputs: {', '.join(changed) or 'their number'}",
                why="the layers kept whole are those from which an output is reached without another conv or linear "
                "in between; an output computed otherwise (a reshape of an inner layer's channels) changed with them",
                fix="keep the layers that make that output whole with --ignore (module names as in "
                "model.named_modules())",
            )

    def kept_whole(self) -> list[str]:
        """Groups (by their first producer) that cannot be pruned and are left whole."""
        self.groups()
        return sorted(self._kept_whole, key=self._order.__getitem__)

    def history(self) -> list:
        """Replayable record of every pruning step: ``[module_name, is_out_channels, indices]``."""
        return [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in self.dg.pruning_history()]


def _score(scorer, tp_group, info: ChannelGroup) -> torch.Tensor:
    """The criterion's scores of one group; a criterion with nothing to score in it (``bn`` on a group without
    BatchNorm, e.g. a squeeze-excitation's hidden Linear) falls back to the L1 magnitude, saying so."""
    out = scorer(tp_group)
    if out is None:
        log.info("%-24s | no score by this criterion here (no BatchNorm?): ranked by l1 magnitude", info.name)
        out = get_criterion("l1").scorer(None, None)(tp_group)
    return out


def _drop(scores: torch.Tensor, n: int, blocks: int = 1) -> list[int]:
    """The ``n`` least important channels; with ``blocks`` > 1 the same positions of every block (scores
    summed over the blocks), ``n / blocks`` per block."""
    if blocks == 1:
        return sorted(torch.argsort(scores, stable=True)[:n].tolist())
    per_block = scores.reshape(blocks, -1)
    positions = torch.argsort(per_block.sum(0), stable=True)[: n // blocks]
    width = per_block.shape[1]
    return sorted(int(b * width + p) for b in range(blocks) for p in positions.tolist())


def _modules_named(model: nn.Module, names: Iterable[str]) -> tuple[list[nn.Module], dict[str, nn.Module]]:
    """The convs and linears named (or inside a container named) in ``names``, and the named modules that hold no
    conv or linear (a BatchNorm, a ReLU: the channels they carry are kept, see :func:`_carried`) by name; an
    unknown name is an error."""
    modules = dict(model.named_modules())
    out, carriers = [], {}
    for name in names:
        if name not in modules:
            prunable = [n for n, m in modules.items() if isinstance(m, (nn.Conv2d, nn.Linear))]
            raise TrtpruneError(
                f"--ignore names '{name}', which is not a module of the model",
                why=f"its convs and linears are {', '.join(prunable[:12])}{' ...' if len(prunable) > 12 else ''}",
                fix="give module names as in model.named_modules() (a container ignores every layer in it)",
            )
        found = [m for m in modules[name].modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not found:
            carriers[name] = modules[name]
        out += [m for m in found if m not in out]
    return out, carriers


_SAID: set[str] = set()


def _carried(model: nn.Module, carriers: Mapping[str, nn.Module], carried: Mapping) -> list[nn.Module]:
    """The convs and linears whose output channels the ignored ``carriers`` carry (found by
    :func:`_trace_outputs`), said once each; a carrier that does not run, or that no such layer feeds, is an
    error: ignoring it would keep nothing."""
    names = {m: n for n, m in model.named_modules()}
    out = []
    for name, module in carriers.items():
        layers = carried.get(module)
        kind = type(module).__name__
        if layers is None:
            raise TrtpruneError(
                f"--ignore names '{name}' (a {kind}), which does not run in the model's forward pass",
                why="--ignore keeps the channels that pass through a module; none pass through this one",
                fix="name a convolution or linear layer, a container of them, or a BatchNorm/activation after one",
            )
        if not layers:
            raise TrtpruneError(
                f"--ignore names '{name}' (a {kind}), which no convolution or linear layer feeds",
                why="it reads the model's input directly: it carries no channels trtprune prunes",
                fix="leave it out of --ignore",
            )
        said = f"--ignore {name} (a {kind}): keeps the output channels of {', '.join(names[m] for m in layers)}"
        if said not in _SAID:  # once: the model is traced again by every stage
            _SAID.add(said)
            log.info("%s", said)
        out += [m for m in layers if m not in out]
    return out


def replay(model: nn.Module, input_shape: tuple[int, ...], history: list) -> nn.Module:
    """Apply a recorded pruning history to a freshly built dense model (in place): the blocks it removed, then
    its channels."""
    removed, history = split_history(history)
    remove_blocks(model, removed)
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
        step = math.lcm(round_to, g.multiple)  # a grouped conv's blocks stay equal
        if g.multiple > 1 and g.channels % step:
            step = g.multiple  # round_to does not fit this group: its own multiple only
        keep = g.channels * (1.0 - ratio)
        keep = max(step, step * math.floor(keep / step + 0.5))  # nearest multiple
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
    ignore: Iterable[str] = (),
) -> tuple[Plan, list]:
    """Prune every group of ``model`` by ``ratio`` (in place), by ``scores`` (from :meth:`GroupPruner.scores`)
    if given, else by a data-free ``importance``; modules in ``ignore`` keep their outputs. Returns the plan
    (named ``model_name``) and the history."""
    pruner = GroupPruner(model, input_shape, ignore)
    plan = uniform_plan_of(pruner.groups(), ratio, round_to, model_name, importance=importance)
    pruner.prune_to(plan.keep_channels, importance, scores=scores)
    return plan, pruner.history()
