"""trtexec command lines per TensorRT version: which versions are supported, and which flags each one parses.

trtexec stops with ``Unknown option: <flag>`` (and exit status 1) on any flag its version does not parse
(``samples/trtexec/trtexec.cpp``, ``parseArgs``), so a command line must be made for the version it runs on.
The table below was read from NVIDIA's own sources, ``samples/common/sampleOptions.cpp`` and
``samples/common/sampleEngines.cpp`` of https://github.com/NVIDIA/TensorRT at the tags 8.5.2, v8.6.1,
v10.3.0, v10.16 and v11.1, and the ONNX parser's opset range from ``README.md`` of
https://github.com/onnx/onnx-tensorrt (branches 8.5-GA, 8.6-GA, 10.0-GA). The tests check every flag made here
against the complete flag lists of those tags (``../shared/fixtures/trtexec/flags``) with a strict fake trtexec
per version. What the sources say, in short:

* ``--workspace`` is gone in 10 (``--memPoolSize=workspace:<MiB>`` exists in every supported version);
  ``--buildOnly`` is 8.5's (and 8.6's) name of ``--skipInference`` (8.6+).
* TensorRT 11 builds every network **strongly typed** (``sampleEngines.cpp`` v11.1 creates the network with
  ``kSTRONGLY_TYPED`` unconditionally) and no longer parses ``--fp16``, ``--best``, ``--bf16``, ``--fp8``,
  ``--int4``, ``--calib``, ``--precisionConstraints``: precision comes from the types in the ONNX model
  (fp16-typed tensors run fp16, Q/DQ pairs run int8). Its ``--int8`` is a safety-builder option, not a
  precision switch, so it is never passed.
* TensorRT 11 spins, uses CUDA graphs and leaves data transfers out by default, and prints a deprecation
  warning for ``--useSpinWait``, ``--useCudaGraph``, ``--noDataTransfers`` and ``--separateProfileRun``
  (``--noCudaGraph``, ``--noSpinWait``, ``--includeDataTransfers`` are the new switches): those flags are
  passed up to 10.x only.
* A DLA build without ``--int8`` gets ``BuilderFlag::kFP16`` from trtexec (``sampleEngines.cpp`` 8.6.1 and
  10.3.0: ``if (!build.int8) config.setFlag(BuilderFlag::kFP16)``): DLA runs fp16 or int8, never fp32. CUDA
  graphs cannot capture DLA work; 11.1 turns them off itself with a warning, so ``--noCudaGraph`` is passed.
* ``--noTF32`` (every version) keeps an ``fp32`` device fp32: TensorRT otherwise allows TF32 on Ampere and newer.

Supported: TensorRT 8.5 and 8.6 (JetPack 5.1 ships 8.5.2, JetPack 6.0 ships 8.6.2), 10.x (JetPack 6.1/6.2
ship 10.3) and 11.x. A minor release newer than the newest read here (10.16, 11.1) is used with that table
and a warning; older releases and other majors are refused with the reason. None of this has been run on
a real GPU here: the tables come from the sources above.
"""

from __future__ import annotations

import logging

from trtprune.errors import TrtpruneError

log = logging.getLogger("trtprune.latency")

Version = tuple[int, ...]

# The releases whose sources were read, per supported series (major, minor) or (major,): the newest first.
VERIFIED = {(8, 5): (8, 5, 2), (8, 6): (8, 6, 1), (10,): (10, 16, 0), (11,): (11, 1, 0)}
VERIFIED_ALSO = ((10, 3, 0),)
INF = (99,)

# flag -> (first version that parses it, first version that does not). Only the flags trtprune passes.
FLAGS: dict[str, tuple[Version, Version]] = {
    **{
        f: ((8, 5), INF)
        for f in (
            "--onnx",
            "--saveEngine",
            "--loadEngine",
            "--memPoolSize",
            "--timingCacheFile",
            "--profilingVerbosity",
            "--useDLACore",
            "--allowGPUFallback",
            "--warmUp",
            "--iterations",
            "--duration",
            "--exportProfile",
            "--exportLayerInfo",
            "--dumpProfile",
            "--loadInputs",
            "--exportOutput",
            "--noTF32",
            "--help",
        )
    },
    "--buildOnly": ((8, 5), (10,)),
    "--skipInference": ((8, 6), INF),
    "--fp16": ((8, 5), (11,)),
    "--int8": ((8, 5), (11,)),  # 11 still parses it, as a safety-builder option: never passed there
    "--best": ((8, 5), (11,)),
    "--stronglyTyped": ((10,), INF),
    # parsed by 11 too, but deprecated no-ops there (the behaviour became the default): passed up to 10.x
    "--useSpinWait": ((8, 5), (11,)),
    "--useCudaGraph": ((8, 5), (11,)),
    "--noDataTransfers": ((8, 5), (11,)),
    "--separateProfileRun": ((8, 5), (11,)),
    "--noCudaGraph": ((11,), INF),
}

# The highest ONNX opset the version's parser reads (onnx-tensorrt README: "TensorRT 8.5/8.6 supports
# operators up to Opset 17"; "TensorRT 10.0 supports ... opset 9 to opset 20"; later releases assumed no lower).
MAX_OPSET = {(8,): 17, (10,): 20, (11,): 20}


def series(version: Version) -> tuple[int, ...]:
    return (version[0],) if version[0] >= 10 else tuple(version[:2])


