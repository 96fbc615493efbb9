"""PyTorch -> ONNX with a static batch, simplified, checked, and compared against torch.

The exported graph is what every engine is built from, so a wrong export is an error, not a warning:
the ONNX Runtime output is compared with torch on a seeded random batch and the file is written
only if the maximum absolute difference is within tolerance.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.fsutil import atomic_path
from trtprune.latency.ort import ort_session
from trtprune.outputs import SINGLE_NAME, model_failed, output_leaves

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = SINGLE_NAME  # a model that returns several tensors has one named output per tensor (trtprune.outputs)
# |onnxruntime - torch| on every output must stay within PARITY_ATOL + PARITY_RTOL * max|torch output|:
# fp32 reorderings of trained models stay far below; untrained deep nets have logits of 1e6.
PARITY_ATOL = 1e-3
PARITY_RTOL = 1e-5


@dataclass(frozen=True)
class Export:
    path: Path
    max_abs_diff: float  # ONNX Runtime vs torch, same input, over every output
    nodes: int
    outputs: tuple[str, ...] = (OUTPUT_NAME,)  # the ONNX outputs, one per tensor the model returns


@contextlib.contextmanager
def _quiet():
    """The dynamo exporter prints progress to stdout and warns about optional torchvision ops."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _build_torchlib_registry_once() -> None:
    """torch.onnx rebuilds its registry of ONNX Script functions (~500 of them) on every export: about a
    third of a ResNet-20 export here (from_torchlib 2.1 of 5.9 s under cProfile). Built once per opset, each
    export then gets its own copy of the table, so nothing one export registers reaches the next. A torch
    without this private hook keeps its own behaviour."""
    try:
        from torch.onnx._internal.exporter._registration import ONNXRegistry
    except ImportError:
        return
    build = getattr(ONNXRegistry.from_torchlib, "__func__", None)
    if build is None or getattr(build, "trtprune_once", False):
        return
    built: dict = {}

    def from_torchlib(cls, *args, **kwargs):
        key = repr((args, sorted(kwargs.items())))
        if key not in built:
            built[key] = build(cls, *args, **kwargs)
        copy = cls()
        copy._opset_version = built[key]._opset_version
        copy.functions = {op: list(metas) for op, metas in built[key].functions.items()}
        return copy

    from_torchlib.trtprune_once = True
    ONNXRegistry.from_torchlib = classmethod(from_torchlib)


# An export holds the example batch, torch's activations and then ONNX Runtime's at once (a residual network
# keeps a block's input, its output and the shortcut alive). Measured: ResNet-20 at batch 4,000 peaks 1.32 GB
# above batch 1, 0.33 MB per image against a largest activation of 0.0625 MB and 0.012 MB of input: about 5
# copies; 6 leaves a margin.
ACTIVATION_COPIES = 6


