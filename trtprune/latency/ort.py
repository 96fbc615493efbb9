"""ONNX Runtime on the CPU: the embedded default engine, measured with the protocol in DESIGN.md.

* Sessions use the optimisation level deployments use (``ORT_ENABLE_ALL``: the NCHWc layout and its
  stairs come from it), explicit intra-op threads and one inter-op thread.
* When several sessions are alive their thread pools do not spin while idle, so an idle session cannot
  steal the cores of the one being timed.
* Every model is warmed up, then timed in ``rounds``; each round visits the models in a fresh random
  order and times a short burst of runs of each, so slow drift of the machine is spread evenly.
"""

from __future__ import annotations

import math
import platform
import random
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from trtprune.errors import TrtpruneError
from trtprune.latency.base import Backend, Burst
from trtprune.log import progress


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, str]:
    """(CPU model name, widest vector ISA) - part of the cache key: the stairs depend on both."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and ":" in line:
                model = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and ":" in line:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = next(
        (i for i, f in (("avx512", "avx512f"), ("avx2", "avx2"), ("neon", "asimd")) if f in flags), platform.machine()
    )
    return model, isa


def _ort_version() -> str:
    import onnxruntime as ort

    return ort.__version__


def ort_session(model: str | Path | bytes, threads: int = 1, quiet_pool: bool = False):
    """An ONNX Runtime CPU session as deployments run it (``ORT_ENABLE_ALL``), with explicit threads.

    ``model`` is a file or a serialised model. ``quiet_pool`` stops idle intra-op threads from
    spinning, for when several sessions are alive.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if quiet_pool:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        source = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        what = "a serialised model" if isinstance(model, bytes) else f"'{model}'"
        raise TrtpruneError(
            f"ONNX Runtime cannot load {what}: {(str(e).splitlines() or [''])[0]}",
            why="the model uses an operator or type ONNX Runtime's CPU engine does not implement, or it is broken",
            fix="check the file with 'trtprune export' or onnx.checker; custom operators cannot be timed on cpu",
        ) from e


# ONNX Runtime's input types and the numpy arrays that feed them (strings cannot be made up)
INPUT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}
IMAGE_DTYPES = ("tensor(float)", "tensor(float16)", "tensor(double)")


def input_dtype(inp, path) -> type:
    """The numpy type of ONNX Runtime input ``inp`` of the model at ``path``; a string (or other) input is an error."""
    if inp.type not in INPUT_DTYPES:
        raise TrtpruneError(
            f"'{path}' takes input '{inp.name}' of type {inp.type}",
            why="trtprune times and scores models of numeric tensors (a batch of images), fed with made-up or "
            "image data; it cannot make up strings or sequences",
            fix="export the model with a numeric input (e.g. float32 images) and do the rest outside it",
        )
    return INPUT_DTYPES[inp.type]


def image_dtype(inp, path) -> type:
    """The numpy type a batch of images is fed to input ``inp`` in: float32, float16 or float64; an integer input
    (token ids, raw pixels) is an error: trtprune feeds normalised float images."""
    dtype = input_dtype(inp, path)
    if inp.type not in IMAGE_DTYPES:
        raise TrtpruneError(
            f"'{path}' takes input '{inp.name}' of type {inp.type}, not float images",
            why="trtprune scores a model on a batch of images normalised with mean and std, as floats",
            fix="evaluate the ONNX export of a model that takes float images (trtprune export --model ...)",
        )
    return dtype


