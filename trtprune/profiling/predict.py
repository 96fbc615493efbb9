"""Whole-network latency predicted from the LUT.

``predict = a + sum_k b_k * (sum of the layer latencies of kernel class k, at the planned counts)``.
The plain sum over-predicts a whole ResNet-56 by 1.0-2.2x on this CPU (a single layer pays per-run
costs a network pays once, the non-conv ops are missing, and blocked and unblocked kernels combine
differently), so ``a`` and ``b`` are fitted by least squares on a few whole networks measured on the
device, spanning the sizes to predict (a linear fit extrapolated below its smallest network was off
by 20 % here).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from torch import nn

from trtprune.deploy.export import onnx_from_torch
from trtprune.deploy.quantize import qdq_for_timing
from trtprune.errors import TrtpruneError
from trtprune.profiling.layers import Layer, layers_of, point
from trtprune.profiling.profile import Point, Profiler
from trtprune.pruning.prune import ChannelGroup, GroupPruner
from trtprune.sources.models import ModelSpec, build_model, model_spec


def device_form(path: Path, backend) -> None:
    """Whole models are timed in the form the device runs: on int8 devices, their Q/DQ form (in place)."""
    if backend.device.int8_form:
        qdq_for_timing(path, backend.device.int8_form)


def export_timed(model: nn.Module, path: str | Path, input_shape, backend) -> Path:
    """``model`` exported to ``path`` in the form ``backend``'s device times (see :func:`device_form`)."""
    onnx_from_torch(model, path, tuple(input_shape), backend.device.batch)
    device_form(Path(path), backend)
    return Path(path)


def planned_points(layers: Mapping[str, Layer], groups: list[ChannelGroup], keep: Mapping[str, int]) -> list[Point]:
    """Every layer as a LUT point at the channel counts a plan gives it (others at their current counts).

    A layer's inputs may come from several groups (a concat) or from a group and the rest of the model:
    its input count drops by what each of its groups removes (times the fan of a flatten in between)."""
    out_group: dict[str, ChannelGroup] = {}
    removed_in: dict[str, int] = {}
    for g in groups:
        removed = g.channels - keep.get(g.name, g.channels)
        for name in g.producers:
            out_group[name] = g
        for name in g.consumers:
            removed_in[name] = removed_in.get(name, 0) + removed * g.fan(name)
        for name in g.self_fed:
            removed_in[name] = removed_in.get(name, 0) + removed
    points = []
    for layer in layers.values():
        g = out_group.get(layer.name)
        cout = keep.get(g.name, layer.cout) if g is not None else layer.cout
        cin = cout if layer.signature.depthwise else layer.cin - removed_in.get(layer.name, 0)
        points.append(point(layer.signature, cin, cout))
    return points


def layer_sums(profiler: Profiler, plans: list[list[Point]]) -> list[dict[str, float]]:
    """Each plan's summed layer latency (ms) per kernel class; every missing point of every plan is
    measured in one batch."""
    entries = profiler.entries([p for plan in plans for p in plan])
    sums, i = [], 0
    for plan in plans:
        per_kernel: dict[str, float] = {}
        for e in entries[i : i + len(plan)]:
            per_kernel[e.kernel] = per_kernel.get(e.kernel, 0.0) + e.ms
        sums.append(per_kernel)
        i += len(plan)
    return sums


