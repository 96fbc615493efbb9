"""Prunable layers as the engine sees them: signatures read from the exported ONNX, and micro-models.

A *signature* holds everything about a layer that changes its latency except its channel counts: op,
kernel, stride, padding, dilation, groups (plain, grouped or depthwise), input H x W, batch, precision and
the ops that follow it (bias from the folded BN, a residual add, an activation: ReLU and ReLU6 fuse into
the conv; SiLU, Hardswish, GELU and Sigmoid run after it, and are timed with it all the same). The LUT is keyed by
signature + (Cin, Cout), so identical layers - within a model, across models and runs - are measured
once. A micro-model is the single layer as a tiny ONNX graph (Conv + bias [+ Add] [+ activation]),
which ONNX Runtime fuses exactly as it fuses the layer inside the whole network. A module called more
than once (the same weights) is one layer per call: each call has its own input size and latency.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

# How each activation appears after a conv in the exported graph. SiLU is exported as x * Sigmoid(x) (two
# consumers of the conv's output), GELU as Gelu (opset 20), Hardswish as HardSwish.
ACTIVATIONS = ("none", "relu", "relu6", "sigmoid", "silu", "hardswish", "gelu")
_SINGLE_OP_ACTIVATIONS = {
    "Relu": "relu",
    "Clip": "relu6",
    "Sigmoid": "sigmoid",
    "HardSwish": "hardswish",
    "Gelu": "gelu",
}


@dataclass(frozen=True)
class Signature:
    op: str  # "conv" or "gemm"
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    depthwise: bool = False  # groups == Cin == Cout; then cin == cout always
    hw: tuple[int, int] = (1, 1)  # input height and width
    batch: int = 1
    precision: str = "fp32"
    residual: bool = False  # an Add of another tensor fused after the conv
    act: str = "none"  # activation after the conv (and the add), one of ACTIVATIONS
    groups: int = 1  # a grouped (not depthwise) conv: Cin and Cout stay multiples of it

    def key(self) -> str:
        """A stable text form, used as the LUT key."""
        j = lambda t: "x".join(map(str, t))  # noqa: E731
        return (
            f"{self.op}|k{j(self.kernel)}|s{j(self.stride)}|p{j(self.pads)}|d{j(self.dilation)}|"
            f"{'dw' if self.depthwise else f'g{self.groups}'}|hw{j(self.hw)}|b{self.batch}|{self.precision}|"
            f"{'res' if self.residual else 'nores'}|{self.act}"
        )

    def out_hw(self) -> tuple[int, int]:
        (h, w), (kh, kw), (sh, sw), (dh, dw) = self.hw, self.kernel, self.stride, self.dilation
        pt, pl, pb, pr = self.pads
        return ((h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1)


def point(sig: Signature, cin: int, cout: int) -> tuple[Signature, int, int]:
    """A layer at (cin, cout) as a LUT point: a grouped conv pruned to one channel per group is depthwise,
    as the exported model then says."""
    if sig.groups > 1 and cin == cout == sig.groups:
        sig = replace(sig, groups=1, depthwise=True)
    return sig, cin, cout


@dataclass(frozen=True)
class Layer:
    """One prunable layer of a model: its module name, signature and current channel counts."""

    name: str  # the torch module, e.g. "layer1.0.conv1"
    signature: Signature
    cin: int
    cout: int
    call: int = 0  # the module's n-th call in the graph (a module applied twice is two layers)

    @property
    def key(self) -> str:
        """The layer's key in :func:`layers_of`: the module name, ``#n`` added for its n-th call (n >= 1)."""
        return self.name if self.call == 0 else f"{self.name}#{self.call}"


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.ints else (a.i if a.type == a.INT else default)
    return default


def _is_silu(output: str, nxt: list) -> bool:
    """``y = x * Sigmoid(x)``: the two consumers of ``x`` are a Sigmoid and a Mul of ``x`` by its output."""
    if len(nxt) != 2:
        return False
    sig = next((n for n in nxt if n.op_type == "Sigmoid"), None)
    mul = next((n for n in nxt if n.op_type == "Mul"), None)
    return sig is not None and mul is not None and sorted(mul.input) == sorted([output, sig.output[0]])


