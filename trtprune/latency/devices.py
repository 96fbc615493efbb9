"""Named devices: a latency backend plus every option that changes latency.

Built in: ONNX Runtime CPU devices (``cpu``, ``cpu-b32``, ``cpu-2t``, and ``cpu-int8``: INT8 Q/DQ models), this
machine's NVIDIA GPU (``gpu``) and the Jetsons (``orin``: AGX, NX, Nano; ``xavier``: AGX, NX). A Jetson is driven
locally when trtprune runs on it, or over SSH when ``<NAME>_HOST`` is set (``ORIN_HOST=user@host``): engines are
built and timed on the device they run on.

User devices come from a TOML file, ``$TRTPRUNE_DEVICES`` or ``~/.config/trtprune/devices.toml``::

    [devices.lab-orin]            # --device lab-orin
    backend = "ssh"               # ort | trt | ssh
    host = "ubuntu@10.0.0.5"      # ssh only; host keys must already be known (StrictHostKeyChecking)
    precision = "fp16"            # fp32 | fp16 | int8 (Q/DQ models) | best (TensorRT <= 10); ort: fp32 | int8
    batch = 1
    workspace_mib = 2048          # TensorRT builder workspace (--memPoolSize=workspace:2048)
    dla_core = 0                  # optional: build for DLA core 0 ...
    gpu_fallback = true           # ... with layers DLA cannot run on the GPU (--allowGPUFallback)
    trtexec = "/usr/src/tensorrt/bin/trtexec"
    timeout_s = 1800              # one trtexec call (builds on a small board take minutes)
    python = "python3"            # the device's Python with TensorRT's bindings, for the resident timer
    description = "Orin NX on the lab bench"
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from trtprune.errors import TrtpruneError
from trtprune.fsutil import is_plain_name
from trtprune.latency import BACKENDS

PRECISIONS = ("fp32", "fp16", "int8", "best")
ORT_PRECISIONS = ("fp32", "int8")
JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"  # where JetPack installs it (not on PATH)
# user@host or host: letters, digits, dot, dash, underscore; never an option ("-o...") nor shell syntax
_HOST = re.compile(r"^(?:[A-Za-z0-9._][A-Za-z0-9._-]*@)?[A-Za-z0-9][A-Za-z0-9.-]*$")


@dataclass(frozen=True)
class Device:
    name: str
    backend: str  # key in trtprune.latency.BACKENDS
    batch: int = 1  # the static batch the model is exported and timed with
    threads: int = 1  # intra-op threads (ort); 1 is stable on small CPUs (two threads at batch 1 are erratic)
    precision: str = "fp32"
    description: str = ""
    host: str | None = None  # ssh: user@host of the device
    workspace_mib: int = 1024  # TensorRT builder workspace
    dla_core: int | None = None  # TensorRT: build for this DLA core (Xavier, Orin)
    gpu_fallback: bool = True  # with dla_core: run what DLA cannot on the GPU
    trtexec: str = "trtexec"  # path or name of trtexec on the machine that runs it
    timeout_s: float = 1800.0  # one trtexec or ssh call
    python: str = "python3"  # the device's Python with TensorRT's bindings: runs the resident timer

    @property
    def int8_form(self) -> str | None:
        """The Q/DQ form an int8 device runs (None for other precisions): "ort" - ONNX Runtime's CPU form, uint8
        activations with zero points and int8 per-channel weights, fused into QLinearConv - or "tensorrt" -
        symmetric int8 Q/DQ, TensorRT's explicit quantization (:mod:`trtprune.deploy.quantize`). Micro-models,
        whole networks and the delivered model of the device all take this form."""
        if self.precision != "int8":
            return None
        return "tensorrt" if self.backend in ("trt", "ssh") else "ort"  # (the test-only fake plays ONNX Runtime)

    @property
    def engine_suffix(self) -> str:
        """What the pipeline delivers: a TensorRT plan, or the ONNX model that ONNX Runtime runs."""
        return ".plan" if self.backend in ("trt", "ssh") else ".onnx"

    def check(self) -> Device:
        where = f"device '{self.name}'"
        if self.precision not in PRECISIONS:
            raise TrtpruneError(f"{where}: unknown precision '{self.precision}'", fix=f"use {', '.join(PRECISIONS)}")
        if self.batch < 1 or self.threads < 1 or self.workspace_mib < 1 or not 0 < self.timeout_s < math.inf:
            raise TrtpruneError(f"{where}: batch, threads, workspace_mib and timeout_s must be positive (and finite)")
        if self.dla_core is not None and self.dla_core < 0:
            raise TrtpruneError(f"{where}: dla_core {self.dla_core} is negative", fix="use 0 or 1, or leave it out")
        if self.dla_core is not None and self.precision not in ("fp16", "int8"):
            raise TrtpruneError(
                f"{where}: DLA runs fp16 or int8, not {self.precision}",
                why="trtexec builds DLA engines with fp16 enabled unless int8 is asked (sampleEngines.cpp, TensorRT "
                "8.6 and 10.3): a DLA device labelled fp32 would time fp16 engines",
                fix='set precision = "fp16" (or "int8" with a Q/DQ model) for the DLA device',
            )
        if self.backend == "ssh":
            check_host(self.host, where)
        if self.backend == "ort" and self.precision not in ORT_PRECISIONS:
            raise TrtpruneError(
                f"{where}: ONNX Runtime CPU devices run fp32 or int8 models, not {self.precision}",
                why="fp16 and 'best' are TensorRT builder precisions; ONNX Runtime's CPU engine runs the model's types",
                fix='use precision = "fp32", or "int8" (the model is timed and delivered in Q/DQ form)',
            )
        return self


def check_host(host: str | None, where: str = "ssh") -> str:
    if not host or not _HOST.match(host):
        raise TrtpruneError(
            f"{where}: '{host}' is not a valid ssh host",
            why="expected user@host or host (letters, digits, '.', '-', '_'); anything else could be read as an "
            "ssh option or shell syntax",
            fix="give the plain address, e.g. ORIN_HOST=ubuntu@192.168.1.20; put ports and keys in ~/.ssh/config",
        )
    return host


def _jetson(name: str, precision: str, what: str) -> Device:
    return Device(
        name,
        "trt",
        precision=precision,
        trtexec=JETSON_TRTEXEC,
        description=f"TensorRT on a Jetson {what}, {precision}, batch 1 (here, or over ssh with {name.upper()}_HOST)",
    )


DEVICES: dict[str, Device] = {
    "cpu": Device("cpu", "ort", batch=1, threads=1, description="ONNX Runtime CPU, 1 thread, batch 1"),
    "cpu-b32": Device("cpu-b32", "ort", batch=32, threads=1, description="ONNX Runtime CPU, 1 thread, batch 32"),
    "cpu-2t": Device("cpu-2t", "ort", batch=1, threads=2, description="ONNX Runtime CPU, 2 threads, batch 1"),
    "cpu-int8": Device(
        "cpu-int8",
        "ort",
        batch=1,
        threads=1,
        precision="int8",
        description="ONNX Runtime CPU, INT8 Q/DQ (uint8 activations, int8 weights), 1 thread, batch 1",
    ),
    "gpu": Device("gpu", "trt", precision="fp16", description="TensorRT on this machine's NVIDIA GPU, fp16, batch 1"),
    "orin": _jetson("orin", "fp16", "Orin"),
    "xavier": _jetson("xavier", "fp16", "Xavier"),
    # The first Jetson Nano (Maxwell) ends at JetPack 4.6 and TensorRT 8.2, which is not supported (8.5+, see
    # trtexec_args); an Orin Nano is an `orin` (its board name in the key tells it apart from an AGX or NX).
}
DEFAULT_DEVICE = "cpu"
JETSONS = ("orin", "xavier")
_FIELDS = {f.name: f.type for f in dataclasses.fields(Device)}
_TYPES = {k: {"int": int, "float": (int, float), "bool": bool}.get(t.split(" ")[0], str) for k, t in _FIELDS.items()}


def device_file() -> Path:
    env = os.environ.get("TRTPRUNE_DEVICES")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir("trtprune")) / "devices.toml"


def load_devices(path: str | Path) -> dict[str, Device]:
    """User devices from a TOML file (see the module docstring); every mistake is an error naming the file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10 (e.g. NVIDIA's containers): the same parser, from PyPI
        import tomli as tomllib

    path = Path(path)
    if path.is_dir():
        raise TrtpruneError(
            f"device file '{path}' is a folder",
            why="TRTPRUNE_DEVICES names one TOML file of [devices.<name>] tables",
            fix=f"point it at the file (e.g. {path / 'devices.toml'}), or unset TRTPRUNE_DEVICES",
        )
    try:
        doc = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TrtpruneError(f"device file '{path}' does not exist", fix="create it or unset TRTPRUNE_DEVICES") from None
    except (OSError, ValueError, RecursionError) as e:  # TOMLDecodeError, not UTF-8, absurd nesting or numbers
        raise TrtpruneError(f"device file '{path}' cannot be read: {e}", fix="fix the TOML syntax") from None
    unknown_top = set(doc) - {"devices"}
    if unknown_top or not isinstance(doc.get("devices", {}), dict):
        raise TrtpruneError(
            f"device file '{path}': expected only [devices.<name>] tables, found {sorted(unknown_top) or 'devices'}"
        )
    out = {}
    for name, table in doc.get("devices", {}).items():
        where = f"device '{name}' in '{path}'"
        if not is_plain_name(name):
            raise TrtpruneError(
                f"{where} is not a plain name",
                why="runs, engines and profiles are named after the device (runs/<model>-<device>, "
                "engines/<model>-<device>.onnx): a name with a path separator or '..' would write outside them",
                fix="rename its table without '/', '\\' or '..', e.g. [devices.lab-orin]",
            )
        if not isinstance(table, dict):
            raise TrtpruneError(f"{where} is not a table", fix=f"write it as [devices.{name}]")
        unknown = set(table) - set(_FIELDS) - {"name"}
        if unknown:
            raise TrtpruneError(f"{where}: unknown keys {sorted(unknown)}", fix=f"known keys: {', '.join(_FIELDS)}")
        if "backend" not in table:
            raise TrtpruneError(f"{where} has no backend", fix='add backend = "ort", "trt" or "ssh"')
        kwargs = dict(table, name=name)
        for key, value in kwargs.items():
            want = _TYPES[key]
            if isinstance(value, bool) != (want is bool) or not isinstance(value, want):
                raise TrtpruneError(
                    f"{where}: {key} = {value!r} has the wrong type", fix=f"{key} must be {_FIELDS[key]}"
                )

        if kwargs["backend"] not in BACKENDS or kwargs["backend"] == "fake":
            raise TrtpruneError(f"{where}: unknown backend '{kwargs['backend']}'", fix="use ort, trt or ssh")
        out[name] = Device(**kwargs).check()
    return out


def all_devices() -> dict[str, Device]:
    """Built-in devices, then the user's device file (which may add devices but not redefine built-ins)."""
    devices = dict(DEVICES)
    path = device_file()
    if path.is_file() or os.environ.get("TRTPRUNE_DEVICES"):
        for name, dev in load_devices(path).items():
            if name in DEVICES:
                raise TrtpruneError(
                    f"device file '{path}' redefines the built-in device '{name}'", fix="give it another name"
                )
            devices[name] = dev
    return devices


def get_device(name: str) -> Device:
    devices = all_devices()
    if name not in devices:
        raise TrtpruneError(
            f"unknown device '{name}'", fix=f"use one of {', '.join(devices)} or define it in {device_file()}"
        )
    return host_from_env(devices[name]).check()


def host_from_env(device: Device) -> Device:
    """A Jetson driven over ssh when this process's environment names its host (ORIN_HOST=user@host)."""
    host = os.environ.get(f"{device.name.upper().replace('-', '_')}_HOST") if device.name in JETSONS else None
    return dataclasses.replace(device, backend="ssh", host=host) if host else device
