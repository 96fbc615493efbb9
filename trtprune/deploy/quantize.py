"""INT8 post-training quantization: an fp32 ONNX model -> a Q/DQ ONNX model that TensorRT builds as INT8.

The output is the explicit-quantization form TensorRT accepts (NVIDIA TensorRT Developer Guide, "Working
with Quantized Types" / "Explicit Quantization",
https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/quantized-types-explicit-quantization.html):
QuantizeLinear/DequantizeLinear pairs with signed int8, *symmetric* scales (every zero point is 0; TensorRT
only supports symmetric quantization) on activations, and int8 weights quantized symmetrically per output
channel (range -127..127). It is made with ONNX Runtime's static quantizer
(``onnxruntime.quantization.quantize_static``, "Quantize ONNX Models",
https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html, whose guidance for TensorRT
is symmetric QInt8 for both activations and weights) with:

* ``quant_format=QuantFormat.QDQ``, ``activation_type=weight_type=QuantType.QInt8``, ``per_channel=True``;
* ``extra_options``: ``ActivationSymmetric=True``, ``WeightSymmetric=True``, and ``QuantizeBias=False``: biases
  stay fp32, as NVIDIA's TensorRT Model Optimizer (``modelopt.onnx.quantization``) configures ONNX Runtime
  for TensorRT - TensorRT fuses the bias into the int8 convolution and does not take an INT32 bias DQ;
* ``CalibMovingAverage`` left off: "minmax" is the plain minimum and maximum over the whole calibration set,
  so it does not depend on the batch the model was exported with (batch-1 and batch-32 exports of one
  model get the same scales, up to fp32 rounding: ~1e-6 relative on ResNet-56);
* "entropy" picks each activation's clipping threshold by the KL divergence between the fp32 histogram and
  its int8 version (TensorRT's entropy calibration, Migacz, "8-bit Inference with TensorRT", GTC 2017) with
  ORT's own ``EntropyCalibrater``, but with a 2048-bin histogram searched on the 255-level int8 grid:
  ``quantize_static`` cannot pass histogram sizes to it, and with its defaults (128 bins, 128 quantized
  bins) the only candidate threshold is the full range, i.e. "entropy" would silently be "minmax". The
  ranges are computed first and handed to ``quantize_static`` through its ``calibration_cache_path``;
* "percentile" clips at the 99.999th percentile of |x| (ORT's ``PercentileCalibrater``, 2048 bins);
* the fp32 model is first run through ``onnxruntime.quantization.shape_inference.quant_pre_process``
  (shape inference and the basic graph optimisations ORT recommends before quantizing).

The same Q/DQ file runs in ONNX Runtime on the CPU, which is how its accuracy is measured here. It is not
ORT's fast CPU form, though: with symmetric int8 activations every ReLU stays a separate op between Q/DQ
pairs and ORT fuses only part of the convolutions into QLinearConv, so on the CPU this model can be slower
than fp32 (bench-int8 measures it). ORT's CPU-preferred form (uint8 asymmetric activations, which lets it
drop the ReLUs) is a different model that TensorRT does not accept.

Calibration images (``calib_images``) come in one of these forms:

* a folder of images (the suffixes of ``datasets.IMAGE_SUFFIXES``; subfolders, e.g. one per class, are searched
  too, in sorted path order). Each image must already have the model's input size (32x32 for the CIFAR
  models): nothing is resized or cropped, because the preprocessing is part of what the model was trained on;
  an image of another size is an error naming it. Images are converted to RGB (or grey for 1-channel models).
* a ``.npy`` file holding uint8 images ``(N, H, W, C)`` (NHWC, RGB, 0..255), or a ``.npz`` file holding
  such an array as ``x`` (the layout of ``cifar10_train.npz``) or as its only array;
* a folder without images that holds exactly one such ``.npy``/``.npz`` file;
* a ``.txt`` image list: one image file per line, relative to the list's folder (as TensorRT's calibration
  lists are written), read like the folder of images, in the list's order.

Of the N images found, ``n`` are taken evenly spaced over the sorted order (so a folder sorted by class
contributes every class), then scaled to 0..1 and normalised with the model's mean and std exactly as
training and evaluation do (``trtprune.sources.datasets.normalize``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from trtprune.deploy.export import read_onnx, run_onnx
from trtprune.errors import TrtpruneError
from trtprune.fsutil import atomic_path
from trtprune.sources import datasets as D
from trtprune.sources.images import depth_change, eight_bit, open_images
from trtprune.sources.models import model_spec

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("tensorrt", "ort")  # who runs the INT8 model: TensorRT (symmetric Q/DQ) or ONNX Runtime on the CPU
# The entropy calibrator's histogram over [-max|x|, max|x|] and the levels a threshold is judged on
# (int8 symmetric: -127..127).
ENTROPY_BINS = 2048
ENTROPY_QUANTIZED_BINS = 255
# Ops that only appear in a model that is quantized already.
_QUANT_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
}
_Q_DQ = ("QuantizeLinear", "DequantizeLinear")


# -- calibration images -----------------------------------------------------------------------------
def _spec_of(spec):
    if isinstance(spec, str):
        return model_spec(spec)
    return spec


def _evenly(total: int, n: int) -> np.ndarray:
    """``min(n, total)`` distinct indices spread evenly over ``range(total)``, in order."""
    n = min(n, total)
    return (np.arange(n) * total) // n


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise TrtpruneError(f"asked for {n!r} calibration images", fix="ask for at least 1 (a few hundred is usual)")


def calib_from_training(data: str | None, spec, n: int = 512) -> np.ndarray:
    """``n`` training images of the dataset ``data`` (see ``--data``; evenly spaced), normalised for ``spec``:
    float32 NCHW, the calibration set when the user gives none."""
    spec = _spec_of(spec)
    _check_n(n)
    train = open_images(data, "train", spec.input_shape)
    if len(train) == 0:
        raise TrtpruneError("the training set holds no images", fix="give at least one calibration image")
    chosen = train.select(_evenly(len(train), n))
    return np.concatenate([xb.numpy() for xb, _ in chosen.batches(256, spec.mean, spec.std)]).astype(np.float32)


def calibration(source: str | Path | None, data: str | None, spec, n: int = 512) -> np.ndarray:
    """``n`` calibration images: from ``source`` (:func:`calib_images`) when given, else from the training set of
    the dataset ``data`` (:func:`calib_from_training`)."""
    return calib_images(source, spec, n) if source else calib_from_training(data, spec, n)


def calib_array(x: np.ndarray, spec, n: int, source: str = "the calibration array") -> np.ndarray:
    """``n`` of the uint8 NHWC images ``x`` (evenly spaced), normalised for ``spec``: float32 NCHW."""
    spec = _spec_of(spec)
    _check_n(n)
    c, h, w = spec.input_shape
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[0] == 0:
        raise TrtpruneError(f"{source} holds no images", fix="give at least one calibration image")
    if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != (h, w, c):
        hint = ""
        if x.ndim == 4 and tuple(x.shape[1:]) == (c, h, w):
            hint = "; it looks like NCHW: transpose it to NHWC (x.transpose(0, 2, 3, 1))"
        elif x.dtype != np.uint8:
            hint = "; give the raw pixels, not normalised floats: trtprune normalises them with the model's mean/std"
        raise TrtpruneError(
            f"{source} has shape {x.shape} and dtype {x.dtype}",
            why=f"model '{spec.name}' takes {h}x{w} images with {c} channels: expected uint8 (N, {h}, {w}, {c}), "
            f"pixels 0..255{hint}",
            fix=f"store the images as uint8 NHWC at {h}x{w} (resize or crop them the way the model was trained)",
        )
    if len(x) < n:
        log.warning("%s holds %d images, fewer than the %d asked for: calibrating on all of them", source, len(x), n)
    chosen = np.ascontiguousarray(x[_evenly(len(x), n)])
    return D.normalize(D.to_tensor(chosen), spec.mean, spec.std).numpy()


def _read_array_file(path: Path) -> np.ndarray:
    try:
        if path.suffix.lower() == ".npy":
            return np.load(path, mmap_mode="r", allow_pickle=False)
        with np.load(path, allow_pickle=False) as f:
            keys = list(f.keys())
            if "x" in keys:
                return f["x"]
            if len(keys) == 1:
                return f[keys[0]]
    except Exception as e:
        raise TrtpruneError(
            f"cannot read calibration images from '{path}': {type(e).__name__}: {e}",
            why="expected a .npy of uint8 (N, H, W, C) images or a .npz holding them as 'x'",
        ) from e
    raise TrtpruneError(
        f"'{path}' holds the arrays {keys}, none of them named 'x'",
        why="a .npz of calibration images keeps them as 'x' (uint8 N, H, W, C), or holds only that one array",
        fix="save it with np.savez(path, x=images)",
    )


def _read_image_files(files: list[Path], spec) -> np.ndarray:
    from PIL import Image  # installed with matplotlib

    c, h, w = spec.input_shape
    if c not in (1, 3):
        raise TrtpruneError(
            f"model '{spec.name}' takes {c}-channel input; image files give 1 (grey) or 3 (RGB) channels",
            fix="give the calibration images as a .npy of uint8 (N, H, W, C) instead",
        )
    out, scaled = [], ""
    for f in files:
        try:
            with Image.open(f) as im:
                if im.size != (w, h):
                    raise TrtpruneError(
                        f"calibration image '{f}' is {im.size[0]}x{im.size[1]} (WxH), not {w}x{h}",
                        why=f"model '{spec.name}' takes {w}x{h} images and trtprune does not resize calibration "
                        "images: how an image is resized or cropped changes what the model sees",
                        fix=f"resize or crop the images to {w}x{h} the way the model's training data was prepared; "
                        f"if the model takes {im.size[0]}x{im.size[1]} images, say so with --input-shape "
                        f"{c}x{im.size[1]}x{im.size[0]} (and export it at that shape)",
                    )
                if depth_change(im.mode) and not scaled:
                    scaled = f"calibration images such as '{f}' (PIL mode {im.mode}): {depth_change(im.mode)}"
                    log.info(scaled)
                a = np.asarray(eight_bit(im, c))
        except TrtpruneError:
            raise
        except Exception as e:
            raise TrtpruneError(f"cannot read calibration image '{f}': {type(e).__name__}: {e}") from e
        out.append(a if c == 3 else a[..., None])
    return np.stack(out)


def _image_list(path: Path) -> list[Path]:
    """The image files a calibration list names, one per line (relative to the list's folder; blank lines and
    lines starting with # skipped), in the list's order; every one must exist."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrtpruneError(f"cannot read the calibration list '{path}': {e}") from e
    files = [path.parent / s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    missing = [str(f) for f in files if not f.is_file()]
    if not files or missing:
        raise TrtpruneError(
            f"the calibration list '{path}' "
            + (f"names {len(missing)} missing file(s), e.g. '{missing[0]}'" if missing else "names no images"),
            why="a list holds one image file per line, relative to the list's own folder",
            fix="fix the paths in the list, or give the folder of images instead",
        )
    return files


def calib_images(path_or_dir: str | Path, spec, n: int = 512) -> np.ndarray:
    """Up to ``n`` calibration images from a folder or array file (formats: module docstring).

    ``spec`` is the model's :class:`~trtprune.sources.models.ModelSpec` (or its name). Returns float32
    ``(n, C, H, W)`` normalised with the spec's mean and std, ready for :func:`qdq_from_onnx`.
    """
    spec = _spec_of(spec)
    _check_n(n)
    path = Path(path_or_dir)
    arrays = (".npy", ".npz")
    if path.is_file() and path.suffix.lower() == ".txt":
        listed = _image_list(path)
        chosen = [listed[i] for i in _evenly(len(listed), n)]
        return calib_array(_read_image_files(chosen, spec), spec, n, f"images listed in '{path}'")
    if path.is_file():
        if path.suffix.lower() not in arrays:
            raise TrtpruneError(
                f"calibration source '{path}' is a {path.suffix or 'suffix-less'} file",
                fix="give a folder of images, a .txt list of image files, or a .npy/.npz of uint8 (N, H, W, C) images",
            )
        return calib_array(_read_array_file(path), spec, n, f"'{path}'")
    if not path.is_dir():
        raise TrtpruneError(
            f"calibration source '{path}' does not exist",
            fix="give a folder of images (e.g. calib/) or a .npy/.npz of uint8 (N, H, W, C) images",
        )
    images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in D.IMAGE_SUFFIXES)
    if images:
        chosen = [images[i] for i in _evenly(len(images), n)]
        return calib_array(_read_image_files(chosen, spec), spec, n, f"images in '{path}'")
    found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in arrays)
    if len(found) == 1:
        return calib_array(_read_array_file(found[0]), spec, n, f"'{found[0]}'")
    raise TrtpruneError(
        f"calibration folder '{path}' holds "
        + (f"{len(found)} array files ({', '.join(p.name for p in found)})" if found else "no images"),
        why=f"expected image files ({', '.join(D.IMAGE_SUFFIXES)}; in subfolders too) or exactly one .npy/.npz of "
        "uint8 (N, H, W, C) images",
        fix="put the calibration images there, or pass the one array file itself",
    )


