"""From a TensorRT engine's per-layer profile to the model's prunable channel groups.

TensorRT fuses ONNX nodes into engine layers (``conv1 + relu1``, pointwise fusions, myelin subgraphs) and
adds its own (reformats, copies). ``--exportLayerInfo`` names the ONNX nodes of each engine layer (see
:func:`trtprune.latency.trtexec.layer_onnx_nodes`); an ONNX Conv/Gemm node names its torch module through its
weight, and the module belongs to channel groups as a producer (its output channels) or a consumer (its
input channels). A group's time is the time of the engine layers that hold its producers or consumers - the
same sum the latency table makes of single layers.

* **Weights**: a Conv's weight is an initializer (``layer1.0.conv1.weight``), or reaches it through
  ``DequantizeLinear`` / ``QuantizeLinear`` / ``Cast`` / ``Identity`` (Q/DQ models: ONNX Runtime's
  quantizer stores ``layer1.0.conv1.weight_quantized``; QAT exports quantize the float weight in the graph;
  fp16-typed models cast it): the chain is followed back to the initializer, whose name less ``_quantized``
  and ``.weight`` is the module.
* **Fused regions**: ``{ForeignNode[first...last]}`` (a myelin or DLA region) names only its two ends in
  the layer name; it stands for every node from ``first`` to ``last`` in the graph's (topological) order.
  TensorRT 10's ``Metadata`` lists the nodes themselves and is used as it is.
* **Splitting**: an engine layer that holds several prunable convs (a fused region) is split among them
  in proportion to their multiply-accumulates (from the ONNX graph's shapes), the work each one brings.

Time in layers with no prunable conv (reformats, pooling, the classifier's glue) is reported as ``other``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

_PASS_THROUGH = ("DequantizeLinear", "QuantizeLinear", "Cast", "Identity")
_FOREIGN = re.compile(r"\{ForeignNode\[(.*?)\.\.\.(.*?)\]\}", re.S)


@dataclass(frozen=True)
class GroupTime:
    group: str
    ms: float  # per inference (the profile's average), producers and consumers together
    engine_layers: tuple[str, ...]


def _module_name(initializer: str) -> str:
    return initializer.removesuffix("_quantized").removesuffix(".weight")


def module_of_nodes(proto) -> dict[str, str]:
    """ONNX node name -> torch module name, for every Conv/Gemm whose weight is an initializer, directly or
    through DequantizeLinear / QuantizeLinear / Cast / Identity."""
    inits = {i.name for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    out = {}
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2:
            continue
        tensor, hops = n.input[1], 0
        while tensor not in inits and tensor in producer and producer[tensor].op_type in _PASS_THROUGH and hops < 4:
            tensor, hops = producer[tensor].input[0], hops + 1
        if tensor in inits:
            out[n.name] = _module_name(tensor)
    return out


def node_macs(proto) -> dict[str, float]:
    """Multiply-accumulates per inference of each Conv/Gemm node (from shape inference), by node name."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
    }
    weight_dims = {_module_name(i.name): list(i.dims) for i in proto.graph.initializer}
    modules = module_of_nodes(proto)
    out = {}
    for n in proto.graph.node:
        if n.name not in modules:
            continue
        w, y = weight_dims.get(modules[n.name]), shapes.get(n.output[0])
        if not w or not y or any(d <= 0 for d in y):
            continue
        out[n.name] = float(math.prod(y) * math.prod(w[1:])) if n.op_type == "Conv" else float(y[0] * w[0] * w[1])
    return out


def expand_foreign(layer_name: str, nodes: tuple[str, ...], order: dict[str, int], names: list[str]) -> tuple:
    """``nodes`` with each ``{ForeignNode[first...last]}`` of ``layer_name`` widened to every graph node from
    ``first`` to ``last`` in topological order (``order``: node name -> index in ``names``)."""
    out = list(nodes)
    for first, last in _FOREIGN.findall(layer_name):
        a, b = order.get(first.strip()), order.get(last.strip())
        if a is not None and b is not None and a <= b:
            out += names[a : b + 1]
    return tuple(dict.fromkeys(out))


def group_times(layer_times, engine_layers, proto, groups: Iterable) -> tuple[list[GroupTime], float, list[str]]:
    """``layer_times`` (``LayerTime`` from ``--exportProfile``) joined by name with ``engine_layers``
    (``EngineLayer`` from ``--exportLayerInfo``); ``groups``: ``ChannelGroup`` (name, producers, consumers).
    Returns the time per group, the time in no group ("other"), and engine layers of the profile that the
    layer info does not know (reported, never guessed)."""
    modules = module_of_nodes(proto)
    macs = node_macs(proto)
    names = [n.name for n in proto.graph.node]
    order = {n: i for i, n in enumerate(names)}
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
        nodes = expand_foreign(layer.name, tuple(layer.onnx_nodes), order, names)
        convs = [n for n in nodes if n in modules]
        if not convs:
            other += lt.average_ms
            continue
        work = {n: macs.get(n, 0.0) for n in convs}
        total = sum(work.values())
        for n in convs:
            share = work[n] / total if total > 0 else 1.0 / len(convs)
            m = modules[n]
            per_module[m] = per_module.get(m, 0.0) + lt.average_ms * share
            layers_of_module.setdefault(m, []).append(lt.name)
    out = []
    for g in groups:
        members = [*g.producers, *g.consumers]
        ms = sum(per_module.get(m, 0.0) for m in members)
        names_g = tuple(dict.fromkeys(n for m in members for n in layers_of_module.get(m, [])))
        out.append(GroupTime(g.name, ms, names_g))
    return out, other, unknown
