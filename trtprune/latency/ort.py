"""ONNX Runtime on the CPU: the embedded default engine, measured with the protocol in DESIGN.md.

* Sessions use the optimisation level deployments use (``ORT_ENABLE_ALL``: the NCHWc layout and its
  stairs come from it), explicit intra-op threads and one inter-op thread.
* When several sessions are alive their thread pools do not spin while idle, so an idle session cannot
  steal the cores of the one being timed.
* Every model is warmed up, then timed in ``rounds``; each round visits the models in a fresh random
  order and times a short burst of runs of each, so slow drift of the machine is spread evenly.
"""

from __future__ import annotations

import logging
import platform
import random
import time
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import TrtpruneError
from ..log import progress
from .base import Backend, Timing

log = logging.getLogger(__name__)


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


def ort_session(path: str | Path, threads: int = 1, quiet_pool: bool = False):
    """An ONNX Runtime CPU session as deployments run it (``ORT_ENABLE_ALL``), with explicit threads.

    ``quiet_pool`` stops idle intra-op threads from spinning, for when several sessions are alive.
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
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise TrtpruneError(
            f"ONNX Runtime cannot load '{path}': {str(e).splitlines()[0]}",
            fix="check the file with 'trtprune export' or onnx.checker",
        ) from e


class OrtBackend(Backend):
    name = "ort"

    def activate(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:  # a hard dependency, but say how to fix a broken environment
            raise TrtpruneError("onnxruntime is not installed", fix="pip install onnxruntime") from e
        if self.device.precision != "fp32":
            raise TrtpruneError(
                f"device '{self.device.name}' asks for {self.device.precision} on ONNX Runtime",
                fix="use precision fp32; INT8 models are measured as quantised ONNX files",
            )

    def key(self) -> str:
        model, isa = cpu_info()
        d = self.device
        return f"ort-{_ort_version()}|cpu|{model}|{isa}|t{d.threads}|b{d.batch}|{d.precision}"

    def _feed(self, sess) -> dict:
        inp = sess.get_inputs()[0]
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
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        return {inp.name: x}

    def compare(
        self, models, *, rounds: int = 30, warmup: int = 10, round_ms: float = 25.0, max_runs: int = 20, seed: int = 0
    ) -> list[Timing]:
        """Interleaved timing. Each round gives each model ~``round_ms`` of back-to-back runs."""
        assert self.active, "use the backend as a context manager"
        if rounds < 1 or warmup < 1:
            raise TrtpruneError(f"rounds={rounds}, warmup={warmup}: both must be at least 1")
        models = [Path(m) for m in models]
        sessions = [ort_session(m, self.device.threads, quiet_pool=len(models) > 1) for m in models]
        try:
            feeds = [self._feed(s) for s in sessions]
            runs = []
            for sess, feed in zip(sessions, feeds):
                warm = []
                for _ in range(warmup):
                    t0 = time.perf_counter()
                    sess.run(None, feed)
                    warm.append((time.perf_counter() - t0) * 1e3)
                per_run_ms = float(np.median(warm))  # the first runs are slow (allocation, packing)
                runs.append(max(1, min(max_runs, int(round_ms / max(per_run_ms, 1e-3)))))
            samples: list[list[float]] = [[] for _ in models]
            rng = random.Random(seed)
            order = list(range(len(models)))
            for _ in progress(range(rounds), desc=f"timing {len(models)} model(s)", unit="round"):
                rng.shuffle(order)
                for i in order:
                    sess, feed = sessions[i], feeds[i]
                    for _ in range(runs[i]):
                        t0 = time.perf_counter_ns()
                        sess.run(None, feed)
                        samples[i].append((time.perf_counter_ns() - t0) / 1e6)
        finally:
            del sessions
        timings = [Timing.from_samples(s) for s in samples]
        for m, t in zip(models, timings):
            log.info("%-32s | %8.3f ms median | %8.3f ms p90 | n=%d", m.name, t.median_ms, t.p90_ms, t.n)
        return timings

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