# The heavy ops of an optimised graph: run by quantized kernels, or in floating point
INT8_OPS = {"QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat"}
FLOAT_OPS = {"Conv", "FusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "ConvTranspose"}


def optimized_ops(model: str | Path | bytes) -> list[tuple[str, str, str]]:
    """(domain, op type, node name) of every node of the graph ONNX Runtime runs for ``model`` on this CPU
    (``ORT_ENABLE_ALL``, as :func:`ort_session`), in order: what was fused, blocked or quantized."""
    import tempfile

    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    with tempfile.TemporaryDirectory() as tmp:
        opts.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        source = model if isinstance(model, bytes) else str(model)
        ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
        return [(n.domain or "ai.onnx", n.op_type, n.name) for n in onnx.load(opts.optimized_model_filepath).graph.node]


def int8_kernels(model: str | Path | bytes) -> dict[str, list[str]]:
    """The heavy nodes (convolutions, matrix products) ONNX Runtime runs for ``model`` as ``"int8"`` kernels and
    as ``"float"`` ones: a Q/DQ model whose convolutions stay float is not an INT8 model on this engine."""
    ops = optimized_ops(model)
    return {
        "int8": [name or op for _, op, name in ops if op in INT8_OPS],
        "float": [name or op for _, op, name in ops if op in FLOAT_OPS],
    }


MAX_SPAN_ROUNDS = 50  # span_s never stretches a run beyond this many times its rounds


def _timed_runs(sess, feed: dict, n: int) -> list[float]:
    """Milliseconds of ``n`` back-to-back runs."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        sess.run(None, feed)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


class OrtBackend(Backend):
    name = "ort"
    # ResNet-56 vs a pruned copy, 8 runs each (make bench-confirm, 2026-12-02, bench/results/confirm.json):
    # ratio std 0.026 at 30 rounds (1.7 s per run), 0.008 at 100 rounds (5.0 s per run).
    deciding_rounds = 100

    def activate(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:  # a hard dependency, but say how to fix a broken environment
            raise TrtpruneError("onnxruntime is not installed", fix="pip install onnxruntime") from e
        from trtprune.latency.devices import ORT_PRECISIONS

        if self.device.precision not in ORT_PRECISIONS:
            raise TrtpruneError(
                f"device '{self.device.name}' asks for {self.device.precision} on ONNX Runtime",
                fix="use precision fp32, or int8 (models are timed in ONNX Runtime's Q/DQ form)",
            )

    def key(self) -> str:
        model, isa = cpu_info()
        d = self.device
        return f"ort-{_ort_version()}|cpu|{model}|{isa}|t{d.threads}|b{d.batch}|{d.precision}"

    def _feed(self, sess, model) -> dict:
        """Random inputs of the model's static shapes and types; the batch must be the device's."""
        feed, rng = {}, np.random.default_rng(0)
        for inp in sess.get_inputs():
            shape = inp.shape
            if not all(isinstance(s, int) for s in shape):
                raise TrtpruneError(
                    f"model input '{inp.name}' has a dynamic shape {shape}",
                    fix=f"export with a static batch (trtprune export --batch {self.device.batch})",
                )
            if shape[0] != self.device.batch:
                raise TrtpruneError(
                    f"model batch is {shape[0]} but device '{self.device.name}' times batch {self.device.batch}",
                    fix=f"export with --batch {self.device.batch}",
                )
            dtype = input_dtype(inp, "the serialised model" if isinstance(model, bytes) else model)
            if np.issubdtype(dtype, np.floating):
                feed[inp.name] = rng.standard_normal(shape).astype(dtype)
            else:  # indices, counts, flags: zeros are valid for every one of them
                feed[inp.name] = np.zeros(shape, dtype)
        return feed

    def bursts(
        self,
        models,
        *,
        rounds: int = 30,
        warmup: int = 10,
        round_ms: float = 25.0,
        max_runs: int = 20,
        seed: int = 0,
        renew: bool = False,
        span_s: float = 0.0,
    ) -> list[list[Burst]]:
        """Interleaved timing of files or serialised models; ``result[model][round]`` is one burst.

        Each round visits the models in a fresh random order and gives each ~``round_ms`` of back-to-back
        runs. With ``renew`` every burst runs in a newly built session (warmed up again), so only one
        session is alive at a time and per-session effects - where the engine happened to place weights
        and buffers, worth 1-2 % on micro-layers here - average out over the rounds instead of biasing a
        model for the whole run. ``span_s``: more rounds than ``rounds`` if needed for the run to last that
        long (estimated from the first round, at most ``MAX_SPAN_ROUNDS`` times ``rounds``), so that a spell
        of interference cannot cover all of a model's bursts.
        """
        assert self.active, "use the backend as a context manager"
        if rounds < 1 or warmup < 1:
            raise TrtpruneError(f"rounds={rounds}, warmup={warmup}: both must be at least 1")
        models = [m if isinstance(m, bytes) else Path(m) for m in models]
        threads, quiet = self.device.threads, len(models) > 1 and not renew
        sessions, feeds, runs = [], [], []
        for m in models:
            sess = ort_session(m, threads, quiet_pool=quiet)
            feed = self._feed(sess, m)
            per_run_ms = float(np.median(_timed_runs(sess, feed, warmup)))  # first runs are slow: median
            runs.append(max(1, min(max_runs, int(round_ms / max(per_run_ms, 1e-3)))))
            feeds.append(feed)
            sessions.append(None if renew else sess)
        out: list[list[Burst]] = [[] for _ in models]
        rng = random.Random(seed)
        order = list(range(len(models)))

        def one_round() -> None:
            rng.shuffle(order)
            for i in order:
                sess = sessions[i]
                if sess is None:
                    sess = ort_session(models[i], threads)
                    _timed_runs(sess, feeds[i], max(2, warmup // 3))
                out[i].append(Burst(time.perf_counter(), _timed_runs(sess, feeds[i], runs[i])))
                del sess

        try:
            t0 = time.perf_counter()
            one_round()
            first_s = time.perf_counter() - t0
            total = max(rounds, min(MAX_SPAN_ROUNDS * rounds, math.ceil(span_s / max(first_s, 1e-9))))
            for _ in progress(range(1, total), desc=f"timing {len(models)} model(s)", unit="round"):
                one_round()
        finally:
            sessions.clear()
        return out

    def kernel(self, model) -> str:
        """ "nchwc" if ONNX Runtime runs the model's conv as a blocked NCHWc kernel, "int8" if as a quantized
        kernel (QLinearConv, QGemm...), else "plain".

        Read from the optimised graph ONNX Runtime itself produces, not from a rule about channel
        counts: a blocked layer measured alone pays a reorder in and out, which consecutive blocked
        layers in a network do not, and an unblocked layer between blocked ones adds reorders.
        """
        ops = optimized_ops(model)
        if any(op in INT8_OPS for _, op, _ in ops):
            return "int8"
        return "nchwc" if any(domain == "com.microsoft.nchwc" for domain, _, _ in ops) else "plain"

    def info(self) -> dict:
        model, isa = cpu_info()
        return {
            **super().info(),
            "engine": "onnxruntime",
            "engine_version": _ort_version(),
            "provider": "CPUExecutionProvider",
            "cpu": model,
            "isa": isa,
        }
