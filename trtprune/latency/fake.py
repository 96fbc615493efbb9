"""A deterministic engine for tests: latency computed from the model's shapes, with ORT-like stairs.

Never measured, never reported: no device uses it, so the CLI cannot select it; tests build a
``Device(name, "fake")`` themselves. Each Conv costs its multiply-accumulates with output channels
padded to ``BLOCK``; input channels up to one block cost what they are, above it a multiple of 4 is
padded to ``BLOCK`` (the blocked kernel) and any other count runs a 25 % slower kernel (a dip). A Gemm
costs its MACs; every graph pays a fixed overhead per run. A grouped conv costs what a plain conv with its
per-group input count costs. A conv whose weights come through a DequantizeLinear (a Q/DQ model) runs the
"INT8 kernel": ``INT8_FACTOR`` of the cost, with input channels padded to multiples of ``INT8_GROUP``
(the groups of 4 that VNNI multiplies) instead of the fp32 rules.

Two knobs exist for fleet tests: ``TRTPRUNE_FAKE_HW`` in a process's environment names the "hardware"
in its key (a worker on another device), and the burst option ``delay_s`` makes each model take that
long to "time" (so a worker can be killed mid-batch).
"""

from __future__ import annotations

import math
import os
import time

import numpy as np

from trtprune.latency.base import Backend, Burst

BLOCK = 16
PER_MAC_MS = 2e-8  # 50 GMAC/s
PER_LAYER_MS = 0.002  # launching a layer
PER_GRAPH_MS = 0.010  # launching a graph
INT8_FACTOR = 0.5
INT8_GROUP = 4


def layer_ms(op: str, cin: int, cout: int, macs_per_io: int, int8: bool = False) -> float:
    if op == "gemm":
        return PER_LAYER_MS + PER_MAC_MS * cin * cout * macs_per_io
    if int8:
        padded = INT8_GROUP * math.ceil(cin / INT8_GROUP) * BLOCK * math.ceil(cout / BLOCK)
        return PER_LAYER_MS + INT8_FACTOR * PER_MAC_MS * padded * macs_per_io
    padded_out = BLOCK * math.ceil(cout / BLOCK)
    if cin <= BLOCK:
        eff_in = cin
    elif cin % 4 == 0:
        eff_in = BLOCK * math.ceil(cin / BLOCK)
    else:
        eff_in = 1.25 * cin
    return PER_LAYER_MS + PER_MAC_MS * eff_in * padded_out * macs_per_io


def model_ms(proto) -> float:
    """Latency of an ONNX model under the fake engine's rules."""
    import onnx

    proto = onnx.shape_inference.infer_shapes(proto)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]
    }
    inits = {i.name: list(i.dims) for i in proto.graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    total = PER_GRAPH_MS
    for n in proto.graph.node:
        int8 = n.op_type == "Conv" and dequantized.get(n.input[1]) in inits
        if int8:
            cout, cin_g, kh, kw = inits[dequantized[n.input[1]]]
            b, _, oh, ow = shapes[n.output[0]]
            total += layer_ms("conv", cin_g, cout, b * oh * ow * kh * kw, int8=True)
        elif n.op_type == "Conv" and n.input[1] in inits:
            cout, cin_g, kh, kw = inits[n.input[1]]
            groups = next((a.i for a in n.attribute if a.name == "group"), 1)
            b, _, oh, ow = shapes[n.output[0]]
            if groups > 1 and cin_g == 1:  # depthwise: per-channel work, no channel reduction
                total += PER_LAYER_MS + PER_MAC_MS * BLOCK * math.ceil(cout / BLOCK) * b * oh * ow * kh * kw
            else:
                total += layer_ms("conv", cin_g, cout, b * oh * ow * kh * kw)
        elif n.op_type == "Gemm" and n.input[1] in inits:
            w = inits[n.input[1]]
            batch = shapes[n.input[0]][0]
            total += layer_ms("gemm", w[1], w[0], batch)
    return total


class FakeBackend(Backend):
    name = "fake"

    def key(self) -> str:
        d = self.device
        hw = os.environ.get("TRTPRUNE_FAKE_HW", "")
        return f"fake-1|{hw + '|' if hw else ''}{d.name}|t{d.threads}|b{d.batch}|{d.precision}"

    def bursts(
        self, models, *, rounds: int = 3, seed: int = 0, noise: float = 0.0, delay_s: float = 0.0, **_ignored
    ) -> list[list[Burst]]:
        """Each model's formula latency, ``rounds`` bursts of three identical runs (times multiplicative
        noise if asked)."""
        import onnx

        rng = np.random.default_rng(seed)
        out = []
        for m in models:
            time.sleep(delay_s)
            proto = onnx.load_from_string(m) if isinstance(m, bytes) else onnx.load(str(m))
            base = model_ms(proto)
            out.append([Burst(float(r), [base * (1 + noise * rng.standard_normal())] * 3) for r in range(rounds)])
        return out