# -- quantization -----------------------------------------------------------------------------------
def _fp32_model(path: Path):
    """The checked fp32 model and its single input ``(name, static shape)``."""
    import onnx

    proto = read_onnx(path)  # exists, valid, static shapes
    init_names = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in init_names]
    if len(inputs) != 1:
        raise TrtpruneError(
            f"'{path}' has {len(inputs)} inputs ({', '.join(i.name for i in inputs)})",
            why="calibration feeds one image tensor",
            fix="quantize a single-input image model (as trtprune export writes)",
        )
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    quantized = sorted({n.op_type for n in proto.graph.node if n.op_type in _QUANT_OPS})
    low = sorted(
        {
            onnx.TensorProto.DataType.Name(i.data_type)
            for i in proto.graph.initializer
            if i.data_type in (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)
        }
    )
    if elem != onnx.TensorProto.FLOAT or quantized or low:
        found = (
            f"input '{inp.name}' is {onnx.TensorProto.DataType.Name(elem)}"
            if elem != onnx.TensorProto.FLOAT
            else f"it holds {', '.join(quantized)} nodes (quantized already)"
            if quantized
            else f"it holds {', '.join(low)} weights"
        )
        raise TrtpruneError(
            f"'{path}' is not an fp32 ONNX model: {found}",
            why="INT8 calibration starts from the fp32 model (float32 input and weights, no Q/DQ nodes)",
            fix="quantize the fp32 export (trtprune export), not a quantized or fp16 model",
        )
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    if len(shape) != 4:
        raise TrtpruneError(
            f"input '{inp.name}' of '{path}' has shape {list(shape)}",
            why="calibration feeds images (batch, channels, height, width)",
        )
    return proto, inp.name, shape