def available_memory_bytes() -> int | None:
    """Memory this process may still take: MemAvailable, or less under a cgroup (container) limit; None if unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_batch_fits(model: nn.Module, input_shape: tuple[int, ...], batch: int) -> None:
    """Refuse a batch whose export would need more memory than is available (the kernel would kill the process
    without a word): estimated from the largest activation of one image, measured on a batch of 1."""
    available = available_memory_bytes()
    largest = 0

    def hook(module, inputs, output):
        nonlocal largest
        if isinstance(output, torch.Tensor):
            largest = max(largest, output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    except Exception:  # the export reports a model that does not run, with its own message
        return
    finally:
        for h in handles:
            h.remove()
    image = 4 * math.prod(input_shape)
    need = batch * (image + ACTIVATION_COPIES * largest)
    if available is not None and need > available:
        fits = max(available // (image + ACTIVATION_COPIES * largest), 0)
        raise TrtpruneError(
            f"batch {batch:,} needs about {need / 2**30:,.1f} GiB to export, but {available / 2**30:.1f} GiB of "
            "memory is available",
            why=f"the export runs the model on a batch of random images in torch and ONNX Runtime: per image "
            f"{image / 2**20:.2f} MiB of input plus about {ACTIVATION_COPIES} x {largest / 2**20:.2f} MiB of its "
            "largest activation",
            fix=f"use a batch of at most about {fits:,}, or export on a machine with more memory",
        )


def onnx_from_torch(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...],
    batch: int = 1,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
) -> Export:
    """Export ``model`` for input ``(batch, *input_shape)`` to ``path``; returns the parity figure."""
    import onnx
    import onnxslim

    _build_torchlib_registry_once()
    model = model.eval()
    check_batch_fits(model, input_shape, batch)
    example = torch.randn(batch, *input_shape, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            expected = output_leaves(model(example))
    except TrtpruneError:
        raise
    except Exception as e:
        raise model_failed(model, e, example.shape) from e
    names = [n for n, _ in expected]
    try:
        with _quiet():
            program = torch.onnx.export(
                model,
                (example,),
                None,
                dynamo=True,
                external_data=False,
                input_names=[INPUT_NAME],
                output_names=names,
            )
            proto = onnxslim.slim(program.model_proto)
        onnx.checker.check_model(proto)
    except Exception as e:
        cause = e
        while cause is not None:  # torch.export wraps a Ctrl-C/SIGTERM in its own error: it is still a stop
            if isinstance(cause, KeyboardInterrupt):
                raise cause from e  # the same interrupt (SIGTERM keeps its exit status)
            cause = cause.__cause__ or cause.__context__
        first_line = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().split("\n")[0]  # no terminal colours
        raise TrtpruneError(
            f"exporting the model to ONNX failed: {type(e).__name__}: {first_line}",
            why=f"torch.onnx.export (dynamo) must trace the model with a static input of shape {tuple(example.shape)}",
            fix="run with -v for the full trace; data-dependent control flow must be removed from forward()",
        ) from e
    with atomic_path(path) as tmp:
        onnx.save(proto, tmp)
        diff = _parity(tmp, example, expected, atol, rtol, model)
    log.info(
        "exported %s | %d nodes | %d output(s) | max |ort - torch| = %.2e",
        path,
        len(proto.graph.node),
        len(names),
        diff,
    )
    return Export(Path(path), diff, len(proto.graph.node), tuple(names))


def _parity(
    path, example: torch.Tensor, expected: list[tuple[str, torch.Tensor]], atol: float, rtol: float, model=None
) -> float:
    """The largest |ONNX Runtime - torch| over every output; an error naming the output outside its tolerance, or
    one whose name or shape differ. An output is within tolerance when ``|ort - torch| <= atol + rtol * max|torch|``,
    or else when ONNX Runtime is about as close to the exact result as torch's own float32 is: both compared with
    ``model`` run in float64, ``|ort - exact| <= FP32_SLACK x max(|torch - exact|, that tolerance)`` (a detector's
    box decoding multiplies float32 rounding by the stride: YOLOv8n's pixel boxes differ by 0.2 px)."""
    sess = ort_session(path, 1)
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {sess.get_inputs()[0].name: example.numpy()})))
    exact = None
    worst = 0.0
    for i, (name, tensor) in enumerate(expected):
        ref = tensor.detach().float().numpy()
        if name not in got or got[name].shape != ref.shape:
            raise TrtpruneError(
                f"the ONNX export has no output '{name}' of shape {list(ref.shape)} "
                f"(it has {', '.join(f'{n} {list(v.shape)}' for n, v in got.items())})",
                why="the exporter flattened the model's outputs otherwise than torch returns them",
                fix="report the model; run with -v to see the exported graph",
            )
        diff = float(np.abs(got[name].astype(np.float64) - ref).max()) if ref.size else 0.0
        tolerance = atol + rtol * (float(np.abs(ref).max()) if ref.size else 0.0)
        if not diff <= tolerance:
            exact = exact if exact is not None else _float64_outputs(model, example)
            if exact is None or not _as_close_as_torch(got[name], ref, exact[i], tolerance):
                raise TrtpruneError(
                    f"the ONNX export of the model differs from torch by {diff:.3g} on output '{name}' "
                    f"(tolerance {tolerance:.3g})",
                    why="ONNX Runtime computes something other than the PyTorch model"
                    + ("" if exact is None else ", farther from the float64 result than torch's float32 is"),
                    fix="report the model; run with -v to see the exported graph",
                )
            log.debug("parity    | %s: %.3g off torch, as close to float64 as torch's float32 is", name, diff)
        worst = max(worst, diff)
    return worst


FP32_SLACK = 10  # ONNX Runtime may be this many times farther from float64 than torch's float32 is


def _float64_outputs(model, example: torch.Tensor) -> list[np.ndarray] | None:
    """Every output of ``model`` computed in float64 (a copy), or None where it cannot run so."""
    if model is None:
        return None
    import copy

    try:
        with torch.no_grad():
            out = copy.deepcopy(model).double().eval()(example.double())
        return [t.numpy() for _, t in output_leaves(out)]
    except Exception:  # custom kernels, float32-only code: the plain tolerance decides
        return None


def _as_close_as_torch(ort: np.ndarray, ref: np.ndarray, exact: np.ndarray, tolerance: float) -> bool:
    torch_error = float(np.abs(ref.astype(np.float64) - exact).max())
    return float(np.abs(ort.astype(np.float64) - exact).max()) <= FP32_SLACK * max(torch_error, tolerance)