def text(version: Version) -> str:
    return ".".join(map(str, version))


def check_version(version: Version, where: str = "this machine") -> None:
    """Refuse a TensorRT this module has no table for; warn on a newer minor release of a supported series."""
    s = series(version)
    if s not in VERIFIED:
        raise TrtpruneError(
            f"TensorRT {text(version)} on {where} is not supported",
            why="trtprune makes trtexec command lines from the options each release parses (read from NVIDIA's "
            "sources): supported are 8.5, 8.6 (JetPack 5.1, 6.0), 10.x (JetPack 6.1/6.2) and 11.x",
            fix="use TensorRT 8.5 or newer (JetPack 5.1+), or --device cpu",
        )
    if tuple(version) > VERIFIED[s]:
        log.warning(
            "trt | TensorRT %s is newer than %s, the newest release whose trtexec options were checked: using its",
            text(version),
            text(VERIFIED[s]),
        )


def parses(version: Version, flag: str) -> bool:
    first, gone = FLAGS[flag]
    return first <= tuple(version) < gone


def max_opset(version: Version) -> int:
    return MAX_OPSET[(version[0],)] if version[0] >= 10 else MAX_OPSET[(8,)]


def strongly_typed(version: Version) -> bool:
    """Precision comes from the ONNX model's types (11+), not from builder flags."""
    return not parses(version, "--fp16")


def precision_flags(precision: str, version: Version) -> list[str]:
    """Builder flags for a weakly typed build (up to 10.x): fp16 and int8 allow, not force; int8 also allows fp16
    for layers without int8 kernels (or without Q/DQ). Strongly typed (11+): none, the model's types decide."""
    if strongly_typed(version):
        if precision == "best":
            raise TrtpruneError(
                f"TensorRT {text(version)} has no 'best' precision",
                why="from 11 every network is strongly typed: each layer runs in the type the ONNX model gives it",
                fix='use precision = "fp16" (trtprune builds an fp16-typed model) or "int8" (a Q/DQ model)',
            )
        return ["--noTF32"] if precision == "fp32" else []
    return {"fp32": ["--noTF32"], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"], "best": ["--best"]}[precision]


def _check(argv: list[str], version: Version) -> list[str]:
    for a in argv[1:]:
        flag = a.split("=", 1)[0]
        assert flag in FLAGS and parses(version, flag), f"{flag} is not parsed by TensorRT {text(version)}"
    return argv


def build_argv(
    device, version: Version, onnx: str, save_engine: str, timing_cache: str | None = None, detailed: bool = True
) -> list[str]:
    """Build ``onnx`` into ``save_engine`` without running it."""
    argv = [device.trtexec, f"--onnx={onnx}", *precision_flags(device.precision, version)]
    argv.append(f"--memPoolSize=workspace:{device.workspace_mib}")
    if timing_cache:
        argv.append(f"--timingCacheFile={timing_cache}")
    argv.append(f"--saveEngine={save_engine}")
    if detailed:  # layer info names the ONNX nodes of each engine layer
        argv.append("--profilingVerbosity=detailed")
    if device.dla_core is not None:
        argv.append(f"--useDLACore={device.dla_core}")
        if device.gpu_fallback:
            argv.append("--allowGPUFallback")
    argv.append("--skipInference" if parses(version, "--skipInference") else "--buildOnly")
    return _check(argv, version)


def _run_flags(device, version: Version, iterations: int, warmup_ms: int) -> list[str]:
    argv = [f"--warmUp={warmup_ms}", f"--iterations={iterations}", "--duration=0"]
    if device.dla_core is not None:
        argv.append(f"--useDLACore={device.dla_core}")
    if parses(version, "--useCudaGraph"):  # up to 10.x these are opt-in; 11 does all three by default
        argv += ["--noDataTransfers", "--useSpinWait"]
        if device.dla_core is None:  # CUDA graphs do not capture DLA work
            argv.append("--useCudaGraph")
    elif device.dla_core is not None:
        argv.append("--noCudaGraph")
    return argv


def profile_argv(
    device,
    version: Version,
    engine: str,
    export_profile: str,
    export_layer_info: str,
    iterations: int = 200,
    warmup_ms: int = 200,
) -> list[str]:
    """A per-layer profile of a built engine: ``--exportProfile`` (times) and ``--exportLayerInfo`` (the layers
    and the ONNX nodes each one holds). Up to 10.x the network is timed in a separate run (11 always does)."""
    argv = [device.trtexec, f"--loadEngine={engine}", *_run_flags(device, version, iterations, warmup_ms)]
    if parses(version, "--separateProfileRun"):
        argv.append("--separateProfileRun")
    argv += ["--dumpProfile", f"--exportProfile={export_profile}", f"--exportLayerInfo={export_layer_info}"]
    return _check(argv, version)


def outputs_argv(device, version: Version, engine: str, input_name: str, raw_input: str, out_json: str) -> list[str]:
    """One inference on the given raw float32 input, writing the outputs as JSON (``--exportOutput``)."""
    argv = [device.trtexec, f"--loadEngine={engine}", f"--loadInputs={input_name}:{raw_input}"]
    argv += [f"--exportOutput={out_json}", "--iterations=1", "--warmUp=0", "--duration=0"]
    if device.dla_core is not None:
        argv.append(f"--useDLACore={device.dla_core}")
    return _check(argv, version)