def _check_calib(calib, shape: tuple[int, ...], path: Path) -> np.ndarray:
    want = f"(N, {', '.join(map(str, shape[1:]))})"
    if not isinstance(calib, np.ndarray):
        raise TrtpruneError(
            f"the calibration images are a {type(calib).__name__}, not a numpy array",
            fix=f"pass float32 {want} images, e.g. from trtprune.deploy.quantize.calib_images",
        )
    if calib.ndim == 4 and calib.shape[0] == 0:
        raise TrtpruneError(
            "the calibration set is empty",
            why="INT8 scales are measured on calibration images: without any there is nothing to measure",
            fix="give a few hundred training images (calib_images(path, spec, 512))",
        )
    if calib.ndim != 4 or tuple(calib.shape[1:]) != tuple(shape[1:]):
        raise TrtpruneError(
            f"calibration images of shape {tuple(calib.shape)} do not fit '{path}'",
            why=f"its input is {list(shape)}: expected {want} images (NCHW)",
            fix="load them with calib_images(path, spec, n) for this model, or transpose NHWC to NCHW",
        )
    if not np.issubdtype(calib.dtype, np.floating):
        raise TrtpruneError(
            f"calibration images have dtype {calib.dtype}",
            why="expected float32 images, normalised as the model's input (mean/std)",
            fix="load them with calib_images(path, spec, n), which normalises them",
        )
    calib = np.ascontiguousarray(calib, dtype=np.float32)
    if not np.isfinite(calib).all():
        raise TrtpruneError("the calibration images contain NaN or infinite values", fix="check how they were made")
    return calib


