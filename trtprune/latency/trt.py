"""TensorRT: engines built by ``trtexec`` and timed by the resident timer, here or on a Jetson over SSH.

Engines are built on the device they run on, once per ONNX model and settings (cached by content in the
runner's folder; TensorRT's timing cache persists per device key). Timing follows NVIDIA's guidance for
stable numbers (TensorRT docs, "Performance Benchmarking"): warm-up, CUDA graphs to remove launch overhead,
no host/device copies, per-inference GPU time between CUDA events. One run of the resident timer
(:mod:`trtprune.latency.device_timer`) times a whole batch: it loads every engine once and interleaves the
rounds in seeded random order, so clock and thermal drift hit all models alike. ``trtexec`` also writes the
per-layer profiles (``--exportProfile``, ``--exportLayerInfo``) and runs single inferences for parity.

Command lines are made per TensorRT version (:mod:`trtprune.latency.trtexec_args`: 8.5, 8.6, 10.x, 11.x,
read from NVIDIA's sources); the model is rewritten into the form the version builds from
(:mod:`trtprune.latency.trt_onnx`: opset 17 for 8.x, fp16-typed for fp16 on 11, Q/DQ for int8).

Nothing here estimates a latency: without a GPU or TensorRT, activation fails with what is missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import tempfile
import time
from pathlib import Path

import numpy as np

from trtprune.errors import TrtpruneError
from trtprune.latency import device_timer
from trtprune.latency.base import Backend, Burst
from trtprune.latency.engine_map import group_times
from trtprune.latency.nvidia_hw import hardware
from trtprune.latency.runners import LocalRunner
from trtprune.latency.trt_onnx import device_form
from trtprune.latency.trtexec import check_output, load_export_profile, load_layer_info, trt_version
from trtprune.latency.trtexec_args import (
    build_argv,
    check_version,
    outputs_argv,
    precision_flags,
    profile_argv,
)

log = logging.getLogger("trtprune.latency")


def parse_version(text: str) -> tuple[int, int, int] | None:

    v = trt_version(text)
    if not v:
        return None
    parts = [int(x) for x in re.findall(r"\d+", v)[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


class TrtBackend(Backend):
    """TensorRT engines timed with trtexec on this machine (``gpu``, or a Jetson when run on it)."""

    name = "trt"
    builds_engines = True
    runs_outputs = True
    layer_profiles = True
    deciding_rounds = 5  # each round is one trtexec run (or API timing) of 200 inferences per model

    def __init__(self, device):
        super().__init__(device)
        self.runner = None
        self.version: tuple[int, int, int] | None = None
        self.gpu = ""  # the hardware part of the key
        self.hardware: dict = {}
        self.trtexec = device.trtexec
        self._engines: dict[str, str] = {}
        self._digests: dict[tuple[str, int, int], str] = {}  # (file, size, mtime) -> digest
        self._cache: str | None = None  # the timing cache's path where the runner runs
        self._timer_path: str | None = None  # the resident timer, copied where the runner runs
        self._timer_runs = 0
        self.timer_gpu = ""  # the GPU the timer found (CUDA's name of device 0 as it sees it)

    def _make_runner(self):
        return LocalRunner(self.device.timeout_s)

    def _missing(self) -> TrtpruneError:
        d = self.device
        host_var = f"{d.name.upper()}_HOST"
        return TrtpruneError(
            f"device '{d.name}' needs TensorRT: trtexec was not found ('{d.trtexec}', on PATH or in "
            "/usr/src/tensorrt/bin)",
            why="TensorRT engines are built and timed on the NVIDIA GPU or Jetson they run on; trtprune never "
            "estimates a TensorRT latency",
            fix=f"run trtprune on the Jetson or GPU machine (JetPack / the TensorRT container, see docker/), or "
            f"drive a Jetson over ssh with {host_var}=user@host, or use --device cpu",
        )

    def activate(self) -> None:
        self.runner = self._make_runner()
        found = self._find_trtexec()
        if found is None:
            raise self._missing()
        self.trtexec = found
        self.device = dataclasses.replace(self.device, trtexec=found)  # the command lines use what was found
        out = self.runner.run([found, "--help"], timeout_s=120).output
        self.version = parse_version(out)
        if self.version is None:
            raise TrtpruneError(
                f"'{found}' on {self.runner.where} did not say which TensorRT it is",
                why=f"expected a line like '&&&& RUNNING TensorRT.trtexec [TensorRT v8502]', got: {out.strip()[:200]}",
                fix="point trtexec in the device file at NVIDIA's trtexec",
            )
        check_version(self.version, self.runner.where)
        precision_flags(self.device.precision, self.version)  # a precision this version cannot build fails now
        self.gpu = self._hardware()
        log.info("trt | TensorRT %s | %s | %s", ".".join(map(str, self.version)), self.gpu, self.runner.where)

    def close(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None
        self._engines.clear()
        self._digests.clear()
        self._cache = None
        self._timer_path = None

    def _find_trtexec(self) -> str | None:
        candidates = [self.device.trtexec, "trtexec", "/usr/src/tensorrt/bin/trtexec"]
        for c in dict.fromkeys(candidates):
            hit = self.runner.which(c)
            if hit:
                return hit
        return None

    def _hardware(self) -> str:
        """Board, L4T release, power mode and clock lock of a Jetson, or the GPU's name (see nvidia_hw)."""
        text, self.hardware = hardware(lambda argv: self.runner.run(argv, timeout_s=60), self.visible_devices)
        return text

    visible_devices = None  # this process's CUDA_VISIBLE_DEVICES (the ssh backend: the device's GPU 0)

    def key(self) -> str:
        """TensorRT version, hardware (board, L4T, power mode, clocks), GPU or DLA core, precision, batch and
        workspace: everything that changes which kernels TensorRT picks and how fast they run."""
        assert self.version is not None, "activate the backend first"
        d = self.device
        dla = f"dla{d.dla_core}{'+gpu' if d.gpu_fallback else ''}" if d.dla_core is not None else "gpu"
        v = ".".join(map(str, self.version))
        return f"trt-{v}|{self.gpu}|{dla}|{d.precision}|b{d.batch}|ws{d.workspace_mib}"

    # -- engines -------------------------------------------------------------------------------------

    def _digest(self, model: Path | bytes) -> str:
        """The name of ``model``'s engine: its content + the backend key. A file is read and hashed once while
        it stays unchanged (same size and modification time)."""
        if isinstance(model, bytes):
            return hashlib.sha256(model + self.key().encode()).hexdigest()[:16]
        st = Path(model).stat()
        seen = (str(Path(model).resolve()), st.st_size, st.st_mtime_ns)
        if seen not in self._digests:
            self._digests[seen] = hashlib.sha256(Path(model).read_bytes() + self.key().encode()).hexdigest()[:16]
        return self._digests[seen]

    def _timing_cache(self) -> str:
        """TensorRT's timing cache for this device key, kept where the device keeps its files
        (``$XDG_CACHE_HOME`` or ``~/.cache``, ``trtprune/trt/``): later sessions reuse the kernel timings of
        earlier builds. In the session's folder instead if that cannot be made."""
        if self._cache is None:
            name = hashlib.sha256(self.key().encode()).hexdigest()[:16] + ".timing.cache"
            script = 'd="${XDG_CACHE_HOME:-$HOME/.cache}/trtprune/trt" && mkdir -p "$d" && echo "$d"'
            try:
                r = self.runner.run(["sh", "-c", script], timeout_s=60)
                found = r.output.strip().splitlines()[-1] if r.returncode == 0 and r.output.strip() else ""
            except TrtpruneError:
                found = ""
            self._cache = f"{found if found.startswith('/') else self.runner.workdir}/{name}"
        return self._cache

    def engine(self, model: Path | bytes) -> str:
        """Build (once per model and settings) and return the engine's path where the runner runs. The model is
        built in the form this TensorRT version takes (:func:`trtprune.latency.trt_onnx.device_form`)."""
        assert self.active, "use the backend as a context manager"
        digest = self._digest(model)
        if digest in self._engines:
            return self._engines[digest]
        raw = model if isinstance(model, bytes) else Path(model).read_bytes()
        name = "model" if isinstance(model, bytes) else Path(model).name
        with tempfile.TemporaryDirectory() as tmp:
            onnx = Path(tmp) / f"{digest}.onnx"
            onnx.write_bytes(device_form(raw, self.device, self.version))
            remote_onnx = self.runner.put(onnx, f"{digest}.onnx")
            plan = f"{self.runner.workdir}/{digest}.plan"
            argv = build_argv(self.device, self.version, remote_onnx, plan, timing_cache=self._timing_cache())
            self._call(argv, f"building {name}")
        self._engines[digest] = plan
        return plan

    def build(self, model: Path, out: Path) -> Path:
        """Build ``model`` into a TensorRT plan at ``out`` (atomically: a failed build leaves nothing)."""
        return self.runner.get(self.engine(model), Path(out))

    def _call(self, argv: list[str], what: str) -> str:

        t0 = time.perf_counter()
        r = self.runner.run(argv)
        try:
            check_output(r.output, r.returncode)
        except TrtpruneError as e:
            raise TrtpruneError(f"{what} with TensorRT on {self.runner.where} failed: {e.what}", e.why, e.fix) from None
        log.debug("trt | %s | %.1f s", what, time.perf_counter() - t0)
        return r.output

    # -- timing --------------------------------------------------------------------------------------

    def bursts(self, models, *, rounds: int = 5, iterations: int = 200, seed: int = 0, warmup: int = 20, **_ort_only):
        """``rounds`` interleaved bursts per model of ``iterations`` timed inferences, in one run of the resident
        timer on the device (:mod:`trtprune.latency.device_timer`): every engine is loaded once, the rounds are
        shuffled with ``seed``, and each sample is one inference's GPU time between CUDA events (CUDA graphs)."""
        assert self.active, "use the backend as a context manager"
        if rounds < 1 or iterations < 1:
            raise TrtpruneError(f"rounds={rounds}, iterations={iterations}: both must be at least 1")
        engines = [self.engine(m) for m in models]
        request = {
            "engines": engines,
            "rounds": rounds,
            "iterations": iterations,
            "warmup": warmup,
            "seed": seed,
            "dla_core": self.device.dla_core,
        }
        response = self._timer(request)
        t0 = time.perf_counter()
        return [[Burst(t0 + b["start_s"], [float(x) for x in b["ms"]]) for b in per] for per in response["bursts"]]

    def _timer(self, request: dict) -> dict:
        """One run of the resident timer on the device; its JSON response, or the error it reported."""
        with tempfile.TemporaryDirectory() as tmp:
            if self._timer_path is None:
                self._timer_path = self.runner.put(Path(device_timer.__file__), "device_timer.py")
            req = Path(tmp) / "request.json"
            req.write_text(json.dumps(request))
            remote_req = self.runner.put(req, f"request-{self._timer_runs}.json")
        self._timer_runs += 1
        t0 = time.perf_counter()
        r = self.runner.run_held([self.device.python, self._timer_path, remote_req])
        lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
        try:
            response = json.loads(lines[-1])
        except (IndexError, ValueError):
            raise TrtpruneError(
                f"the timer on {self.runner.where} gave no result (exit status {r.returncode}): "
                f"{r.output.strip()[-300:]}",
                fix=f"check that '{self.device.python}' runs there (set python in the device file otherwise)",
            ) from None
        if "error" in response:
            raise TrtpruneError(
                f"timing on {self.runner.where} failed: {response['error']}",
                fix="the message says what is missing; the timer needs the device's CUDA runtime and TensorRT's "
                "Python bindings (JetPack: python3-libnvinfer), matching the TensorRT of trtexec",
            )
        log.debug("trt | timer | %d engines x %d rounds | %.1f s", len(request["engines"]), request["rounds"],
                  time.perf_counter() - t0)  # fmt: skip
        self.timer_gpu = response.get("gpu", "")
        return response

    def profile_layers(self, model: Path | bytes, iterations: int = 200):
        """Per-layer times of the engine (``--exportProfile``) and its layers with the ONNX nodes each one
        fused (``--exportLayerInfo``): ``(list[LayerTime], list[EngineLayer])``."""

        engine = self.engine(model)
        prof, info = f"{engine}.profile.json", f"{engine}.layers.json"
        argv = profile_argv(self.device, self.version, engine, prof, info, iterations)
        self._call(argv, f"profiling {Path(engine).name}")
        with tempfile.TemporaryDirectory() as tmp:
            layers = load_export_profile(self.runner.get(prof, Path(tmp) / "p.json"))
            engine_layers = load_layer_info(self.runner.get(info, Path(tmp) / "l.json"))
        return layers, engine_layers

    def group_profile(self, model: Path, groups, iterations: int = 200):
        """The engine's per-layer times attributed to the model's channel groups (see trtprune.latency.engine_map)."""
        import onnx

        layer_times, engine_layers = self.profile_layers(model, iterations)
        return group_times(layer_times, engine_layers, onnx.load(str(model), load_external_data=False), groups)

    def outputs(self, model: Path, x: np.ndarray) -> dict[str, np.ndarray]:
        """The engine's outputs, by name, for the input ``x`` (one batch of the static shape): for parity checks
        against ONNX Runtime. trtexec reads raw float32 (``--loadInputs``) and writes JSON (``--exportOutput``)."""
        import onnx

        name = onnx.load(str(model), load_external_data=False).graph.input[0].name
        engine = self.engine(model)
        with tempfile.TemporaryDirectory() as tmp:
            raw = Path(tmp) / "input.bin"
            np.ascontiguousarray(x, dtype=np.float32).tofile(raw)
            remote_in, remote_out = self.runner.put(raw, "input.bin"), f"{engine}.output.json"
            argv = outputs_argv(self.device, self.version, engine, name, remote_in, remote_out)
            self._call(argv, f"running {Path(model).name} on one batch")
            exported = json.loads(self.runner.get(remote_out, Path(tmp) / "out.json").read_text())
        out = {}
        for entry in exported:
            dims = [int(d) for d in str(entry["dimensions"]).split("x") if d]
            out[entry["name"]] = np.asarray(entry["values"], dtype=np.float32).reshape(dims)
        return out

    def info(self) -> dict:
        out = super().info()
        out.update(
            tensorrt=".".join(map(str, self.version or ())),
            gpu=self.gpu,
            hardware=self.hardware,
            where=self.runner.where if self.runner else "",
            timer_gpu=self.timer_gpu,
        )
        return out
