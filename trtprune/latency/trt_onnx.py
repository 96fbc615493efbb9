"""The ONNX form a TensorRT version builds from, made from trtprune's exported model.

* **Opset**: the 8.5/8.6 ONNX parser reads up to opset 17 (:data:`trtexec_args.MAX_OPSET`); models exported
  at a newer opset are rewritten down (:func:`downgrade`). ONNX's own version converter has no adapter for
  some of these steps (Pad 19 -> 18), so the few operators whose schema changed after 17 in ways an exported
  CNN uses are rewritten here (Reduce* axes input -> attribute, Pad without ``axes``, Resize/AveragePool/Cast
  /Q/DQ attributes added after 17 left at their defaults); any other changed operator is an error naming it.
* **fp16 on strongly typed TensorRT (11+)**: precision comes from the model's types, so an fp16 device
  builds from an fp16-typed model (:func:`fp16_typed`): float weights and constants become float16, the
  input is cast to float16 and the output back to float32 at the graph's edges, so the engine's I/O stays
  float32 as on every other version.
* **int8**: only a model with Q/DQ pairs (``trtprune quantize --target tensorrt``, calibrated) is built for an
  int8 device (:func:`check_qdq`): trtexec's ``--int8`` on a float model uses placeholder dynamic ranges, and
  TensorRT 11 has no implicit quantization at all.

Every rewrite is deterministic: the same input model gives the same bytes, so the engine cache (keyed by
content) and the "same file everywhere" check still hold.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, defs, helper, numpy_helper

from trtprune.errors import TrtpruneError
from trtprune.latency.trtexec_args import max_opset, strongly_typed, text

_REDUCE_AXES_TO_ATTR = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2"}
_REDUCE_AXES_TO_ATTR |= {"ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
# attributes added after opset 17 that may be dropped when they hold their default
_NEW_DEFAULTS = {
    "Resize": {"antialias": 0, "keep_aspect_ratio_policy": b"stretch"},
    "AveragePool": {},
    "Cast": {"saturate": 1},
    "QuantizeLinear": {"saturate": 1},
    "DequantizeLinear": {},
    "Constant": {},
    "Identity": {},
    "Reshape": {},
    "Shape": {},
    "Size": {},
    "Equal": {},
    "Pad": {},
}


def _opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)


def _const_ints(proto, name: str) -> list[int] | None:
    for init in proto.graph.initializer:
        if init.name == name:
            return [int(v) for v in numpy_helper.to_array(init).ravel()]
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return [int(v) for v in numpy_helper.to_array(n.attribute[0].t).ravel()]
    return None


def _refuse(node, version, why: str) -> TrtpruneError:
    return TrtpruneError(
        f"TensorRT {text(version)}'s ONNX parser cannot read node '{node.name}' ({node.op_type}) of this model",
        why=why,
        fix="use TensorRT 10 or newer (opset 20), or replace that layer in the model",
    )


def downgrade(proto, target: int, version=(8, 6)) -> onnx.ModelProto:
    """``proto`` rewritten to opset ``target`` (<= its own); refuses operators it cannot rewrite exactly."""
    source = _opset(proto)
    if source <= target:
        return proto
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for node in out.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        try:
            since = defs.get_schema(node.op_type, source).since_version
        except Exception:  # onnx.defs.SchemaError: not a standard op at that opset
            raise _refuse(node, version, "not an ONNX operator") from None
        if since <= target:
            continue  # unchanged since the target opset
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type in _REDUCE_AXES_TO_ATTR:
            if len(node.input) > 1 and node.input[1]:
                axes = _const_ints(out, node.input[1])
                if axes is None:
                    raise _refuse(node, version, "its axes are computed, and opset 17 needs them as an attribute")
                del node.input[1:]
                node.attribute.append(helper.make_attribute("axes", axes))
            if attrs.get("noop_with_empty_axes", 0):
                raise _refuse(node, version, "noop_with_empty_axes has no opset 17 form")
            _drop(node, "noop_with_empty_axes")
        elif node.op_type == "Pad":
            if len(node.input) > 3 and node.input[3]:
                raise _refuse(node, version, "Pad with an axes input (opset 18) has no opset 17 form")
            if attrs.get("mode", b"constant") == b"wrap":
                raise _refuse(node, version, "Pad mode 'wrap' (opset 19) has no opset 17 form")
        elif node.op_type in _NEW_DEFAULTS:
            defaults = _NEW_DEFAULTS[node.op_type]
            for name in [a.name for a in node.attribute]:
                if name in defaults and attrs[name] == defaults[name]:
                    _drop(node, name)
            if node.op_type == "AveragePool" and "dilations" in attrs:
                if any(d != 1 for d in attrs["dilations"]):
                    raise _refuse(node, version, "a dilated AveragePool (opset 19) has no opset 17 form")
                _drop(node, "dilations")
            left = {a.name for a in node.attribute} - set(defs.get_schema(node.op_type, target).attributes)
            if left:
                raise _refuse(node, version, f"attributes {sorted(left)} came after opset {target}")
        else:
            raise _refuse(node, version, f"{node.op_type} changed in opset {since}, after the {target} it reads")
    for o in out.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = target
    out.ir_version = min(out.ir_version, 8)  # IR 8 is opset 17's (onnx/helper.py VERSION_TABLE, onnx 1.12)
    onnx.checker.check_model(out)
    return out


def _drop(node, name: str) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)


def fp16_typed(proto) -> onnx.ModelProto:
    """``proto`` with every float tensor in float16, and float32 inputs/outputs cast at the graph's edges."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    g = out.graph
    keep_fp32 = set()  # inputs that only exist as float32: Resize's roi and scales
    for n in g.node:
        if n.op_type == "Resize":
            keep_fp32.update(n.input[1:3])
    for init in g.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep_fp32:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), init.name))
    for n in g.node:
        if n.op_type == "Constant" and n.output[0] not in keep_fp32:
            for a in n.attribute:
                if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                    a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype("float16"), a.t.name))
        if n.op_type == "Cast":
            for a in n.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
    casts_in, casts_out = [], []
    for inp in g.input:
        if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}__fp16"
        for n in g.node:
            for i, name in enumerate(n.input):
                if name == inp.name:
                    n.input[i] = half
        casts_in.append(helper.make_node("Cast", [inp.name], [half], to=TensorProto.FLOAT16, name=f"{half}_cast"))
    for outp in g.output:
        if outp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{outp.name}__fp16"
        for n in g.node:
            for i, name in enumerate(n.output):
                if name == outp.name:
                    n.output[i] = half
            for i, name in enumerate(n.input):
                if name == outp.name:
                    n.input[i] = half
        casts_out.append(helper.make_node("Cast", [half], [outp.name], to=TensorProto.FLOAT, name=f"{outp.name}_cast"))
    nodes = [*casts_in, *g.node, *casts_out]
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]  # re-inferred by whoever needs it, in the new types
    onnx.checker.check_model(out, full_check=True)
    return out