class _Batches:
    """``onnxruntime.quantization.CalibrationDataReader``: the images in batches of the model's static batch.

    A last partial batch is filled up with images from the start of the set (not zeros, which would
    add a flat image to the measured ranges); "minmax" is unchanged by the repeats.
    """

    def __init__(self, images: np.ndarray, input_name: str, batch: int):
        self.images, self.name, self.batch = images, input_name, batch
        self.starts = list(range(0, len(images), batch))
        self.i = 0

    def __len__(self) -> int:
        return len(self.starts)

    def get_next(self) -> dict | None:
        if self.i >= len(self.starts):
            return None
        s = self.starts[self.i]
        self.i += 1
        xb = self.images[s : s + self.batch]
        if len(xb) < self.batch:
            xb = self.images[np.arange(s, s + self.batch) % len(self.images)]
        return {self.name: np.ascontiguousarray(xb)}

    def rewind(self) -> None:
        self.i = 0


def qdq_summary(path: str | Path) -> dict:
    """Counts of Q and DQ nodes and every zero point of a Q/DQ model (for checks and reports)."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    consts = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    for n in proto.graph.node:  # zero points can also be Constant nodes
        if n.op_type == "Constant" and n.attribute:
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    zps, scales = [], []
    for n in proto.graph.node:
        if n.op_type in _Q_DQ:
            scales.append(consts.get(n.input[1]))
            zps.append(consts.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None)
    return {
        "quantize": sum(n.op_type == "QuantizeLinear" for n in proto.graph.node),
        "dequantize": sum(n.op_type == "DequantizeLinear" for n in proto.graph.node),
        "zero_points": zps,
        "scales": scales,
    }


TIMING_CALIB_IMAGES = 8


def qdq_for_timing(path: str | Path, target: str = "tensorrt") -> Path:
    """``path`` rewritten in place as the Q/DQ model an int8 device runs (``target``: "tensorrt" or "ort", see
    :func:`qdq_from_onnx`), for timing only (search candidates): calibrated on ``TIMING_CALIB_IMAGES`` seeded
    random inputs, since the kernels and their speed do not depend on the scale values. A model that is
    delivered is calibrated on the user's images instead (``qdq_from_onnx`` with ``calib_from_training``),
    and that file is what gets timed."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    calib = np.random.default_rng(0).standard_normal((TIMING_CALIB_IMAGES * dims[0], *dims[1:])).astype(np.float32)
    level = log.level
    if not log.isEnabledFor(logging.DEBUG):  # a search makes many: their lines would drown it (-vv shows them)
        log.setLevel(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix="trtprune-qdq-") as tmp:
            qdq_from_onnx(path, Path(tmp) / "q.onnx", calib, target=target)
            shutil.move(Path(tmp) / "q.onnx", path)
    finally:
        log.setLevel(level)
    return Path(path)


