"""Parsers for what NVIDIA ``trtexec`` prints and writes (TensorRT 7.x, 8.x and 10.x). Pure text and JSON:
no subprocess, no TensorRT import.

What each trtexec output is, and which versions print which format (flag meanings from NVIDIA's trtexec docs:
"Command-Line Programs - trtexec", https://docs.nvidia.com/deeplearning/tensorrt/latest/reference/command-line-programs.html,
and ``samples/trtexec/README.md`` in https://github.com/NVIDIA/TensorRT; the printed layout comes from
``samples/common/sampleReporting.cpp`` there; version boundaries are those seen in real logs):

* **stdout of a benchmark run.** Every run is framed by ``&&&& RUNNING TensorRT.trtexec [TensorRT vNNNN] # cmd``
  and ``&&&& PASSED`` / ``&&&& FAILED``. The ``[TensorRT vNNNN]`` tag appeared in 8.0 (``v8502`` = 8.5.2,
  ``v100300`` = 10.3.0, ``v101601`` = 10.16.1, possibly followed by a build tag such as ``[b11]``); TRT 7 has none.
  Lines are ``[MM/DD/YYYY-HH:MM:SS] [I|W|E|V] [TRT] message``; the timestamp is missing in some copies and is
  01/01/1970 on boards without a clock, so it is matched but never interpreted.

  - TensorRT 7.x prints the *old* summary: a ``Host Latency`` block of ``min: X ms (end to end Y ms)`` lines
    (min/max/mean/median), ``percentile: X ms at 99% (end to end Y ms at 99%)``, ``throughput: N qps``,
    ``walltime: S s``, then ``Enqueue Time`` (min/max/median, no mean) and ``GPU Compute`` (min/max/mean/median/
    percentile) ending with ``total compute time: S s``.
  - 8.0 and later print ``=== Performance summary ===`` with one line per metric (``Throughput``, ``Latency``,
    ``Enqueue Time``, ``H2D Latency``, ``GPU Compute Time``, ``D2H Latency``, ``Total Host Walltime``, ``Total GPU
    Compute Time``) in the form ``min = X ms, max = X ms, mean = X ms, median = X ms, percentile(P%) = X ms``.
    8.0-8.2 also print ``End-to-End Host Latency`` (optional here). Up to 8.4 there is a single ``percentile(99%)``;
    from 8.5 the default is ``--percentile=90,95,99``. Advisories follow as ``[W] * ...`` lines (``GPU compute
    time is unstable ...``, ``Throughput may be bound by ...``), each with an indented ``[W]`` continuation line.
  - 10.x abbreviates the per-run trace with ``... Omitting N lines`` and prints build memory in bytes
    (``Total Activation Memory: 125440 bytes``; 8.x prints the bare number, also bytes).
  - ``Throughput`` is queries per second times the ``--batch`` of implicit-batch engines (so images/s there).

* ``--dumpProfile``: a per-layer table after ``=== Profile (N iterations ) ===``. TRT 7 has the name first,
  ``Layer  Time (ms)  Avg. Time (ms)  Time %``; 8.4/8.5 add ``Median Time (ms)`` (name still first, right
  aligned); from 8.6 (seen here in 10.16) the name comes last: ``Time(ms)  Avg.(ms)  Median(ms)  Time(%)  Layer``.
  The last row is ``Total``. From 8.x, ``--dumpProfile`` without ``--separateProfileRun`` prints *no*
  performance summary ("The e2e network timing is not reported ...") because the profiler's synchronisations
  distort it; TRT 7 still printed one.
* ``--exportProfile=<file>``: "Write the profile information per layer in a json file": ``[{"count": N},
  {"name", "timeMs", "averageMs", "medianMs", "percentage"}, ...]``; ``medianMs`` exists from 8.4 on.
* ``--exportTimes=<file>``: "Write the timing results in a json file": one record per timed query with
  ``startEnqMs .. endD2hMs``, ``h2dMs``, ``computeMs``, ``d2hMs`` and ``latencyMs`` (h2d + compute + d2h).
* ``--exportLayerInfo=<file>`` (with ``--profilingVerbosity=detailed``): ``{"Layers": [{Name, LayerType, Inputs,
  Outputs, ..., TacticName, TacticValue}], "Bindings": [...]}``; with the default verbosity ``Layers`` is a list
  of names only. TRT 10 adds ``StreamId`` and ``Metadata``: the ONNX nodes of the layer as ``[ONNX Layer: name]``
  items joined by U+001E (layers fused by TensorRT) or U+001F (inside myelin-compiled ``gemm``/``kgen`` layers).

How an engine layer maps back to ONNX node names (:func:`layer_onnx_nodes`; used when ``Metadata`` is absent):

* layers TensorRT inserted are not ONNX nodes and give ``()``: ``Reformatting CopyNode for ...``, TRT 7's
  ``... input/output reformatter N``, DLA's ``... to nvm`` / ``... finish`` markers, bracketed names such as
  ``[HostToDeviceCopy 0]``, myelin kernels ``__myl_*`` / ``__mye*``, ``(Unnamed Layer* N) [...]`` parts,
  parser-made ``copied_squeeze_after_*`` / ``(un)squeeze_node_after_*``, and the bare layer indices that
  engines built with ``--profilingVerbosity=none`` report;
* a fused name is split on top-level `` + `` (``Conv_0 + Relu_1``); ``PWN(a, PWN(b))`` (pointwise fusion) is
  unwrapped to its arguments; TRT 7 DLA's ``{a,b,c}`` is split on commas;
* ``{ForeignNode[first...last]}`` (a DLA or myelin subgraph) gives only its two ends, ``(first, last)``: the
  nodes in between are not named in the text;
* a myelin suffix ``_myl<G>_<K>`` is removed (``node_conv2d_myl0_1`` -> ``node_conv2d``);
* names of constant layers (ONNX initializers such as ``features.0.0.weight``) are kept: intersect the result
  with the ONNX graph's node names to drop them.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trtprune.errors import TrtpruneError

__all__ = [
    "DeviceInfo",
    "EngineLayer",
    "LayerTime",
    "PerfSummary",
    "ProfileTable",
    "Stats",
    "build_memory",
    "check_output",
    "device_info",
    "latency_stats",
    "layer_onnx_nodes",
    "load_export_profile",
    "load_export_times",
    "load_layer_info",
    "parse_profile",
    "parse_profile_table",
    "parse_summaries",
    "parse_summary",
    "trt_version",
]


# -- results ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stats:
    """One latency metric of a summary, in milliseconds. A field the text does not print is None / absent."""

    min_ms: float
    max_ms: float
    mean_ms: float | None
    median_ms: float | None
    percentiles: dict[float, float]  # {90.0: x, 95.0: y, 99.0: z}; TRT 7 and 8.0-8.4: {99.0: z}


@dataclass(frozen=True)
class PerfSummary:
    """One run's performance summary (``=== Performance summary ===``, or TRT 7's old blocks)."""

    trt_version: str | None  # "8.5.2" from "[TensorRT v8502]"; None when the text does not say (TRT 7)
    device: str | None  # "Selected Device: ..."
    throughput_qps: float | None  # times --batch for implicit-batch engines
    latency: Stats | None  # "Latency" (8.x+) or "Host Latency" (7.x)
    gpu_compute: Stats | None  # "GPU Compute Time" (8.x+) or "GPU Compute" (7.x)
    enqueue: Stats | None
    h2d: Stats | None
    d2h: Stats | None
    end_to_end: Stats | None  # "End-to-End Host Latency" (8.0-8.2) or TRT 7's "(end to end Y ms)"
    total_gpu_compute_s: float | None
    warnings: tuple[str, ...]  # the run's [W] messages, continuation lines joined
    passed: bool | None  # "&&&& PASSED" -> True, "&&&& FAILED" -> False, neither -> None
    walltime_s: float | None = None  # "Total Host Walltime" (8.x+) / "walltime" (7.x)
    batch: int | None = None  # "Batch: N" of the inference options; None for explicit batch or when absent


@dataclass(frozen=True)
class LayerTime:
    """One layer of a per-layer profile (console table or ``--exportProfile`` JSON)."""

    name: str
    total_ms: float  # summed over all profiled iterations
    average_ms: float  # per iteration
    median_ms: float | None  # None before 8.4 (no median column / no "medianMs")
    percent: float  # share of the total, 0..100


@dataclass(frozen=True)
class ProfileTable:
    """A ``--dumpProfile`` table: its rows without the ``Total`` row, and that row."""

    iterations: int | None
    layers: tuple[LayerTime, ...]
    total: LayerTime | None
    layout: str  # "name-first" (7.x-8.5) or "name-last" (8.6+/10.x)


@dataclass(frozen=True)
class EngineLayer:
    """One layer of ``--exportLayerInfo``."""

    name: str
    layer_type: str | None  # "CaskConvolution", "Reformat", "kgen", ...; None in the names-only form
    tactic: str | None  # TacticName, else TacticValue ("0x..."), else None
    onnx_nodes: tuple[str, ...]  # from TRT 10 "Metadata", else layer_onnx_nodes(name)
    inputs: tuple[str, ...]  # tensor names; dimensions and formats are in raw["Inputs"]
    outputs: tuple[str, ...]
    raw: dict


@dataclass(frozen=True)
class DeviceInfo:
    """The ``=== Device Information ===`` block."""

    name: str | None
    uuid: str | None
    compute_capability: str | None
    sms: int | None
    global_memory_mib: int | None
    compute_clock_ghz: float | None
    memory_clock_ghz: float | None
    application_clocks: bool  # TRT 10 prints "Application ... Clock Rate" (not the current clocks)


# -- lines --------------------------------------------------------------------------------------------------
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|nan"
_LINE = re.compile(
    r"^(?:\[\d{1,2}/\d{1,2}/\d{4}-\d{1,2}:\d{2}:\d{2}\]\s*)?"  # [01/01/1970-00:00:12], optional
    r"(?:\[(?P<sev>[IWEVF])\] ?)?"  # [I] [W] [E] [V] [F], optional
    r"(?P<msg>.*)$"
)
_TRT_TAG = re.compile(r"^\[TRT\] ?")
_AMPS = re.compile(r"^&&&& (RUNNING|PASSED|FAILED|WAIVED)\b")


@dataclass(frozen=True)
class _Line:
    sev: str | None  # "I", "W", "E", "V", "F" or None (untagged / continuation line)
    msg: str  # message without timestamp, severity tag and [TRT] sub-tag; not stripped
    raw: str


def _lines(text: str) -> list[_Line]:
    out = []
    for raw in text.splitlines():
        raw = raw.rstrip("\r")
        m = _LINE.match(raw)
        sev, msg = m.group("sev"), m.group("msg")
        if sev is not None:
            msg = _TRT_TAG.sub("", msg)
        out.append(_Line(sev, msg, raw))
    return out


def _num(s: str) -> float:
    return float(s)


def _version_from_tag(digits: str) -> str:
    n = int(digits)
    if n >= 10000:  # 10.x: MAJOR*10000 + MINOR*100 + PATCH (v100300 = 10.3.0, v101601 = 10.16.1)
        return f"{n // 10000}.{n // 100 % 100}.{n % 100}"
    return f"{n // 1000}.{n // 100 % 10}.{n % 100}"  # 8.x: MAJOR*1000 + MINOR*100 + PATCH (v8502 = 8.5.2)


_VTAG = re.compile(r"\[TensorRT v(\d{4,6})\]")
_VLINE = re.compile(r"TensorRT version:\s*(\d+\.\d+(?:\.\d+)*)")


def trt_version(text: str) -> str | None:
    """The TensorRT version of a trtexec log: from the ``[TensorRT vNNNN]`` tag of the ``&&&&`` lines, else
    the ``TensorRT version: X.Y.Z`` line; None when neither is there (TRT 7 prints neither)."""
    m = _VTAG.search(text)
    if m:
        return _version_from_tag(m.group(1))
    m = _VLINE.search(text)
    return m.group(1) if m else None


# -- performance summaries ----------------------------------------------------------------------------------
_LABELS = {
    "latency": "latency",
    "host latency": "latency",
    "end-to-end host latency": "end_to_end",
    "enqueue time": "enqueue",
    "h2d latency": "h2d",
    "gpu compute time": "gpu_compute",
    "gpu compute": "gpu_compute",
    "d2h latency": "d2h",
}
_NEW_STAT = re.compile(r"^\s*(?P<label>[A-Za-z2 -]+?)\s*:\s*(?P<rest>(?:min|max|mean|median)\s*[=:].*)$")
_NEW_FIELD = re.compile(rf"\b(min|max|mean|median)\s*[=:]\s*({_NUM})\s*ms")
_NEW_PCT = re.compile(rf"percentile\(\s*({_NUM})\s*%\s*\)\s*[=:]\s*({_NUM})\s*ms")
_OLD_FIELD = re.compile(rf"^\s*(min|max|mean|median)\s*:\s*({_NUM})\s*ms(?:\s*\(end to end\s+({_NUM})\s*ms\))?\s*$")
_OLD_PCT = re.compile(
    rf"^\s*percentile\s*:\s*({_NUM})\s*ms\s+at\s+({_NUM})\s*%"
    rf"(?:\s*\(end to end\s+({_NUM})\s*ms\s+at\s+({_NUM})\s*%\))?\s*$"
)
_SCALARS = (
    ("throughput_qps", re.compile(rf"^\s*throughput\s*:\s*({_NUM})\s*qps\s*$", re.I)),
    ("walltime_s", re.compile(rf"^\s*(?:total host )?walltime\s*:\s*({_NUM})\s*s\s*$", re.I)),
    ("total_gpu_compute_s", re.compile(rf"^\s*total (?:gpu )?compute time\s*:\s*({_NUM})\s*s\s*$", re.I)),
)
_DEVICE = re.compile(r"^\s*Selected Device:\s*(.+?)\s*$")
# Integers are read with at most 18 digits (int() refuses more than 4300; no trtexec figure has more than 18).
_BATCH = re.compile(r"^\s*Batch:\s*(\d{1,18})\s*$")


class _StatAcc:
    """Fields of one metric as they are found."""

    def __init__(self):
        self.fields: dict[str, float] = {}
        self.pct: dict[float, float] = {}

    def build(self) -> Stats | None:
        if "min" not in self.fields or "max" not in self.fields:
            return None  # a metric without min and max is not reported; never made up
        f = self.fields
        return Stats(f["min"], f["max"], f.get("mean"), f.get("median"), dict(self.pct))


def _segments(lines: list[_Line]) -> list[list[_Line]]:
    """Split at ``&&&& RUNNING`` lines: one segment per run (text before the first RUNNING is its own)."""
    segs: list[list[_Line]] = [[]]
    for ln in lines:
        m = _AMPS.match(ln.raw)
        if m and m.group(1) == "RUNNING" and segs[-1]:
            segs.append([])
        segs[-1].append(ln)
    return [s for s in segs if s]


def _warnings(seg: list[_Line]) -> tuple[str, ...]:
    out: list[str] = []
    prev_w = False
    for ln in seg:
        if ln.sev != "W":
            prev_w = False
            continue
        msg = ln.msg
        if prev_w and out and msg.startswith(" ") and msg.strip():
            out[-1] = f"{out[-1]} {msg.strip()}"  # "[W]   If not already in use, ..." continues the advisory
        elif msg.strip():
            out.append(re.sub(r"^\*\s*", "", msg.strip()))
        prev_w = True
    return tuple(out)


def _parse_segment(seg: list[_Line]) -> PerfSummary | None:
    acc: dict[str, _StatAcc] = {}
    scalars: dict[str, float] = {}
    block: str | None = None  # the old (TRT 7) block the min:/max: lines belong to
    version = device = None
    batch = None
    passed = None
    found = False
    for ln in seg:
        m = _AMPS.match(ln.raw)
        if m:
            if m.group(1) in ("PASSED", "FAILED"):
                passed = m.group(1) == "PASSED"
            t = _VTAG.search(ln.raw)
            if t and version is None:
                version = _version_from_tag(t.group(1))
            continue
        if ln.sev not in (None, "I"):
            continue  # summaries are info lines; [V] explanations of the metrics carry no numbers
        msg = ln.msg.strip()
        if version is None and (v := _VLINE.search(msg)):
            version = v.group(1)
        if device is None and (d := _DEVICE.match(msg)):
            device = d.group(1)
        if batch is None and (b := _BATCH.match(msg)):
            batch = int(b.group(1))
        if (lab := msg.lower()) in _LABELS:  # old format header: "Host Latency", "Enqueue Time", "GPU Compute"
            block = _LABELS[lab]
            continue
        if m := _NEW_STAT.match(msg):
            key = _LABELS.get(m.group("label").strip().lower())
            if key is not None:
                a = acc.setdefault(key, _StatAcc())
                for name, val in _NEW_FIELD.findall(m.group("rest")):
                    a.fields[name] = _num(val)
                for p, val in _NEW_PCT.findall(m.group("rest")):
                    a.pct[_num(p)] = _num(val)
                found = True
                block = None
                continue
        if block is not None:
            if m := _OLD_FIELD.match(msg):
                acc.setdefault(block, _StatAcc()).fields[m.group(1)] = _num(m.group(2))
                if m.group(3) is not None and block == "latency":
                    acc.setdefault("end_to_end", _StatAcc()).fields[m.group(1)] = _num(m.group(3))
                found = True
                continue
            if m := _OLD_PCT.match(msg):
                acc.setdefault(block, _StatAcc()).pct[_num(m.group(2))] = _num(m.group(1))
                if m.group(3) is not None and block == "latency":
                    acc.setdefault("end_to_end", _StatAcc()).pct[_num(m.group(4))] = _num(m.group(3))
                found = True
                continue
        for key, rx in _SCALARS:
            if m := rx.match(msg):
                scalars[key] = _num(m.group(1))
                found = True
                break
    stats = {k: a.build() for k, a in acc.items()}
    if not found or not (any(stats.values()) or "throughput_qps" in scalars):
        return None
    return PerfSummary(
        trt_version=version,
        device=device,
        throughput_qps=scalars.get("throughput_qps"),
        latency=stats.get("latency"),
        gpu_compute=stats.get("gpu_compute"),
        enqueue=stats.get("enqueue"),
        h2d=stats.get("h2d"),
        d2h=stats.get("d2h"),
        end_to_end=stats.get("end_to_end"),
        total_gpu_compute_s=scalars.get("total_gpu_compute_s"),
        warnings=_warnings(seg),
        passed=passed,
        walltime_s=scalars.get("walltime_s"),
        batch=batch,
    )


def parse_summaries(text: str) -> list[PerfSummary]:
    """Every performance summary in a trtexec log, one per ``&&&& RUNNING`` .. ``PASSED`` run, in order.

    Runs without a summary (failed builds, ``--dumpProfile`` without ``--separateProfileRun``, build-only runs)
    are left out, so the list may be empty."""
    return [s for seg in _segments(_lines(text)) if (s := _parse_segment(seg)) is not None]


def parse_summary(text: str) -> PerfSummary:
    """The last performance summary of a trtexec log; :class:`TrtpruneError` saying why when there is none."""
    found = parse_summaries(text)
    if found:
        return found[-1]
    check_output(text)  # a failed run: raise what failed
    if "e2e network timing is not reported" in text:
        raise TrtpruneError(
            "the trtexec output has a per-layer profile but no performance summary",
            why="--dumpProfile without --separateProfileRun prints no summary: trtexec says 'The e2e network timing "
            "is not reported since it is inaccurate due to the extra synchronizations when the profiler is enabled'",
            fix="add --separateProfileRun to time the network and profile the layers in separate runs, or drop "
            "--dumpProfile",
        )
    if re.search(r"Skip inference: Enabled|--skipInference|--buildOnly", text):
        raise TrtpruneError(
            "the trtexec output has no performance summary",
            why="the run only built the engine (--skipInference / --buildOnly)",
            fix="run trtexec again with --loadEngine=<engine> (without --skipInference) to time it",
        )
    head = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    raise TrtpruneError(
        "no trtexec performance summary found in the text",
        why="found neither an '=== Performance summary ===' block (TensorRT 8+) nor TensorRT 7's 'Host Latency' / "
        f"'GPU Compute' blocks; the text starts with {head[:120]!r}"
        if head
        else "the text is empty",
        fix="pass the complete stdout of a trtexec run that ran inference (e.g. trtexec --loadEngine=model.engine)",
    )


# -- per-layer profile table --------------------------------------------------------------------------------
_PROFILE_HEAD = re.compile(r"^=== Profile \(\s*(\d{1,18})\s+iterations?\s*\) ===$")
_ROW_NUM = rf"({_NUM})"


def _header_layout(msg: str) -> tuple[str, bool] | None:
    s = " ".join(msg.split())
    if not ("Time" in s and "Layer" in s):
        return None
    median = "Median" in s
    if re.fullmatch(r"Layer Time \(ms\) Avg\. Time \(ms\)( Median Time \(ms\))? Time %", s):
        return "name-first", median
    if re.fullmatch(r"Time\(ms\) Avg\.\(ms\)( Median\(ms\))? Time\(%\) Layer", s):
        return "name-last", median
    return None


def _row_regex(layout: str, median: bool) -> re.Pattern:
    nums = r"\s+".join([_ROW_NUM] * (4 if median else 3))
    if layout == "name-first":
        return re.compile(rf"^\s*(?P<name>.+?)\s+{nums}\s*$")
    return re.compile(rf"^\s*{nums}\s+(?P<name>.+?)\s*$")


def _tables(text: str) -> list[ProfileTable]:
    tables: list[ProfileTable] = []
    iterations: int | None = None
    rows: list[LayerTime] | None = None
    rx = layout = None
    median = False

    def close():
        nonlocal rows
        if rows is not None:
            total = rows.pop() if rows and rows[-1].name == "Total" else None
            tables.append(ProfileTable(iterations, tuple(rows), total, layout))
        rows = None

    for ln in _lines(text):
        if ln.sev in ("V", "W", "E"):
            continue  # verbose and warning lines may interleave with the table
        msg = ln.msg.strip()
        if m := _PROFILE_HEAD.match(msg):
            close()
            iterations = int(m.group(1))
            continue
        if rows is None:
            if hl := _header_layout(msg):
                layout, median = hl
                rx = _row_regex(layout, median)
                rows = []
            continue
        m = rx.match(msg)
        if not m:
            close()
            iterations = None
            continue
        vals = [float(m.group(i)) for i in range(1, m.re.groups + 1) if m.re.groupindex["name"] != i]
        if median:
            tot, avg, med, pct = vals
        else:
            (tot, avg, pct), med = vals, None
        rows.append(LayerTime(m.group("name"), tot, avg, med, pct))
        if m.group("name") == "Total":
            close()
            iterations = None
    close()
    return tables


def parse_profile(text: str) -> ProfileTable:
    """The (last) ``--dumpProfile`` table of a trtexec log, in either layout, with its ``Total`` row apart."""
    tables = _tables(text)
    if not tables:
        raise TrtpruneError(
            "no per-layer profile table in the trtexec output",
            why="found no 'Layer  Time (ms) ...' (TensorRT <= 8.5) or 'Time(ms)  Avg.(ms) ... Layer' (8.6+) header",
            fix="run trtexec with --dumpProfile (add --separateProfileRun to keep the performance summary)",
        )
    return tables[-1]


def parse_profile_table(text: str) -> list[LayerTime]:
    """The rows of the (last) ``--dumpProfile`` table, without the ``Total`` row (see :func:`parse_profile`)."""
    return list(parse_profile(text).layers)


# -- JSON exports -------------------------------------------------------------------------------------------
def _load_json(src, what: str):
    if isinstance(src, (list, dict)):
        return src
    if isinstance(src, str) and src.lstrip()[:1] in ("[", "{"):
        text, origin = src, "the given text"
    else:
        path = Path(src)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, ValueError) as e:  # ValueError: a NUL in the name, or not UTF-8
            raise TrtpruneError(f"cannot read the trtexec {what} file {path}", why=str(e)) from e
        origin = str(path)
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # JSONDecodeError; absurd nesting or integers
        where = f"at line {e.lineno}, column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise TrtpruneError(
            f"{origin} is not a trtexec {what} JSON file",
            why=f"invalid JSON {where}",
            fix=f"pass the file trtexec wrote with --{what}=<file>",
        ) from e


def load_export_profile(src: str | Path | list) -> list[LayerTime]:
    """``--exportProfile`` JSON (a path, its text, or the parsed list) as rows; the ``{"count": N}`` record is
    skipped. ``median_ms`` is None for files from before 8.4, which have no ``medianMs``."""
    data = _load_json(src, "exportProfile")
    if not isinstance(data, list):
        raise TrtpruneError("an --exportProfile file must hold a JSON list", why=f"found {type(data).__name__}")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or "name" not in rec:
            continue  # {"count": N}: the number of profiled iterations
        try:
            med = rec.get("medianMs")
            out.append(
                LayerTime(
                    str(rec["name"]),
                    float(rec["timeMs"]),
                    float(rec["averageMs"]),
                    None if med is None else float(med),
                    float(rec["percentage"]),
                )
            )
        except (KeyError, TypeError, ValueError, OverflowError) as e:
            raise TrtpruneError(
                f"record {i} of the --exportProfile file is incomplete",
                why=f"expected name, timeMs, averageMs, percentage; got {sorted(rec)} ({e})",
            ) from e
    return out


def load_export_times(src: str | Path | list) -> list[dict]:
    """``--exportTimes`` JSON (a path, its text, or the parsed list): one dict per timed query."""
    data = _load_json(src, "exportTimes")
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise TrtpruneError("an --exportTimes file must hold a JSON list of records", why="found something else")
    return data


def _trtexec_percentile(sorted_vals: list[float], p: float) -> float:
    """trtexec's percentile: drop int((1 - p/100) * n) of the largest values (float32 arithmetic, as in
    sampleReporting.cpp) and take the next one."""
    n = len(sorted_vals)
    exclude = int((np.float32(1) - np.float32(p) / np.float32(100)) * np.float32(n))
    return sorted_vals[max(n - 1 - exclude, 0)]


def latency_stats(records: Iterable[dict], key: str | None = None, percentiles=(90.0, 95.0, 99.0)) -> Stats:
    """min/max/mean/median/percentiles of ``--exportTimes`` records, computed as trtexec does (median of an even
    count = mean of the two middle values). ``key`` defaults to ``latencyMs``, else ``computeMs``."""
    recs = list(records)
    if not recs:
        raise TrtpruneError("no --exportTimes records to compute latency from", fix="pass a non-empty exportTimes file")
    if key is None:
        key = next((k for k in ("latencyMs", "computeMs") if all(k in r for r in recs)), None)
        if key is None:
            raise TrtpruneError(
                "the --exportTimes records have neither latencyMs nor computeMs", why=f"keys: {sorted(recs[0])}"
            )
    try:
        vals = sorted(float(r[key]) for r in recs)
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise TrtpruneError(f"an --exportTimes record has no numeric {key!r}", why=str(e)) from e
    if any(math.isnan(v) for v in vals):
        raise TrtpruneError(f"an --exportTimes record has NaN {key!r}")
    return Stats(
        min_ms=vals[0],
        max_ms=vals[-1],
        mean_ms=statistics.fmean(vals),
        median_ms=statistics.median(vals),
        percentiles={float(p): _trtexec_percentile(vals, float(p)) for p in percentiles},
    )


# -- layer info and ONNX node names -------------------------------------------------------------------------
_NOT_ONNX_PREFIX = (
    "Reformatting CopyNode for ",
    "__myl",
    "__mye",
    "copied_squeeze_after_",
    "unsqueeze_node_after_",
    "squeeze_node_after_",
)
_MYL_SUFFIX = re.compile(r"_myl\d+_\d+$")


def _split_top(s: str, sep: str) -> list[str]:
    """Split at ``sep`` outside (), [] and {}."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(s):
        c = s[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth = max(depth - 1, 0)
        elif depth == 0 and s.startswith(sep, i):
            parts.append(s[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(s[start:])
    return parts


def _dedupe(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for n in names if n))


def _part_nodes(part: str) -> list[str]:
    part = part.strip()
    if not part or "(Unnamed Layer*" in part or part.startswith(_NOT_ONNX_PREFIX):
        return []
    if (m := re.fullmatch(r"PWN\((.*)\)", part, re.S)) is not None:
        return [n for arg in _split_top(m.group(1), ",") for n in _part_nodes(arg)]
    if (m := re.fullmatch(r"\{ForeignNode\[(.*)\]\}", part, re.S)) is not None:
        return [e.strip() for e in m.group(1).split("...", 1)]
    if part.startswith("{") and part.endswith("}"):
        return [n.strip() for n in part[1:-1].split(",")]
    return [_MYL_SUFFIX.sub("", part)]


def layer_onnx_nodes(name: str) -> tuple[str, ...]:
    """The ONNX node names an engine layer name stands for, by the heuristic in the module docstring; ``()``
    for layers TensorRT added (reformats, copies, myelin kernels)."""
    name = name.strip()
    if (
        not name
        or name.isdigit()
        or name.startswith(_NOT_ONNX_PREFIX)
        or (name.startswith("[") and name.endswith("]"))
        or re.search(r" (?:input|output) reformatter \d+$", name)
        or name.endswith((" to nvm", " finish"))
    ):
        return ()
    return _dedupe(n for part in _split_top(name, " + ") for n in _part_nodes(part))


def _metadata_nodes(meta) -> tuple[str, ...]:
    if not isinstance(meta, str) or not meta.strip():
        return ()
    items = re.split("[\x1e\x1f]", meta)
    return _dedupe(m.group(1).strip() for it in items if (m := re.fullmatch(r"\s*\[ONNX Layer: (.*)\]\s*", it, re.S)))


def _tensor_names(entries) -> tuple[str, ...]:
    if not isinstance(entries, list):
        return ()
    return tuple(str(e.get("Name", "")) if isinstance(e, dict) else str(e) for e in entries)


def load_layer_info(src: str | Path | dict | list) -> list[EngineLayer]:
    """``--exportLayerInfo`` JSON (a path, its text, or the parsed object). Handles the detailed form (layer
    dicts, ``--profilingVerbosity=detailed``) and the names-only form (``"Layers": ["name", ...]``)."""
    data = _load_json(src, "exportLayerInfo")
    layers = data.get("Layers") if isinstance(data, dict) else data
    if not isinstance(layers, list):
        raise TrtpruneError(
            "not a trtexec --exportLayerInfo file",
            why='expected {"Layers": [...], "Bindings": [...]}',
            fix="pass the file written by trtexec --exportLayerInfo=<file> --profilingVerbosity=detailed",
        )
    out = []
    for layer in layers:
        if not isinstance(layer, dict):  # names-only form
            name = str(layer)
            out.append(EngineLayer(name, None, None, layer_onnx_nodes(name), (), (), {"Name": name}))
            continue
        name = str(layer.get("Name", ""))
        tactic = layer.get("TacticName") or layer.get("TacticValue")
        out.append(
            EngineLayer(
                name=name,
                layer_type=layer.get("LayerType"),
                tactic=None if tactic is None else str(tactic),
                onnx_nodes=_metadata_nodes(layer.get("Metadata")) or layer_onnx_nodes(name),
                inputs=_tensor_names(layer.get("Inputs")),
                outputs=_tensor_names(layer.get("Outputs")),
                raw=layer,
            )
        )
    return out


# -- device and build memory --------------------------------------------------------------------------------
def device_info(text: str) -> DeviceInfo | None:
    """The (first) ``=== Device Information ===`` block of a log, or None when there is none."""
    fields: dict[str, str] = {}
    inside = False
    for ln in _lines(text):
        msg = ln.msg.strip()
        if msg == "=== Device Information ===":
            if fields:
                break
            inside = True
            continue
        if not inside or ln.sev not in (None, "I"):
            continue
        if msg.startswith("TensorRT version") or msg.startswith("===") or msg.startswith("&&&&"):
            break
        if ":" in msg:
            k, v = msg.split(":", 1)
            fields.setdefault(k.strip(), v.strip())
    if not inside:
        return None

    def num(key: str, rx: str, cast=float):
        m = re.match(rx, fields.get(key, ""))
        return cast(m.group(1)) if m else None

    app = "Application Compute Clock Rate" in fields
    pre = "Application " if app else ""
    return DeviceInfo(
        name=fields.get("Selected Device"),
        uuid=fields.get("Selected Device UUID"),
        compute_capability=fields.get("Compute Capability"),
        sms=num("SMs", r"(\d{1,18})\b", int),
        global_memory_mib=num("Device Global Memory", r"(\d{1,18})\s*MiB", int),
        compute_clock_ghz=num(f"{pre}Compute Clock Rate", r"([\d.]+)\s*GHz"),
        memory_clock_ghz=num(f"{pre}Memory Clock Rate", r"([\d.]+)\s*GHz"),
        application_clocks=app,
    )


_MEM = re.compile(
    r"^((?:Total|Max) (?:Host Persistent|Device Persistent|Scratch|Activation|Weights) Memory):\s*(\d{1,18})\s*"
    r"(bytes|B|KiB|MiB|GiB)?\s*$"
)
_UNIT = {None: 1, "bytes": 1, "B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def build_memory(text: str) -> dict[str, int]:
    """The engine builder's memory report in bytes, e.g. ``{"Total Activation Memory": 125440, ...}``.
    8.x prints bare numbers (bytes), 10.x appends ``bytes``."""
    out: dict[str, int] = {}
    for ln in _lines(text):
        if m := _MEM.match(ln.msg.strip()):
            out[m.group(1)] = int(m.group(2)) * _UNIT[m.group(3)]
    return out


# -- failures -----------------------------------------------------------------------------------------------
_FATAL = re.compile(
    r"Engine could not be created from network|Engine set up failed|Failed to create engine"
    r"|Failed to parse onnx|Parsing model failed|Network building failed|Inference set up failed"
    r"|Error occurred during inference",
    re.I,
)
_PARSER = re.compile(r"Failed to parse onnx|Invalid Node -|While parsing node number|No importer registered", re.I)
_OOM = re.compile(r"out of memory|OutOfMemory|cudaErrorMemoryAllocation|could not be allocated", re.I)


def _error_lines(lines: list[_Line]) -> list[str]:
    """[E] messages, each with the untagged continuation lines that follow it joined in."""
    out: list[str] = []
    in_err = False
    for ln in lines:
        if ln.sev == "E":
            out.append(ln.msg.strip())
            in_err = True
        elif ln.sev is None and in_err and ln.raw.strip() and not _AMPS.match(ln.raw) and not ln.raw.startswith("#"):
            out[-1] = f"{out[-1]} | {ln.raw.strip()}"
        else:
            in_err = False
    return out


def _quote(errs: list[str], n: int = 4, width: int = 300) -> str:
    """The first [E] line (often the cause) and the last ``n`` ones (what gave up), shortened."""
    if not errs:
        return "trtexec printed no [E] lines"

    def cut(e: str) -> str:
        return f"[E] {e}" if len(e) <= width else f"[E] {e[: width - 3]}..."

    tail = " / ".join(cut(e) for e in errs[-n:])
    return tail if len(errs) <= n else f"first error: {cut(errs[0])}; last errors: {tail}"


def lines_have_trtexec(text: str) -> bool:
    return "TensorRT.trtexec" in text or "[TRT]" in text


def check_output(text: str, returncode: int | None = None) -> None:
    """Raise :class:`TrtpruneError` when a trtexec run failed, saying what failed and what to try.

    A run failed when it printed ``&&&& FAILED``, exited non-zero, or printed a fatal message (ONNX parse failure,
    ``Engine could not be created from network``, ...) without ``&&&& PASSED``. ``[W]`` lines never count, nor
    do ``[E]`` lines of a run that passed (the builder logs skipped tactics as errors). Returns None otherwise."""
    lines = _lines(text)
    failed = any((m := _AMPS.match(ln.raw)) and m.group(1) == "FAILED" for ln in lines)
    passed = any((m := _AMPS.match(ln.raw)) and m.group(1) == "PASSED" for ln in lines)
    bad_rc = returncode not in (None, 0)
    fatal = _FATAL.search(text) is not None
    if not (failed or bad_rc or (fatal and not passed)):
        return None
    errs = _error_lines(lines)
    rc = f" (exit code {returncode})" if bad_rc else ""
    version = trt_version(text)
    trt = f"TensorRT {version}" if version else "this TensorRT version"

    if _PARSER.search(text):
        node = op = None
        if m := re.search(r"Invalid Node - (.+?)\s*$", text, re.M):
            node = m.group(1)
        if m := re.search(r"In node -?\d+ with name: (.+?) and operator: (\S+)", text):
            node, op = node or m.group(1), m.group(2)
        if m := re.search(r'While parsing node number (\d+) \[([^\s\]]+)(?: -> "([^"]*)")?\]', text):
            op = op or m.group(2)
            node = node or f"node number {m.group(1)}"
        if op is None and (m := re.search(r'^op_type: "([^"]+)"', text, re.M)):
            op = m.group(1)
        if node is None and (m := re.search(r'^name: "([^"]+)"', text, re.M)):
            node = m.group(1)
        if m := re.search(r"No importer registered for op: (\S+)", text):
            op = op or m.group(1)
        attrs = re.findall(r'attribute \{\s*name: "(\w+)"\s*s: "([^"]*)"', text)
        what = f"TensorRT's ONNX parser failed on node {node or '(unnamed)'}" + (f" ({op})" if op else "") + rc
        why = f"Invalid Node - {node}; " if node else ""
        if attrs:
            why += "node attributes: " + ", ".join(f"{k}={v}" for k, v in attrs) + "; "
        op_txt = f"the {op} operator" if op else "that operator"
        raise TrtpruneError(
            what,
            why=why + _quote(errs),
            fix=f"re-export the model with another ONNX opset (e.g. torch.onnx.export(..., opset_version=17)), fold "
            "constants first (onnxslim, or polygraphy surgeon sanitize --fold-constants), or replace "
            f"{op_txt} (or its attribute values) with ones {trt} supports; if it is unsupported by TensorRT (see "
            "onnx-tensorrt's operators.md), keep that layer out of the model or provide a plugin",
        )

    if _OOM.search(text):
        building = re.search(r"Engine could not be created|buildSerializedNetwork|Building engine", text, re.I)
        need = ""
        if m := re.search(
            r"Requested amount of GPU memory \((\d{1,18}) bytes\)|allocating (\d{1,18})-byte buffer", text
        ):
            n = int(m.group(1) or m.group(2))
            need = f"TensorRT asked for {n} bytes ({n / 2**30:.2f} GiB) of GPU memory; "
        stage = "building the engine" if building else "running inference"
        raise TrtpruneError(
            f"the GPU ran out of memory while {stage} (Cuda Runtime: out of memory){rc}",
            why=need + _quote(errs),
            fix="give the builder a smaller workspace (--memPoolSize=workspace:1024M in TensorRT >= 8.4, "
            "--workspace=1024 before), build for a smaller batch / --maxShapes, use --fp16 or --int8, and free GPU "
            "memory held by other processes (on Jetson the GPU shares system RAM)",
        )

    if re.search(r"Engine could not be created from network|Failed to create engine|Engine set up failed", text):
        raise TrtpruneError(
            f"trtexec could not build a TensorRT engine{rc}",
            why=_quote(errs),
            fix="rerun trtexec with --verbose and read the first [E] line; an unsupported layer or a missing "
            "implementation for a fused node usually means an operator to replace in the model",
        )

    if returncode in (126, 127) and not lines_have_trtexec(text):  # the shell's "cannot execute" / "not found"
        raise TrtpruneError(
            f"trtexec could not be started{rc}: {text.strip()[-200:] or 'command not found'}",
            fix="point trtexec in the device file at NVIDIA's trtexec (JetPack: /usr/src/tensorrt/bin/trtexec)",
        )
    what = "trtexec reported FAILED" if failed else "trtexec failed"
    raise TrtpruneError(
        what + rc,
        why=_quote(errs),
        fix="rerun the same trtexec command with --verbose and read the first [E] line",
    )
