"""The backend interface and the timing summary every backend returns."""

from __future__ import annotations

import abc
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger("trtprune.latency")


@dataclass(frozen=True)
class Timing:
    """Latency of one model on one device: per-inference milliseconds over ``n`` timed runs."""

    median_ms: float
    p90_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms) -> Timing:
        a = np.asarray(samples_ms, dtype=np.float64)
        return cls(float(np.median(a)), float(np.percentile(a, 90)), int(a.size))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Burst:
    """Back-to-back runs of one model: when they started (perf_counter seconds) and each run's time."""

    start_s: float
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return float(np.median(self.samples_ms))


class Backend(abc.ABC):
    """Times ONNX models on one device. ``__init__`` only stores; ``__enter__`` acquires the engine.

    ``compare`` is the primitive: models are measured in one interleaved run so that drift of the
    machine affects all of them alike. ``measure`` is ``compare`` of one model.
    """

    name = "base"
    # Rounds of the interleaved runs whose ratio decides something: a search's confirmation of a plan, the
    # report's budget verdict. What a round costs differs by backend (ONNX Runtime: a burst of runs in this
    # process; trtexec: one process per model and round), so each backend says how many it takes.
    deciding_rounds = 30
    # What a backend can do besides timing; callers test these flags, never hasattr.
    builds_engines = False  # ``build(onnx, out)`` writes the deployable engine (a TensorRT .plan)
    runs_outputs = False  # ``outputs(onnx, x)`` runs a model on the engine: parity against ONNX Runtime
    layer_profiles = False  # ``group_profile(onnx, groups)``: per-layer times of a whole engine, per group

    def __init__(self, device):
        self.device = device
        self.active = False

    def __enter__(self):
        self.activate()
        self.active = True
        return self

    def __exit__(self, *exc):
        self.close()
        self.active = False

    def activate(self) -> None:  # noqa: B027 - optional hook
        """Import the engine, check the hardware. Raise TrtpruneError with the fix if unusable."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release every session, engine and device buffer."""

    @abc.abstractmethod
    def key(self) -> str:
        """Everything that changes a latency: engine and version, device/ISA, threads, batch, precision."""

    @abc.abstractmethod
    def bursts(self, models: list[Path | bytes], **options) -> list[list[Burst]]:
        """Time ``models`` (files or serialised ONNX) in one interleaved run: ``result[model][round]``."""

    def compare(self, models: list[Path | bytes], **options) -> list[Timing]:
        """One Timing per model, over all runs of one interleaved run (see ``bursts``)."""
        timings = [Timing.from_samples([x for b in bs for x in b.samples_ms]) for bs in self.bursts(models, **options)]
        for i, (m, t) in enumerate(zip(models, timings)):
            level, name = (logging.DEBUG, f"model {i}") if isinstance(m, bytes) else (logging.INFO, Path(m).name)
            log.log(level, "%-32s | %8.3f ms median | %8.3f ms p90 | n=%d", name, t.median_ms, t.p90_ms, t.n)
        return timings

    def kernel(self, model: Path | bytes) -> str:
        """How the engine runs a (single-layer) model, when it matters for combining layers; "" if unknown."""
        return ""

    def build(self, model: Path, out: Path) -> Path:
        """Build the deployable engine of ``model`` at ``out`` (backends with ``builds_engines``)."""
        raise NotImplementedError(f"{self.name} builds no engines")

    def outputs(self, model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
        """``model``'s outputs by name for the batch ``x`` computed by the engine (backends with ``runs_outputs``)."""
        raise NotImplementedError(f"{self.name} does not run models for their outputs")

    def measure(self, model: Path | bytes, **options) -> Timing:
        return self.compare([model], **options)[0]

    def info(self) -> dict:
        """Facts for reports: engine version, device, threads, batch, precision."""
        d = self.device
        return {
            "backend": self.name,
            "device": d.name,
            "batch": d.batch,
            "threads": d.threads,
            "precision": d.precision,
            "key": self.key(),
        }