def _static_options(target: str) -> dict:
    """``quantize_static``'s settings for ``target`` (the module docstring says why each is set)."""
    from onnxruntime.quantization import QuantFormat, QuantType

    if target not in TARGETS:
        raise TrtpruneError(f"unknown INT8 target '{target}'", fix=f"use one of {', '.join(TARGETS)}")
    return {
        "quant_format": QuantFormat.QDQ,
        "activation_type": QuantType.QInt8 if target == "tensorrt" else QuantType.QUInt8,
        "weight_type": QuantType.QInt8,
        "extra_options": (
            {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
            if target == "tensorrt"
            else {"ActivationSymmetric": False, "WeightSymmetric": True}
        ),
    }


class _RandomFeeds:
    """A ``CalibrationDataReader`` of seeded normal inputs for every input of a small model (micro-models)."""

    def __init__(self, proto, n: int = 2, seed: int = 0):
        from onnx import helper

        rng = np.random.default_rng(seed)
        shapes = {
            i.name: (
                [d.dim_value for d in i.type.tensor_type.shape.dim],
                helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type),
            )
            for i in proto.graph.input
        }
        self.feeds = iter(
            [{k: rng.standard_normal(shape).astype(dtype) for k, (shape, dtype) in shapes.items()} for _ in range(n)]
        )

    def get_next(self) -> dict | None:
        return next(self.feeds, None)


