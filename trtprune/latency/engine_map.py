"""From a TensorRT engine's per-layer profile to the model's prunable channel groups.

TensorRT fuses ONNX nodes into engine layers (``conv1 + relu1``, pointwise fusions, myelin subgraphs) and
adds its own (reformats, copies). ``--exportLayerInfo`` names the ONNX nodes of each engine layer (see
:func:`trtprune.latency.trtexec.layer_onnx_nodes`); an ONNX Conv/Gemm node names its torch module through its
weight (``layer1.0.conv1.weight``), and the module belongs to channel groups as a producer (its output
channels) or a consumer (its input channels). A group's time is the time of the engine layers that hold
its producers or consumers - the same sum the latency table makes of single layers - and an engine layer
holding several prunable convs is split evenly among them. Time in layers with no prunable conv
(reformats, pooling, the classifier's glue) is reported as ``other``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class GroupTime:
    group: str
    ms: float  # per inference (the profile's average), producers and consumers together
    engine_layers: tuple[str, ...]


def module_of_nodes(proto) -> dict[str, str]:
    """ONNX node name -> torch module name, for every Conv/Gemm whose weight is an initializer."""
    inits = {i.name for i in proto.graph.initializer}
    return {
        n.name: n.input[1].removesuffix(".weight")
        for n in proto.graph.node
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 1 and n.input[1] in inits
    }


def group_times(layer_times, engine_layers, proto, groups: Iterable) -> tuple[list[GroupTime], float, list[str]]:
    """``layer_times`` (``LayerTime`` from ``--exportProfile``) joined by name with ``engine_layers``
    (``EngineLayer`` from ``--exportLayerInfo``); ``groups``: ``ChannelGroup`` (name, producers, consumers).
    Returns the time per group, the time in no group ("other"), and engine layers of the profile that the
    layer info does not know (reported, never guessed)."""
    modules = module_of_nodes(proto)
    info = {e.name: e for e in engine_layers}
    per_module: dict[str, float] = {}
    layers_of_module: dict[str, list[str]] = {}
    other, unknown = 0.0, []
    for lt in layer_times:
        layer = info.get(lt.name)
        if layer is None:
            unknown.append(lt.name)
            other += lt.average_ms
            continue
        mods = sorted({modules[n] for n in layer.onnx_nodes if n in modules})
        if not mods:
            other += lt.average_ms
            continue
        for m in mods:
            per_module[m] = per_module.get(m, 0.0) + lt.average_ms / len(mods)
            layers_of_module.setdefault(m, []).append(lt.name)
    out = []
    for g in groups:
        members = [*g.producers, *g.consumers]
        ms = sum(per_module.get(m, 0.0) for m in members)
        names = tuple(dict.fromkeys(n for m in members for n in layers_of_module.get(m, [])))
        out.append(GroupTime(g.name, ms, names))
    return out, other, unknown