def layers_of(proto) -> dict[str, Layer]:
    """Every Conv and Gemm of an exported model, keyed by torch module name (from the weight's name);
    a module's second and later calls are keyed ``name#1``, ``name#2``... (see :attr:`Layer.key`)."""
    import onnx

    proto = onnx.shape_inference.infer_shapes(proto)
    shapes = {}
    for v in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = tuple(d.dim_value for d in dims)
    inits = {i.name: tuple(i.dims) for i in proto.graph.initializer}
    consumers: dict[str, list] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def follower(output: str, allow_add: bool = True) -> tuple[bool, str]:
        nxt = consumers.get(output, [])
        if _is_silu(output, nxt):
            return False, "silu"
        if len(nxt) != 1:
            return False, "none"
        n = nxt[0]
        if n.op_type in _SINGLE_OP_ACTIVATIONS:
            return False, _SINGLE_OP_ACTIVATIONS[n.op_type]
        if n.op_type == "Add" and allow_add:
            return True, follower(n.output[0], allow_add=False)[1]
        return False, "none"

    layers: dict[str, Layer] = {}
    calls: dict[str, int] = {}
    for n in proto.graph.node:
        if n.op_type not in ("Conv", "Gemm") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        name = n.input[1].removesuffix(".weight")
        w = inits[n.input[1]]
        x = shapes.get(n.input[0], ())
        if n.op_type == "Conv":
            groups = _attr(n, "group", 1)
            kernel = tuple(_attr(n, "kernel_shape", list(w[2:])))
            cout, cin = w[0], w[1] * groups
            residual, act = follower(n.output[0])
            sig = Signature(
                "conv",
                kernel,
                tuple(_attr(n, "strides", [1, 1])),
                tuple(_attr(n, "pads", [0, 0, 0, 0])),
                tuple(_attr(n, "dilations", [1, 1])),
                depthwise=groups > 1 and groups == cin == cout,
                hw=tuple(x[2:4]),
                batch=x[0],
                residual=residual,
                act=act,
            )
            if groups > 1 and not sig.depthwise:
                sig = replace(sig, groups=groups)
        else:
            trans_b = _attr(n, "transB", 0)
            cout, cin = (w[0], w[1]) if trans_b else (w[1], w[0])
            sig = Signature("gemm", batch=x[0] if x else 1)
        layer = Layer(name, sig, int(cin), int(cout), calls.get(name, 0))
        calls[name] = layer.call + 1
        layers[layer.key] = layer
    return layers