def qdq_micro(model: bytes, target: str = "ort") -> bytes:
    """A single-layer model (serialised, any number of float inputs) in the Q/DQ form of ``target``, made by the
    same quantizer and settings as a delivered model (:func:`qdq_from_onnx`) on seeded random inputs: what an
    int8 device's latency table times. Per output channel weights, like the delivered model."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, quantize_static

    options = _static_options(target)
    with tempfile.TemporaryDirectory(prefix="trtprune-qdq-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
        src.write_bytes(model)
        with contextlib.redirect_stdout(io.StringIO()), _quiet_quantizer():
            quantize_static(
                str(src),
                str(dst),
                _RandomFeeds(onnx.load_from_string(model)),
                per_channel=True,
                calibrate_method=CalibrationMethod.MinMax,
                **options,
            )
        return dst.read_bytes()


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantizer logs advice through ``logging.warning`` on the root logger, which installs a
    stderr handler on it when it has none (``logging.basicConfig``) - every later record of trtprune would
    then print twice. A handler of our own stands in while it runs, and the advice is dropped."""
    root = logging.getLogger()
    level, stand_in = root.level, logging.NullHandler()
    root.addHandler(stand_in)
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.removeHandler(stand_in)
        root.setLevel(level)


def qdq_from_onnx(
    fp32_onnx: str | Path,
    out: str | Path,
    calib: np.ndarray,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    target: str = "tensorrt",
) -> Path:
    """Quantize ``fp32_onnx`` to a symmetric-int8 Q/DQ model at ``out``, calibrated on ``calib``.

    ``target``: "tensorrt" (default: the form above, for TensorRT's explicit quantization) or "ort": ONNX
    Runtime's CPU-preferred form (ORT quantization docs, "U8S8" on x86): uint8 activations with zero points
    (asymmetric), int8 symmetric per-channel weights, int32 bias. That lets ORT fold the ReLUs into the
    quantized ranges and run QLinearConv throughout; TensorRT does not accept it.

    ``calib``: float32 ``(N, C, H, W)`` images, normalised as the model's input (``calib_images``); they are
    fed in batches of the model's static batch. ``method``: "minmax" (min and max over the set),
    "entropy" (KL-divergence threshold, as TensorRT's entropy calibrator) or "percentile" (99.999th
    percentile of |x|). ``out`` is written atomically: on any failure nothing is left there.
    """
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_onnx, out = Path(fp32_onnx), Path(out)
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise TrtpruneError(f"unknown calibration method '{method}'", fix=f"use one of {', '.join(METHODS)}")
    options = _static_options(target)
    if out.resolve() == fp32_onnx.resolve():
        raise TrtpruneError(
            f"the INT8 model would overwrite its fp32 source '{fp32_onnx}'", fix="write it to another file"
        )
    _, input_name, shape = _fp32_model(fp32_onnx)
    calib = _check_calib(calib, shape, fp32_onnx)
    batch = shape[0]
    log.info(
        "quantize  | %s: %d images in %d batch(es) of %d, %s, per-channel=%s",
        fp32_onnx.name,
        len(calib),
        -(-len(calib) // batch),
        batch,
        method,
        per_channel,
    )
    first = _Batches(calib, input_name, batch).get_next()[input_name]
    with tempfile.TemporaryDirectory(prefix="trtprune-int8-") as tmp:
        pre, qdq = Path(tmp) / "pre.onnx", Path(tmp) / "qdq.onnx"
        reader, cache = _Batches(calib, input_name, batch), {}
        try:
            # the calibrators print their progress; the quantizer's advice goes (see _quiet_quantizer)
            with contextlib.redirect_stdout(io.StringIO()) as chatter, _quiet_quantizer():
                quant_pre_process(str(fp32_onnx), str(pre))
                if method == "entropy":
                    cache = {"calibration_data_reader": None, "calibration_cache_path": _entropy_ranges(pre, reader)}
                quantize_static(
                    str(pre),
                    str(qdq),
                    **({"calibration_data_reader": reader} | cache),
                    per_channel=per_channel,
                    calibrate_method=methods[method],
                    **options,
                )
            log.debug("onnxruntime: %s", chatter.getvalue().strip())
        except TrtpruneError:
            raise
        except Exception as e:
            raise TrtpruneError(
                f"quantizing '{fp32_onnx}' with ONNX Runtime failed: {type(e).__name__}: {str(e).splitlines()[0]}",
                fix="run with -v for the full trace; check that the fp32 model runs in ONNX Runtime",
            ) from e
        _check_qdq(qdq, fp32_onnx, first, symmetric=target == "tensorrt")
        with atomic_path(out) as tmp_out:
            shutil.copyfile(qdq, tmp_out)
    log.info("quantize  | wrote %s", out)
    return out


def check_int8_kernels(path: str | Path) -> dict[str, list[str]]:
    """Which convolutions and matrix products of the Q/DQ model ``path`` ONNX Runtime runs as INT8 kernels on this
    CPU (:func:`trtprune.latency.ort.int8_kernels`): none is an error - timed as is, it would be an fp32 run
    reported as INT8 - and some left in floating point are named in a warning (ONNX Runtime falls back to fp32
    for what it cannot quantize)."""
    from trtprune.latency.ort import int8_kernels

    found = int8_kernels(path)
    if not found["int8"]:
        raise TrtpruneError(
            f"ONNX Runtime runs no INT8 kernel for '{path}'",
            why="none of its Q/DQ pairs was fused into a quantized convolution or product (an operator or type the "
            f"CPU engine does not quantize; {len(found['float'])} run in floating point): timed, it would be an fp32 "
            "run reported as INT8",
            fix="check the model with 'trtprune quantize --target ort'; custom or unusual layers may need an fp32 "
            "device instead",
        )
    if found["float"]:
        log.warning(
            "quantize  | ONNX Runtime runs %d of %d convolutions/products of %s in fp32 (no INT8 kernel): %s",
            len(found["float"]),
            len(found["float"]) + len(found["int8"]),
            Path(path).name,
            ", ".join(found["float"][:6]),
        )
    return found


def _entropy_ranges(pre: Path, reader: _Batches) -> Path:
    """Entropy (KL) activation ranges of ``pre`` as an ORT calibration cache beside it (see module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if "calibration_cache_path" not in inspect.signature(quantize_static).parameters:
        import onnxruntime

        raise TrtpruneError(
            f"entropy calibration needs an onnxruntime whose quantize_static takes calibration_cache_path "
            f"(this is {onnxruntime.__version__})",
            fix="upgrade onnxruntime, or use method 'minmax' or 'percentile'",
        )
    calibrator = create_calibrator(
        pre,
        sorted(set(QDQRegistry) | set(QLinearOpsRegistry)),  # what quantize_static calibrates by default
        augmented_model_path=str(pre.with_name("augmented.onnx")),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS},
    )
    calibrator.collect_data(reader)
    ranges = calibrator.compute_data()
    del calibrator
    reader.rewind()
    path = pre.with_name("entropy_ranges.json")
    save_tensors_data(ranges, path)
    return path


def _check_qdq(qdq: Path, fp32: Path, xb: np.ndarray, symmetric: bool = True) -> None:
    """The quantized model has (for TensorRT: symmetric int8) Q/DQ, loads in ONNX Runtime, gives finite outputs."""

    s = qdq_summary(qdq)
    bad = [z for z in s["zero_points"] if z is None or z.dtype != np.int8 or np.any(z != 0)] if symmetric else []
    if not s["quantize"] or bad:
        raise TrtpruneError(
            f"ONNX Runtime's quantizer did not produce symmetric int8 Q/DQ for '{fp32}'",
            why=f"{s['quantize']} QuantizeLinear nodes; {len(bad)} zero points that are not int8 zeros",
            fix="report this with the onnxruntime version; TensorRT needs int8 zero points of 0",
        )
    got, ref = run_onnx(qdq, xb), run_onnx(fp32, xb)
    if not np.isfinite(got).all():
        raise TrtpruneError(f"the INT8 model of '{fp32}' gives non-finite outputs", fix="check the calibration images")
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean()) if got.ndim == 2 else float("nan")
    log.info(
        "quantize  | %d Q / %d DQ nodes; first batch: max |int8 - fp32| %.3g, argmax agreement %.0f %%",
        s["quantize"],
        s["dequantize"],
        float(np.abs(got - ref).max()),
        100 * agree,
    )
