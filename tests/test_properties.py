"""Property tests: stair discovery on random staircases, and every reader of user files on random input
(plans, run configurations, device files, trtexec output) - a result or a TrtpruneError, nothing else."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from trtprune.config import FinetuneConfig, RunConfig
from trtprune.errors import TrtpruneError
from trtprune.latency import trtexec as T
from trtprune.latency.devices import Device, load_devices
from trtprune.profiling.stairs import Tolerance, exhaustive, three_point
from trtprune.searching.plan import Plan

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "trtexec"
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("props")


def raises_only_trtprune_error(fn, *args):
    """Call ``fn``; a TrtpruneError is an acceptable answer to bad input, any other exception is a bug."""
    try:
        return fn(*args)
    except TrtpruneError as e:
        assert str(e).strip(), "an error must say what went wrong"
        return e


HUGE = 10**400  # fits JSON and TOML, not a float
DEEP = "[" * 100_000 + "]" * 100_000  # nesting beyond Python's recursion limit
LONG = "9" * 5000  # more digits than int() converts
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([HUGE, -HUGE])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


# -- stair discovery ----------------------------------------------------------------------------------------------
@st.composite
def noisy_staircases(draw):
    """A monotone staircase with stair tops (edges) at random multiples of 4, random rises of at least 4x the
    tolerance, multiplicative noise below a fifth of it, and dips (slower counts, off the 4-grid as ONNX Runtime's
    input-channel kernels make them). Returns (hi, latency function, tolerance, the edges by construction)."""
    rel = draw(st.sampled_from([0.01, 0.02, 0.05]))
    hi = draw(st.integers(2, 96))
    tops = sorted(draw(st.sets(st.sampled_from(range(4, hi, 4)), max_size=6))) if hi > 4 else []
    rises = draw(st.lists(st.floats(4 * rel, 0.6), min_size=len(tops), max_size=len(tops)))
    base = draw(st.floats(0.005, 5.0))
    noise = draw(st.lists(st.floats(-rel / 5, rel / 5), min_size=hi, max_size=hi))
    off_grid = [c for c in range(5, hi) if c % 4]
    dips = draw(st.sets(st.sampled_from(off_grid), max_size=10)) if off_grid else set()
    dip = draw(st.floats(4 * rel, 0.5))

    def fn(c: int) -> float:
        level = base * math.prod(1 + r for t, r in zip(tops, rises) if c > t)
        return level * (1 + noise[c - 1]) * (1 + dip if c in dips else 1)

    return hi, fn, Tolerance(rel=rel, abs_ms=0.0), tuple(sorted({*tops, hi}))


@settings(max_examples=500, deadline=None)
@given(noisy_staircases())
def test_three_point_finds_exactly_the_edges_of_an_exhaustive_sweep(case):
    hi, fn, tol, expected = case
    measured = []

    def measure(counts):
        measured.extend(counts)
        return {c: fn(c) for c in counts}

    ref = exhaustive(1, hi, lambda cs: {c: fn(c) for c in cs}, tol)
    found = three_point(1, hi, measure, tol)
    assert ref.edges == expected  # the generator makes the stairs it says it makes
    assert found.edges == ref.edges
    assert set(found.dips) <= set(ref.dips)
    assert len(measured) == len(set(measured)) <= hi  # no count measured twice, never more than a sweep


# -- plans --------------------------------------------------------------------------------------------------------
finite = st.floats(0, 1e4, allow_nan=False, allow_infinity=False)


@st.composite
def plans(draw):
    channels = draw(st.dictionaries(st.text(min_size=1, max_size=16), st.integers(1, 4096), max_size=8))
    kept = sorted(channels)  # a plan gives a count for every group (one left out is refused: tests/mistakes)
    text = st.text(max_size=20)
    return Plan(
        draw(text),
        draw(text),
        draw(text),
        draw(text),
        {g: draw(st.integers(1, channels[g])) for g in kept},
        channels,
        draw(text),
        draw(st.none() | finite),
        draw(st.none() | finite),
        draw(st.none() | finite),
        draw(st.dictionaries(st.text(max_size=8), json_values, max_size=4)),
    )


@FAST
@given(plans())
def test_plans_round_trip_through_json(workdir, plan):
    plan.save(workdir / "plan.json")
    assert Plan.load(workdir / "plan.json") == plan


PLAN_KEYS = ["format", "model", "device", "method", "budget", "keep_channels", "channels", "lut_key",
             "baseline_ms", "predicted_ms", "measured_ms", "meta", "unknown"]  # fmt: skip


@st.composite
def damaged_plans(draw):
    """A valid plan's JSON with fields deleted, replaced by random JSON, or added; or random bytes or JSON."""
    kind = draw(st.sampled_from(["mutated", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    doc = {"format": "trtprune.plan/1", **json.loads(json.dumps(dataclasses.asdict(draw(plans()))))}
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(PLAN_KEYS))
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(json_values)
    text = json.dumps(doc)
    if draw(st.booleans()):  # cut short, as a copy interrupted midway
        text = text[: draw(st.integers(0, len(text)))]
    return text.encode()


@FAST
@given(damaged_plans())
@example(DEEP.encode())
@example(f'{{"format": "trtprune.plan/1", "x": {LONG}}}'.encode())
def test_a_damaged_plan_is_a_plan_or_a_trtprune_error(workdir, raw):
    (workdir / "bad.json").write_bytes(raw)
    result = raises_only_trtprune_error(Plan.load, workdir / "bad.json")
    assert isinstance(result, (Plan, TrtpruneError))


# -- run configurations -------------------------------------------------------------------------------------------
finetune_configs = st.builds(
    FinetuneConfig,
    epochs=st.integers(1, 1000),
    batch_size=st.integers(1, 4096),
    lr=finite,
    momentum=finite,
    weight_decay=finite,
    distill=st.floats(0, 1),
    temperature=finite,
    channels_last=st.booleans(),
    precision=st.sampled_from(["auto", "fp32", "bf16"]),
    train_limit=st.integers(0, 10**6),
    seed=st.integers(-(2**31), 2**31),
)
run_configs = st.builds(
    RunConfig,
    model=st.text(max_size=20),
    weights=st.none() | st.text(max_size=20),
    device=st.text(max_size=10),
    method=st.text(max_size=10),
    budget=st.none() | st.text(max_size=8),
    ratio=finite,
    round_to=st.integers(1, 64),
    importance=st.text(max_size=8),
    finetune=finetune_configs,
    eval_limit=st.integers(0, 10**5),
)


@FAST
@given(run_configs)
def test_run_configs_round_trip_through_json(cfg):
    assert RunConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@st.composite
def damaged_configs(draw):
    doc = json.loads(json.dumps(draw(run_configs).to_dict()))
    keys = [*doc, "unknown", *(f"finetune.{k}" for k in doc["finetune"])]
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(keys))
        where, key = (doc.get("finetune"), key[9:]) if key.startswith("finetune.") else (doc, key)
        if not isinstance(where, dict):
            continue
        if draw(st.booleans()):
            where.pop(key, None)
        else:
            where[key] = draw(json_values)
    return draw(st.sampled_from([doc, draw(json_values)]))


@FAST
@given(damaged_configs())
def test_a_damaged_config_is_a_config_or_a_trtprune_error(doc):
    result = raises_only_trtprune_error(RunConfig.from_dict, doc, "config.json")
    assert isinstance(result, (RunConfig, TrtpruneError))


# -- device files -------------------------------------------------------------------------------------------------
DEVICE_KEYS = [
    "backend", "host", "precision", "batch", "threads", "workspace_mib", "dla_core", "gpu_fallback", "trtexec",
    "timeout_s", "description", "name", "colour",
]  # fmt: skip
toml_scalars = (
    st.sampled_from(["ort", "trt", "ssh", "fake", "fp32", "fp16", "int8", "ubuntu@10.0.0.5", "a;b", ""])
    | st.text(max_size=10)
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats()
    | st.booleans()
)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # JSON string escapes are TOML basic-string escapes
    return str(v)


@st.composite
def device_files(draw) -> str:
    """TOML device tables with random keys and values; or random text; or either cut short."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=200))
    lines = []
    for name in draw(st.lists(st.text(min_size=1, max_size=8), max_size=3, unique=True)):
        lines.append(f"[devices.{json.dumps(name)}]")
        for key in draw(st.lists(st.sampled_from(DEVICE_KEYS), max_size=6, unique=True)):
            lines.append(f"{key} = {_toml_value(draw(toml_scalars))}")
    text = "\n".join(lines) + "\n"
    if draw(st.integers(0, 4)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


@FAST
@given(device_files())
@example(f"a = {DEEP}")
@example(f'[devices.x]\nbackend = "ort"\nbatch = {LONG}\n')
@example('[devices.x]\nbackend = "trt"\ntimeout_s = nan\n')
def test_a_random_device_file_gives_devices_or_a_trtprune_error(workdir, text):
    (workdir / "devices.toml").write_text(text)
    result = raises_only_trtprune_error(load_devices, workdir / "devices.toml")
    if not isinstance(result, TrtpruneError):
        assert all(isinstance(d, Device) and d.check() is d for d in result.values())


# -- trtexec output -----------------------------------------------------------------------------------------------
TEXT_PARSERS = [T.parse_summaries, T.parse_summary, T.parse_profile, T.parse_profile_table, T.device_info,
                T.build_memory, T.check_output, T.trt_version, T.layer_onnx_nodes]  # fmt: skip
JSON_LOADERS = [T.load_export_profile, T.load_export_times, T.load_layer_info]

trtexec_words = st.sampled_from([
    "=== Performance summary ===", "=== Profile (100 iterations ) ===", "=== Device Information ===",
    "[I] Latency: min = 1.2 ms, max = 3 ms, mean = 1.5 ms, median = 1.4 ms, percentile(99%) = 2 ms",
    "[I] GPU Compute Time: min = 0.5 ms, max = 0.9 ms, mean = 0.6 ms, median = 0.6 ms", "[E] Error[4]: failed",
    "   Layer   Time (ms)   Avg. Time (ms)   Time %", "conv1 + relu  1.5  0.015  20.0", "Total  7.5  0.075  100.0",
    "&&&& RUNNING TensorRT.trtexec [TensorRT v8502]", "&&&& PASSED TensorRT.trtexec [TensorRT v8502]",
    "&&&& FAILED TensorRT.trtexec", "[I] Throughput: 1234.5 qps", "[W] [TRT] unstable", "Batch: 4",
    "[I] Selected Device: Orin", "[I] Compute Capability: 8.7", "[I] Total Host Walltime: 3.0 s",
    "percentile: 1.0 ms at 99%", "min: 1 ms (end to end 2 ms)", "[01/01/1970-00:00:12] [I] ", "nan", "1e999",
    f"[I] Batch: {LONG}", f"=== Profile ({LONG} iterations ) ===", f"[I] SMs: {LONG}", f"[I] Device Global Memory: "
    f"{LONG} MiB", f"[I] Total Activation Memory: {LONG} bytes", f"Requested amount of GPU memory ({LONG} bytes)",
    "[E] Cuda Runtime (out of memory)",
])  # fmt: skip
trtexec_texts = st.lists(trtexec_words | st.text(max_size=40), max_size=25).map("\n".join)


def _call_all(text: str) -> None:
    for parse in TEXT_PARSERS:
        raises_only_trtprune_error(parse, text)
    raises_only_trtprune_error(T.check_output, text, 1)


@settings(max_examples=200, deadline=None)
@given(trtexec_texts)
def test_random_trtexec_text_gives_a_result_or_a_trtprune_error(text):
    _call_all(text)


parsed_or_text = json_values.map(lambda v: v if isinstance(v, (list, dict)) else json.dumps(v))  # as callers pass


@settings(max_examples=200, deadline=None)
@given(st.one_of(parsed_or_text, json_values.map(json.dumps), st.text(max_size=50)))
@example(DEEP)
@example("a\x00b.json")
@example(f"[{LONG}]")
@example([{"name": "conv", "timeMs": HUGE, "averageMs": 1, "percentage": 1}])
def test_random_trtexec_json_gives_a_result_or_a_trtprune_error(src):
    """The loaders take a path, the file's text, or the parsed list or object."""
    for load in JSON_LOADERS:
        raises_only_trtprune_error(load, src)
    if isinstance(src, list):
        raises_only_trtprune_error(T.latency_stats, [r for r in src if isinstance(r, dict)])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["latencyMs", "computeMs", "x"]), json_values, max_size=3),
                max_size=6))  # fmt: skip
