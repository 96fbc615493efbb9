"""Whole-network latency predicted from the LUT.

``predict = a + b * sum(layer latencies at the planned counts)``. The plain sum over-predicts a whole
ResNet-56 by 1.10-1.38x on this CPU (single layers pay per-graph costs that a network shares, and the
non-conv ops are missing), so ``a`` and ``b`` are fitted by least squares on a few whole networks
measured on the device - in the same interleaved run as anything they are compared with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .layers import Layer
from .profile import Point, Profiler
from .prune import ChannelGroup


def planned_points(layers: Mapping[str, Layer], groups: list[ChannelGroup], keep: Mapping[str, int]) -> list[Point]:
    """Every layer as a LUT point at the channel counts a plan gives it (others at their current counts)."""
    out_group, in_group = {}, {}
    for g in groups:
        for name in g.producers:
            out_group[name] = g.name
        for name in g.consumers:
            in_group[name] = g.name
    points = []
    for name, layer in layers.items():
        cout = keep.get(out_group.get(name, ""), layer.cout)
        cin = cout if layer.signature.depthwise else keep.get(in_group.get(name, ""), layer.cin)
        points.append((layer.signature, cin, cout))
    return points


def layer_sums(profiler: Profiler, plans: list[list[Point]]) -> list[float]:
    """The summed layer latency (ms) of each plan; every missing point of every plan in one batch."""
    flat = [p for plan in plans for p in plan]
    lat = profiler.latencies(flat)
    sums, i = [], 0
    for plan in plans:
        sums.append(float(sum(lat[i : i + len(plan)])))
        i += len(plan)
    return sums


@dataclass(frozen=True)
class Overhead:
    """``measured ~ a_ms + b * layer_sum``, fitted on whole-network measurements."""

    a_ms: float
    b: float

    @classmethod
    def fit(cls, layer_sums_ms, measured_ms) -> Overhead:
        x, y = np.asarray(layer_sums_ms, float), np.asarray(measured_ms, float)
        if len(x) < 2 or np.ptp(x) == 0:
            return cls(0.0, float(np.median(y / x)))  # one point (or all equal): a pure scale
        b, a = np.polyfit(x, y, 1)
        return cls(float(a), float(b))

    def __call__(self, layer_sum_ms: float) -> float:
        return self.a_ms + self.b * layer_sum_ms

    def to_dict(self) -> dict:
        return asdict(self)


class Predictor:
    """``predict(keep_channels) -> ms`` for one model on one device, from the LUT and a fitted overhead.

    ``calibrate`` prunes a few sub-nets for real, measures them whole in one interleaved run and fits
    the overhead model; ``subnet`` builds and exports any sub-net, checking its layers are the planned ones.
    """

    def __init__(self, model: str, backend, lut, workdir: str | Path):
        import onnx

        from .export import onnx_from_torch
        from .layers import layers_of
        from .models import build_model, model_spec
        from .prune import GroupPruner

        self.spec, self.backend, self.workdir = model_spec(model), backend, Path(workdir)
        dense = build_model(self.spec)
        self.groups = GroupPruner(dense, self.spec.input_shape).groups()
        onnx_from_torch(dense, self.workdir / "dense.onnx", self.spec.input_shape, backend.device.batch)
        self.layers = layers_of(onnx.load(str(self.workdir / "dense.onnx")))
        self.profiler = Profiler(backend, lut)
        self.overhead: Overhead | None = None

    def points(self, keep: Mapping[str, int]) -> list[Point]:
        return planned_points(self.layers, self.groups, keep)

    def subnet(self, keep: Mapping[str, int], path: str | Path) -> Path:
        """Prune a fresh model to ``keep``, export it, and check its layers are exactly the planned ones."""
        import onnx

        from .export import onnx_from_torch
        from .layers import layers_of
        from .models import build_model
        from .prune import GroupPruner

        model = build_model(self.spec)
        GroupPruner(model, self.spec.input_shape).prune_to(keep)
        onnx_from_torch(model, path, self.spec.input_shape, self.backend.device.batch)
        actual = sorted(repr((x.signature, x.cin, x.cout)) for x in layers_of(onnx.load(str(path))).values())
        assert actual == sorted(map(repr, self.points(keep))), f"{path}: layers differ from the plan"
        return Path(path)

    def calibrate(self, plans: list[Mapping[str, int]], rounds: int = 30) -> list[float]:
        """Fit the overhead model on ``plans`` measured whole (one interleaved run); returns their ms."""
        paths = [self.subnet(k, self.workdir / f"calibration{i}.onnx") for i, k in enumerate(plans)]
        measured = [t.median_ms for t in self.backend.compare(paths, rounds=rounds)]
        self.overhead = Overhead.fit(layer_sums(self.profiler, [self.points(k) for k in plans]), measured)
        return measured

    def predict(self, keep: Mapping[str, int]) -> float:
        if self.overhead is None:
            raise RuntimeError("calibrate() first")
        return self.overhead(layer_sums(self.profiler, [self.points(keep)])[0])