def has_qdq(proto) -> bool:
    return any(n.op_type == "QuantizeLinear" for n in proto.graph.node)


def check_qdq(proto, device_name: str) -> None:
    if not has_qdq(proto):
        raise TrtpruneError(
            f"device '{device_name}' runs INT8, and this model has no Q/DQ (QuantizeLinear) nodes",
            why="an int8 TensorRT engine is built only from a calibrated Q/DQ model, the same file that is timed, "
            "checked and delivered: --int8 on a float model would use placeholder ranges, and TensorRT 11 has no "
            "implicit quantization",
            fix="quantize it first (trtprune quantize --target tensorrt), or use an fp16 device",
        )


def check_precision(proto, path, device) -> None:
    """A model to time on ``device`` is in the device's precision: a float model on an int8 device, or an INT8
    Q/DQ model on a float one, would be timed and recorded under the other precision's name, without a word."""
    qdq = has_qdq(proto)
    if device.precision == "int8" and not qdq:
        raise TrtpruneError(
            f"'{path}' has no INT8 (QuantizeLinear) nodes, and device '{device.name}' runs INT8 models",
            why="an int8 device times the calibrated Q/DQ model it would run; a float model timed there would be "
            "recorded as INT8 latency",
            fix=f"quantize it first (trtprune quantize {path} --target {device.int8_form} --calib <images> -o "
            f"{Path(path).stem}-int8.onnx), or measure it on a float device (--device cpu)",
        )
    if qdq and device.precision not in ("int8", "best"):
        raise TrtpruneError(
            f"'{path}' is an INT8 Q/DQ model, and device '{device.name}' runs {device.precision} models",
            why="its QuantizeLinear/DequantizeLinear nodes make it run in INT8 arithmetic; timed on a float device it "
            f"would be recorded as {device.precision} latency",
            fix="measure it on an int8 device (--device cpu-int8; trtprune list), or measure the float model it was "
            "quantized from on this device",
        )


def device_form(model: bytes, device, version) -> bytes:
    """The bytes TensorRT ``version`` builds ``model`` from on ``device`` (see the module docstring)."""
    try:
        proto = onnx.load_from_string(model)
    except Exception as e:  # google.protobuf DecodeError: not an ONNX file
        raise TrtpruneError(
            f"the model given to TensorRT is not an ONNX model ({type(e).__name__}: {e})",
            fix="give the .onnx file written by 'trtprune export' (or torch.onnx.export)",
        ) from None
    if device.precision == "int8":
        check_qdq(proto, device.name)
    changed = False
    if _opset(proto) > max_opset(version):
        proto, changed = downgrade(proto, max_opset(version), version), True
    half = device.precision == "fp16" or (device.dla_core is not None and device.precision != "int8")
    if strongly_typed(version) and half:
        proto, changed = fp16_typed(proto), True
    return proto.SerializeToString() if changed else model