def test_random_export_times_records_give_stats_or_a_trtprune_error(records):
    raises_only_trtprune_error(T.latency_stats, records)


@st.composite
def mutated_fixtures(draw):
    """A real trtexec log or JSON export, with lines dropped, duplicated or swapped, numbers replaced, or cut."""
    files = sorted(p for p in FIXTURES.iterdir() if p.suffix in (".txt", ".json"))
    path = draw(st.sampled_from(files))
    lines = path.read_text(encoding="utf-8").splitlines()
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "swap", "number", "garbage"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == "number":
            token = draw(st.sampled_from(["-1", "0", "nan", "inf", "1e999", "", "x", "99999999999999999999"]))
            lines[i] = re.sub(r"\d+(\.\d+)?", token, lines[i], count=draw(st.integers(0, 3)))
        else:
            lines[i] = draw(st.text(max_size=30))
    text = "\n".join(lines)
    if draw(st.booleans()):
        text = text[: draw(st.integers(0, len(text)))]
    return path.suffix, text


@pytest.mark.skipif(not FIXTURES.is_dir(), reason=f"trtexec fixtures absent: expected real trtexec logs in {FIXTURES}")
@settings(max_examples=120, deadline=None)
@given(mutated_fixtures())
def test_mutated_real_trtexec_output_gives_a_result_or_a_trtprune_error(case):
    suffix, text = case
    if suffix == ".json":
        for load in JSON_LOADERS:
            raises_only_trtprune_error(load, text if text.lstrip()[:1] in ("[", "{") else "[" + text)
    else:
        _call_all(text)
