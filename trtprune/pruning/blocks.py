"""Depth pruning: residual blocks removed whole.

A block is *removable* when the network without it is the same network with the block's residual branch
set to zero: the module is called once, takes one tensor and returns a tensor of the same shape, holds a
convolution, and ends by adding its own input back (its output is ``add(input, branch)``, perhaps through an
activation; the input reaches the add through parameter-free modules only). Removing it replaces the module
by ``nn.Identity``.

Why a pruner of channels wants this: on an engine whose layers each cost a fixed time besides their
arithmetic (ONNX Runtime on a CPU at batch 1; kernel launches on a GPU), thinning channels cannot remove that
fixed time, removing a block does (Elkerdawy et al., "To filter prune, or to layer prune, that is the
question", ACCV 2020). Measured here (docs/benchmarks.md, "Depth"): the published ResNet-56 on ``cpu`` with
13 of its 27 blocks removed runs at 0.47x with 65.9 % proxy top-1, where the best channel-only plan at 0.5x
scores 41.7 %.

A removal is recorded in the pruning history as ``{"remove_block": name}`` before the channel pruning that
follows it, so :func:`trtprune.pruning.prune.replay` rebuilds a pruned checkpoint from the dense model.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import fx, nn

from trtprune.errors import TrtpruneError

log = logging.getLogger(__name__)

REMOVE = "remove_block"  # the history entry's key
_ADDS = {operator.add, operator.iadd, torch.add}


@dataclass(frozen=True)
class Block:
    """A removable block: its module name and a signature shared by blocks that are the same layers on the same
    input (so they take the same time on an engine)."""

    name: str
    signature: str


def _holds_conv(module: nn.Module) -> bool:
    return any(isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) for m in module.modules())


def _adds_its_input(module: nn.Module) -> bool:
    """True when ``module``'s forward adds its input back (traced with torch.fx; untraceable: False)."""
    try:
        graph = fx.symbolic_trace(module).graph
    except Exception as e:  # control flow, non-tensor arguments ...: not provably residual, so not removable
        log.debug("%s is not traceable (%s: %s): not a removable block", type(module).__name__, type(e).__name__, e)
        return False
    inputs = [n for n in graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        return False
    modules = dict(module.named_modules())

    def is_input(node) -> bool:
        while isinstance(node, fx.Node):
            if node.op == "placeholder":
                return True
            if node.op == "call_module" and not any(True for _ in modules[node.target].parameters()):
                node = node.args[0] if node.args else None  # an identity-like shortcut
                continue
            return False
        return False

    def parameterless(node) -> bool:  # an activation or another op without weights, on one tensor
        if node.op == "call_module":
            return not any(True for _ in modules[node.target].parameters())
        return node.op in ("call_function", "call_method") and not _is_add(node) and len(node.args) >= 1

    out = next(n for n in graph.nodes if n.op == "output").args[0]
    while isinstance(out, fx.Node) and not _is_add(out) and parameterless(out):
        out = out.args[0]  # the block ends in add(input, branch), perhaps followed by an activation
    return isinstance(out, fx.Node) and _is_add(out) and any(is_input(a) for a in out.args[:2])


def _is_add(node) -> bool:
    return (node.op == "call_function" and node.target in _ADDS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def _signature(module: nn.Module, shape: tuple[int, ...]) -> str:
    layers = ",".join(f"{type(m).__name__}{tuple(p.shape)}" for m in module.modules() for p in m.parameters(False))
    return f"{type(module).__name__}@{'x'.join(map(str, shape[1:]))}[{layers}]"


def removable_blocks(model: nn.Module, input_shape: tuple[int, ...], ignore: Iterable[str] = ()) -> list[Block]:
    """The innermost removable blocks of ``model`` in module order (see the module's docstring); modules named in
    ``ignore`` (and everything inside them) are kept."""
    ignore = tuple(ignore)
    calls: dict[str, list] = {}
    hooks = []
    for name, module in model.named_modules():
        if name and _holds_conv(module):

            def hook(_m, args, out, name=name):
                ins = [a for a in args if isinstance(a, torch.Tensor)]
                calls.setdefault(name, []).append((len(args), ins[0].shape if len(ins) == 1 else None, out))

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    found: list[Block] = []
    for name, module in model.named_modules():
        if name not in calls or any(name == i or name.startswith(i + ".") for i in ignore):
            continue
        seen = calls[name]
        if len(seen) != 1:
            continue
        n_args, shape, out = seen[0]
        if n_args != 1 or shape is None or not isinstance(out, torch.Tensor) or out.shape != shape:
            continue
        if _adds_its_input(module):
            found.append(Block(name, _signature(module, tuple(shape))))
    # a container that is itself one residual block (a stage of one block) gives way to the block inside it
    return [b for b in found if not any(o.name.startswith(b.name + ".") for o in found)]


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def check_removable(model: nn.Module, input_shape: tuple[int, ...], names: Iterable[str]) -> None:
    """A plan's ``remove_blocks`` checked against the model before anything is removed: each a removable block
    (see the module's docstring) named once. Anything else would change what the network computes, or break it."""
    names = list(names)
    if not names:
        return
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TrtpruneError(
            f"the plan removes the block(s) {', '.join(twice)} twice",
            why="remove_blocks lists each residual block to remove once",
            fix="give each name once in the plan's remove_blocks",
        )
    removable = [b.name for b in removable_blocks(model, input_shape)]
    modules = dict(model.named_modules())
    for name in names:
        if name in removable:
            continue
        if name not in modules:
            why = "it is not a module of this model"
        elif any(r.startswith(name + ".") for r in removable):
            why = "it is a stage that holds blocks, not one block: removing it would cut the network apart"
        else:
            why = (
                f"it is a {type(modules[name]).__name__} that does not add its input to its output (a block that "
                "changes the shape, e.g. downsamples, or a single layer): removing it would break the network"
            )
        raise TrtpruneError(
            f"the plan's remove_blocks names '{name}', which is not a removable residual block",
            why=why,
            fix=f"remove_blocks takes only these blocks of the model: {', '.join(removable) or 'none'}; search the "
            "plan again (trtprune search) or edit remove_blocks",
        )


def remove_blocks(model: nn.Module, names: Iterable[str], input_shape: tuple[int, ...] | None = None) -> list[dict]:
    """Replace each named block of ``model`` by ``nn.Identity`` (in place); returns the history entries. With
    ``input_shape`` (a plan's blocks, from the user), each name is first checked to be a removable block."""
    if input_shape is not None:
        check_removable(model, input_shape, names)
    entries = []
    for name in names:
        try:
            model.get_submodule(name)
        except AttributeError as e:
            raise TrtpruneError(
                f"the plan removes the block '{name}', which is not a module of this model",
                fix="search the plan again for this model (trtprune search), or give the model it was searched for",
            ) from e
        _set(model, name, nn.Identity())
        entries.append({REMOVE: name})
    return entries


def split_history(history: list) -> tuple[list[str], list]:
    """(blocks removed, Torch-Pruning's channel history) of a recorded pruning history."""
    removed = [e[REMOVE] for e in history if isinstance(e, dict) and REMOVE in e]
    return removed, [e for e in history if not (isinstance(e, dict) and REMOVE in e)]
