"""The backend interface and the timing summary every backend returns."""

from __future__ import annotations

import abc
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


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


class Backend(abc.ABC):
    """Times ONNX models on one device. ``__init__`` only stores; ``__enter__`` acquires the engine.

    ``compare`` is the primitive: models are measured in one interleaved run so that drift of the
    machine affects all of them alike. ``measure`` is ``compare`` of one model.
    """

    name = "base"

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
    def compare(self, models: list[Path], **options) -> list[Timing]:
        """Time ``models`` in one interleaved run; one Timing per model, in the given order."""

    def measure(self, model: Path, **options) -> Timing:
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