def micro_model(sig: Signature, cin: int, cout: int, seed: int = 0, qdq: str | None = None) -> bytes:
    """The single layer at (cin, cout) as a serialised ONNX model with static shapes, in the Q/DQ form of an int8
    device when ``qdq`` names it (``Device.int8_form``): "tensorrt" - TensorRT's explicit-quantization form
    (int8 TensorRT devices build nothing else): symmetric int8 Q/DQ on the input and the output, int8 weights
    with per-output-channel scales through DequantizeLinear, scales set from the random weights and a unit
    input range; "ort" - ONNX Runtime's CPU form, made by the quantizer that makes the delivered model
    (:func:`trtprune.deploy.quantize.qdq_micro`). Scales do not change which kernel runs nor how fast."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    b = sig.batch
    if sig.op == "gemm":
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, cin])]
        w = numpy_helper.from_array(rng.standard_normal((cout, cin)).astype(np.float32), "w")
        bias = numpy_helper.from_array(np.zeros(cout, np.float32), "bias")
        nodes = [helper.make_node("Gemm", ["x", "w", "bias"], ["y"], transB=1)]
        out_shape = [b, cout]
        inits = [w, bias]
    else:
        if sig.depthwise:
            assert cin == cout, "a depthwise layer has cin == cout"
        groups = cin if sig.depthwise else sig.groups
        assert cin % groups == 0 and cout % groups == 0, f"{cin}, {cout} channels in {groups} groups"
        h, wd = sig.hw
        oh, ow = sig.out_hw()
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [b, cin, h, wd])]
        weight = rng.standard_normal((cout, cin // groups, *sig.kernel)).astype(np.float32) * 0.1
        inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.zeros(cout, np.float32), "bias")]
        nodes = [
            helper.make_node(
                "Conv",
                ["x", "w", "bias"],
                ["conv"],
                kernel_shape=list(sig.kernel),
                strides=list(sig.stride),
                pads=list(sig.pads),
                dilations=list(sig.dilation),
                group=groups,
            )
        ]
        last = "conv"
        if sig.residual:
            inputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, [b, cout, oh, ow]))
            nodes.append(helper.make_node("Add", [last, "r"], ["sum"]))
            last = "sum"
        if sig.act == "relu":
            nodes.append(helper.make_node("Relu", [last], ["act"]))
            last = "act"
        elif sig.act == "relu6":
            inits += [
                numpy_helper.from_array(np.array(0, np.float32), "lo"),
                numpy_helper.from_array(np.array(6, np.float32), "hi"),
            ]
            nodes.append(helper.make_node("Clip", [last, "lo", "hi"], ["act"]))
            last = "act"
        elif sig.act == "silu":  # as exported: x * Sigmoid(x)
            nodes.append(helper.make_node("Sigmoid", [last], ["gate"]))
            nodes.append(helper.make_node("Mul", [last, "gate"], ["act"]))
            last = "act"
        elif sig.act in ("sigmoid", "hardswish", "gelu"):
            op = {"sigmoid": "Sigmoid", "hardswish": "HardSwish", "gelu": "Gelu"}[sig.act]
            nodes.append(helper.make_node(op, [last], ["act"]))
            last = "act"
        nodes.append(helper.make_node("Identity", [last], ["y"]))
        out_shape = [b, cout, oh, ow]
    if qdq not in (None, "tensorrt", "ort"):
        raise ValueError(f"unknown Q/DQ form {qdq!r}")
    if qdq == "tensorrt":
        nodes, inits = _quantized(nodes, inits)
    graph = helper.make_graph(
        nodes, "layer", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)], initializer=inits
    )
    opset = 20 if sig.act == "gelu" else 17  # Gelu is an ONNX op from opset 20
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="trtprune")
    model.ir_version = 9 if opset >= 20 else 8
    if qdq == "ort":
        from trtprune.deploy.quantize import qdq_micro

        return qdq_micro(model.SerializeToString(), "ort")
    return model.SerializeToString()


def _quantized(nodes: list, inits: list) -> tuple[list, list]:
    """``nodes`` (one Conv or Gemm first, ``x`` in and ``y`` out) with symmetric int8 Q/DQ around them."""
    from onnx import helper, numpy_helper

    w_init = next(i for i in inits if i.name == "w")
    w = numpy_helper.to_array(w_init)
    w_scale = np.maximum(np.abs(w.reshape(w.shape[0], -1)).max(1), 1e-8).astype(np.float32) / 127
    shape = (-1,) + (1,) * (w.ndim - 1)
    w_q = np.clip(np.round(w / w_scale.reshape(shape)), -127, 127).astype(np.int8)
    inits = [i for i in inits if i.name != "w"] + [
        numpy_helper.from_array(w_q, "w_q"),
        numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(w.shape[0], np.int8), "w_zero"),
        numpy_helper.from_array(np.array(1 / 127, np.float32), "a_scale"),
        numpy_helper.from_array(np.array(0, np.int8), "a_zero"),
    ]
    first = nodes[0]
    first.input[0], first.input[1] = "x_dq", "w_dq"
    nodes[-1].output[0] = "y_f"
    return [
        helper.make_node("QuantizeLinear", ["x", "a_scale", "a_zero"], ["x_q"]),
        helper.make_node("DequantizeLinear", ["x_q", "a_scale", "a_zero"], ["x_dq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w_dq"], axis=0),
        *nodes,
        helper.make_node("QuantizeLinear", ["y_f", "a_scale", "a_zero"], ["y_q"]),
        helper.make_node("DequantizeLinear", ["y_q", "a_scale", "a_zero"], ["y"]),
    ], inits


def macs(sig: Signature, cin: int, cout: int) -> int:
    """Multiply-accumulates of one layer at (cin, cout), for one image."""
    if sig.op == "gemm":
        return cin * cout
    oh, ow = sig.out_hw()
    per_out = sig.kernel[0] * sig.kernel[1] * (1 if sig.depthwise else cin // sig.groups)
    return per_out * cout * oh * ow