@dataclass(frozen=True)
class Overhead:
    """``measured ~ a_ms + sum_k b[k] * (layer sum of kernel class k)``, fitted on whole networks.

    One coefficient per kernel class: ONNX Runtime's blocked layers measured alone pay reorders that a
    chain of them in a network does not, while an unblocked layer in a network adds reorders around it,
    so the two kinds of single-layer latency add up differently.
    """

    a_ms: float
    b: dict[str, float]

    @classmethod
    def fit(cls, sums: list[dict[str, float]], measured_ms) -> Overhead:
        """Least squares; one coefficient per kernel class only where the networks tell them apart.

        A class needs at least 5 % of the layer latency in two networks, and every per-class coefficient
        must be plausible (0.5..2: a layer costs roughly what it costs alone); otherwise one shared
        coefficient is fitted - two random sub-nets with a few unblocked layers once gave -261."""
        kinds = sorted({k for s in sums for k in s})
        y = np.asarray(measured_ms, float)
        x = np.array([[s.get(k, 0.0) for k in kinds] for s in sums])
        total = x.sum(1)
        shares = x / np.maximum(total[:, None], 1e-12)
        separable = (
            len(kinds) > 1
            and len(y) >= len(kinds) + 2
            and all((shares[:, i] >= 0.05).sum() >= 2 for i in range(len(kinds)))
        )
        if separable:
            coef, *_ = np.linalg.lstsq(np.column_stack([np.ones(len(y)), x]), y, rcond=None)
            if all(0.5 <= c <= 2.0 for c in coef[1:]):
                return cls(float(coef[0]), {k: float(c) for k, c in zip(kinds, coef[1:])})
        if len(y) < 2 or np.ptp(total) == 0:  # one network (or all alike): a pure scale
            return cls(0.0, dict.fromkeys(kinds, float(np.median(y / total))))
        b, a = np.polyfit(total, y, 1)
        return cls(float(a), dict.fromkeys(kinds, float(b)))

    def __call__(self, sums: dict[str, float]) -> float:
        fallback = float(np.mean(list(self.b.values())))  # a class not seen in calibration
        return self.a_ms + sum(self.b.get(k, fallback) * v for k, v in sums.items())

    def to_dict(self) -> dict:
        return asdict(self)


class Predictor:
    """``predict(keep_channels) -> ms`` for one model on one device, from the LUT and a fitted overhead.

    ``calibrate`` prunes a few sub-nets for real, measures them whole in one interleaved run and fits
    the overhead model; ``subnet`` builds and exports any sub-net, checking its layers are the planned ones.
    """

    def __init__(
        self,
        model: nn.Module | str | ModelSpec,
        backend,
        lut,
        workdir: str | Path,
        protocol: str = "full",
        ignore: Iterable[str] = (),
        input_shape: tuple[int, int, int] | None = None,
    ):
        """``model``: the dense network (a copy is kept; the caller's is left as it is), or a model name or spec
        to build it from; ``input_shape`` (C, H, W) is the spec's unless given."""
        import onnx

        if isinstance(model, nn.Module):
            if input_shape is None:
                raise TypeError("Predictor needs the input_shape of an nn.Module")
            self.dense = copy.deepcopy(model).eval()
        else:
            spec = model_spec(model)
            self.dense, input_shape = build_model(spec), input_shape or spec.input_shape
        self.input_shape, self.backend, self.workdir = tuple(input_shape), backend, Path(workdir)
        self.ignore = tuple(ignore)
        self.groups = GroupPruner(self.dense, self.input_shape, self.ignore).groups()
        onnx_from_torch(self.dense, self.workdir / "dense.onnx", self.input_shape, backend.device.batch)
        self.layers = layers_of(onnx.load(str(self.workdir / "dense.onnx")))
        device_form(self.workdir / "dense.onnx", backend)
        self.profiler = Profiler(backend, lut, protocol=protocol)
        self.overhead: Overhead | None = None

    def points(self, keep: Mapping[str, int]) -> list[Point]:
        return planned_points(self.layers, self.groups, keep)

    def subnet(self, keep: Mapping[str, int], path: str | Path) -> Path:
        """Prune a fresh model to ``keep``, export it, and check its layers are exactly the planned ones."""
        import onnx

        model = copy.deepcopy(self.dense)  # latency does not depend on the weights: l1 picks the channels
        GroupPruner(model, self.input_shape, self.ignore).prune_to(keep)
        onnx_from_torch(model, path, self.input_shape, self.backend.device.batch)
        actual = layers_of(onnx.load(str(path)))
        device_form(path, self.backend)
        planned = dict(zip(self.layers, self.points(keep)))
        differ = [
            f"{key}: planned {p[1]}->{p[2]} ch, exported "
            + (f"{actual[key].cin}->{actual[key].cout} ch" if key in actual else "nothing")
            for key, p in planned.items()
            if key not in actual or (actual[key].signature, actual[key].cin, actual[key].cout) != p
        ] + [f"{key}: exported but not planned" for key in actual if key not in planned]
        if differ:
            raise TrtpruneError(
                f"the pruned model's layers differ from the plan: {'; '.join(differ[:4])}",
                why="the latency model maps each channel group to the ONNX layers it sets; for this model the "
                "mapping misses a structure",
                fix="report the model; meanwhile keep the named layers whole with --ignore",
            )
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