def run_onnx(path: str | Path, x: np.ndarray, threads: int = 1) -> np.ndarray:
    """One forward pass with ONNX Runtime on CPU: the first output."""
    return run_onnx_all(path, x, threads)[0]


def run_onnx_all(path: str | Path, x: np.ndarray, threads: int = 1) -> list[np.ndarray]:
    """One forward pass with ONNX Runtime on CPU: every output, in the model's order."""
    sess = ort_session(path, threads)
    return sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})


def _tensors(graph):
    """Every tensor stored in a graph: initializers, sparse ones, and node attributes (subgraphs too)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for sparse in [*([a.sparse_tensor] if a.HasField("sparse_tensor") else []), *a.sparse_tensors]:
                yield from (sparse.values, sparse.indices)
            for sub in [*([a.g] if a.HasField("g") else []), *a.graphs]:
                yield from _tensors(sub)


def _inside(folder: Path, location: str) -> bool:
    try:
        return (folder / location).resolve().is_relative_to(folder)
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL in the name
        return False


def _check_external_data(proto, path: Path) -> None:
    """Refuse external-data locations outside the model's folder (absolute, ``..``, or a link leading out):
    a model file must not make the engine read other files of the machine."""
    import itertools

    from onnx import TensorProto

    folder = path.parent.resolve()
    tensors = itertools.chain(_tensors(proto.graph), *(_node_tensors(f.node) for f in proto.functions))
    for t in tensors:
        if t.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        if not location or Path(location).is_absolute() or not _inside(folder, location):
            raise TrtpruneError(
                f"'{path}' refers to external data outside its folder: tensor '{t.name}' at '{location}'",
                why="an ONNX model may keep weights in files beside it, never elsewhere on the machine "
                "(absolute paths, '..' and links leading out are refused)",
                fix="keep the external data files in the model's folder, or save the model with its weights "
                "inside (onnx.save(model, path, save_as_external_data=False))",
            )


def _check_input_type(inp, path: Path) -> None:
    """An input trtprune can feed: a tensor of numbers (not strings, sequences or maps)."""
    import onnx

    tensor = inp.type.HasField("tensor_type")
    if tensor and inp.type.tensor_type.elem_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return
    if tensor:
        found = "a tensor of strings" if inp.type.tensor_type.elem_type == onnx.TensorProto.STRING else "untyped"
    else:
        found = f"a {(inp.type.WhichOneof('value') or 'value').removesuffix('_type')}"
    raise TrtpruneError(
        f"input '{inp.name}' of '{path}' is {found}",
        why="trtprune times and scores models of numeric tensors (a batch of images), fed with made-up or image "
        "data; it cannot make up strings or sequences",
        fix="export the model with a numeric input (e.g. float32 images) and do the rest outside it",
    )


def _onnx_inside(folder: Path) -> str:
    """``: it holds a.onnx, b.onnx`` for the message about a folder given as an ONNX file (the first few)."""
    found = sorted(p.name for p in folder.glob("*.onnx"))
    return f": it holds {', '.join(found[:4])}{', ...' if len(found) > 4 else ''}" if found else ""


def read_onnx(path: str | Path):
    """Load and check an ONNX file given by the user; clear errors for missing, corrupt or dynamic."""
    import onnx

    path = Path(path)
    if path.is_dir():
        raise TrtpruneError(
            f"ONNX file '{path}' is a folder",
            why="an ONNX model is one .onnx file (e.g. runs/<name>/pruned.onnx, or one written by trtprune export)",
            fix=f"give the .onnx file itself{_onnx_inside(path)}",
        )
    if not path.is_file():
        raise TrtpruneError(f"ONNX file '{path}' does not exist", fix="check the path, or run 'trtprune export' first")

    def invalid(e: Exception) -> TrtpruneError:
        return TrtpruneError(
            f"'{path}' is not a valid ONNX model: {type(e).__name__}: {(str(e).splitlines() or [''])[0]}",
            why="it is truncated, corrupt, or not ONNX",
            fix="export it again (trtprune export) or check how it was copied",
        )

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise invalid(e) from e
    _check_external_data(proto, path)  # before anything reads the model's external data
    try:
        onnx.checker.check_model(str(path))  # by path: external data is looked for beside the model
    except Exception as e:
        raise invalid(e) from e
    for inp in proto.graph.input:
        _check_input_type(inp, path)
        dims = inp.type.tensor_type.shape.dim
        if any(not d.HasField("dim_value") for d in dims):
            shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]
            raise TrtpruneError(
                f"input '{inp.name}' of '{path}' has a dynamic shape {shape}",
                why="latency is measured for one static shape (batch included)",
                fix="export with a static batch (trtprune export --batch N)",
            )
    return proto
