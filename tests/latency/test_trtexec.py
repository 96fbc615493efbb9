"""trtexec output parsers against real trtexec logs and JSON files (../shared/fixtures/trtexec, see SOURCES.md there).

The expected numbers were read from the fixture files; the files themselves are not copied into the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trtprune.errors import TrtpruneError
from trtprune.latency import trtexec as T

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "trtexec"
ALL_FILES = sorted(p.name for p in FIXTURES.glob("*") if p.suffix in (".txt", ".json")) if FIXTURES.is_dir() else []

# every fixture and the test(s) below that check its numbers; a new fixture must be added here (and tested)
COVERED = {
    "trt7.x_jetson_resnet50_caffe_fp16_batchsweep_oldformat.txt",
    "trt8.2.5_cc8.0_gpu_mobilenetv2_b64_onnx_build_and_perf.txt",
    "trt8.2.5_cc8.0_gpu_mobilenetv2_qat_int8_build_and_perf_warnings.txt",
    "trt8.4.0_xavier_agx_mnist_loadengine_perf_summary.txt",
    "trt8.5.2_orin_nano_yoloxs_fp16_perf_summary.txt",
    "trt8.6.1_docker_mnist_perf_summary_unstable_warning.txt",
    "trt10.3_rtxa5000_resnet50_onnx_build_and_perf.txt",
    "trt10.16_h100pcie_mnist_onnx_build_and_perf.txt",
    "trt7.1.3_xavier_agx_dla_googlenet_dumpprofile_oldformat.txt",
    "trt8.5.2_orin_agx_dla_googlenet_dumpprofile.txt",
    "trt8.5.2_xavier_nx_lprnet_dumpprofile_verbose.txt",
    "trt10.16_h100pcie_dumpprofile_loadengine.txt",
    "trt7.1.3_xavier_agx_googlenet_gpu_exportProfile.json",
    "trt8.4era_titanrtx_mobilenetv2_qat_exportProfile.json",
    "trt8.4era_titanrtx_mobilenetv2_qat_exportLayerInfo.json",
    "trt10.16_h100pcie_mnist_exportLayerInfo.json",
    "trt8.4era_rtx3090_resnet50_b32_fp32_exportTimes.json",
    "trt8.2.4_failed_onnx_parser_pad_reflect.txt",
    "trt10.3_failed_build_cuda_oom_excerpt.txt",
    "trt10.16.2_orin_nx16gb_device_info_epoch_timestamps_excerpt.txt",
}


def _need_fixtures() -> None:
    if not FIXTURES.is_dir():
        pytest.skip(f"trtexec fixtures absent: expected real trtexec logs in {FIXTURES} (../shared/fixtures/trtexec)")


def read(name: str) -> str:
    _need_fixtures()
    return (FIXTURES / name).read_text(encoding="utf-8")


def path(name: str) -> Path:
    _need_fixtures()
    return FIXTURES / name


# -- every file -----------------------------------------------------------------------------------------------
def test_every_fixture_has_a_dedicated_test():
    _need_fixtures()
    assert set(ALL_FILES) == COVERED, "add numeric tests for new fixtures (and drop removed ones) in this file"


@pytest.mark.parametrize("name", ALL_FILES)
def test_every_fixture_parses(name):
    if name.endswith(".json"):
        if "exportProfile" in name:
            assert T.load_export_profile(path(name))
        elif "exportTimes" in name:
            assert T.latency_stats(T.load_export_times(path(name))).min_ms > 0
        elif "exportLayerInfo" in name:
            assert T.load_layer_info(path(name))
        else:
            pytest.fail(f"unknown JSON fixture kind: {name}")
        return
    text = read(name)
    if "failed" in name:
        with pytest.raises(TrtpruneError):
            T.check_output(text)
    else:
        assert T.check_output(text) is None
    for s in T.parse_summaries(text):
        assert s.gpu_compute is not None and s.gpu_compute.min_ms <= s.gpu_compute.max_ms
    if "=== Profile (" in text:
        assert T.parse_profile_table(text)


# -- performance summaries ------------------------------------------------------------------------------------
def test_trt7_batch_sweep_old_format_splits_seven_runs():
    runs = T.parse_summaries(read("trt7.x_jetson_resnet50_caffe_fp16_batchsweep_oldformat.txt"))
    assert [r.batch for r in runs] == [1, 4, 8, 16, 32, 64, 128]
    assert [r.throughput_qps for r in runs] == [37.0368, 43.6244, 44.465, 46.2189, 47.1435, 47.5138, 47.7781]
    assert all(r.passed is True and r.trt_version is None and r.device is None for r in runs)
    first = runs[0]
    assert first.latency == T.Stats(26.8054, 29.0007, 26.9861, 26.9689, {99.0: 27.1187})  # "Host Latency"
    assert first.end_to_end == T.Stats(26.8135, 29.0186, 26.9996, 26.9833, {99.0: 27.1382})  # "(end to end Y ms)"
    assert first.enqueue == T.Stats(1.73877, 2.31958, None, 1.80298, {})  # TRT 7 prints no enqueue mean
    assert first.gpu_compute == T.Stats(26.7439, 28.9368, 26.925, 26.9075, {99.0: 27.0562})
    assert first.total_gpu_compute_s == 3.04253 and first.walltime_s == 3.05102
    assert first.h2d is None and first.d2h is None and first.warnings == ()
    last = T.parse_summary(read("trt7.x_jetson_resnet50_caffe_fp16_batchsweep_oldformat.txt"))
    assert last.batch == 128 and last.gpu_compute.median_ms == 2671.88 and last.total_gpu_compute_s == 8.01297


def test_trt82_summary_single_p99_and_end_to_end():
    s = T.parse_summary(read("trt8.2.5_cc8.0_gpu_mobilenetv2_b64_onnx_build_and_perf.txt"))
    assert s.trt_version == "8.2.5" and s.device == "NVIDIA Graphics Device" and s.passed is True
    assert s.throughput_qps == 166.041
    assert s.latency == T.Stats(8.90146, 9.52582, 9.04623, 8.99896, {99.0: 9.50714})
    assert s.end_to_end == T.Stats(10.1021, 12.6202, 11.6584, 11.5563, {99.0: 12.5932})
    assert s.enqueue.mean_ms == 2.05872
    assert s.h2d.min_ms == 3.00195
    assert s.gpu_compute == T.Stats(5.87982, 6.47681, 6.00728, 5.94946, {99.0: 6.47375})
    assert s.d2h.max_ms == 0.0134277
    assert s.walltime_s == 3.01732 and s.total_gpu_compute_s == 3.00965
    assert s.warnings == () and s.batch is None  # "Batch: Explicit"


def test_trt82_qat_warnings_are_kept_but_never_errors():
    text = read("trt8.2.5_cc8.0_gpu_mobilenetv2_qat_int8_build_and_perf_warnings.txt")
    assert T.check_output(text) is None
    assert T.check_output(text, returncode=0) is None
    s = T.parse_summary(text)
    assert s.throughput_qps == 324.544 and s.gpu_compute.median_ms == 1.61377 and s.end_to_end.mean_ms == 4.71364
    assert len(s.warnings) == 5  # 3 parser/builder warnings + 2 advisories, each joined with its continuation line
    int64 = "parsers/onnx/onnx2trt_utils.cpp:368: Your ONNX model has been generated with INT64"
    assert any(w.startswith(int64) for w in s.warnings)
    enqueue_bound = [w for w in s.warnings if w.startswith("Throughput may be bound by Enqueue Time")]
    assert enqueue_bound and "--useCudaGraph" in enqueue_bound[0]
    assert any("Add --noDataTransfers flag" in w for w in s.warnings)


def test_trt84_summary_block_only():
    s = T.parse_summary(read("trt8.4.0_xavier_agx_mnist_loadengine_perf_summary.txt"))
    assert s.trt_version == "8.4.0" and s.device is None and s.passed is True
    assert s.throughput_qps == 41087.7
    assert s.latency == T.Stats(0.387207, 0.447357, 0.402238, 0.401947, {99.0: 0.420288})
    assert s.gpu_compute.mean_ms == 0.388221 and s.gpu_compute.percentiles == {99.0: 0.393188}
    assert s.end_to_end is None  # no End-to-End line from 8.4 on
    assert s.walltime_s == 3.00119 and s.total_gpu_compute_s == 2.99202


def test_trt85_orin_nano_three_percentiles():
    s = T.parse_summary(read("trt8.5.2_orin_nano_yoloxs_fp16_perf_summary.txt"))
    assert s.trt_version == "8.5.2" and s.throughput_qps == 97.8649
    assert s.gpu_compute.median_ms == 10.1851
    assert s.gpu_compute == T.Stats(10.0343, 10.3575, 10.1824, 10.1851, {90.0: 10.3206, 95.0: 10.338, 99.0: 10.356})
    assert s.latency.mean_ms == 10.7971 and s.latency.percentiles[95.0] == 10.949
    assert s.d2h.percentiles == {90.0: 0.302856, 95.0: 0.304077, 99.0: 0.310608}
    assert s.end_to_end is None and s.total_gpu_compute_s == 3.02418


def test_trt86_unstable_gpu_warning():
    text = read("trt8.6.1_docker_mnist_perf_summary_unstable_warning.txt")
    assert T.check_output(text) is None
    s = T.parse_summary(text)
    assert s.trt_version == "8.6.1" and s.throughput_qps == 40624.2 and s.gpu_compute.median_ms == 0.0166016
    assert s.warnings == (
        "GPU compute time is unstable, with coefficient of variance = 29.0605%. If not already in use, locking GPU "
        "clock frequency or adding --useSpinWait may improve the stability.",
    )


def test_trt103_full_log():
    text = read("trt10.3_rtxa5000_resnet50_onnx_build_and_perf.txt")
    assert T.trt_version(text) == "10.3.0"  # [TensorRT v100300]
    s = T.parse_summary(text)
    assert s.device == "NVIDIA RTX A5000" and s.throughput_qps == 873.17 and s.passed is True
    assert s.gpu_compute == T.Stats(1.12744, 1.30353, 1.14253, 1.14185, {90.0: 1.1499, 95.0: 1.151, 99.0: 1.15405})
    assert s.h2d.median_ms == 0.0571289 and s.enqueue.max_ms == 1.58789
    assert s.walltime_s == 3.00285 and s.total_gpu_compute_s == 2.99571 and s.warnings == ()
    dev = T.device_info(text)
    assert (dev.name, dev.compute_capability, dev.sms, dev.global_memory_mib) == ("NVIDIA RTX A5000", "8.6", 64, 24238)
    assert dev.application_clocks and dev.compute_clock_ghz == 1.695 and dev.memory_clock_ghz == 8.001
    mem = T.build_memory(text)  # 10.3 prints bare numbers (bytes)
    assert mem["Total Activation Memory"] == 8228864 and mem["Total Weights Memory"] == 127384320


def test_trt1016_newest_format_build_tag_omitted_lines_and_bytes():
    text = read("trt10.16_h100pcie_mnist_onnx_build_and_perf.txt")
    assert T.trt_version(text) == "10.16.1"  # [TensorRT v101601] [b11]
    assert T.check_output(text) is None
    s = T.parse_summary(text)
    assert s.trt_version == "10.16.1" and s.device == "NVIDIA H100 PCIe" and s.throughput_qps == 15374.3
    assert s.gpu_compute.median_ms == 0.0361328 and s.gpu_compute.percentiles[99.0] == 0.041748
    assert s.latency.min_ms == 0.0410156 and s.d2h.percentiles[90.0] == 0.00421143
    assert s.total_gpu_compute_s == 1.6586 and s.walltime_s == 3.00013
    unstable = "GPU compute time is unstable, with coefficient of variance = 6.58751%."
    assert any(w.startswith(unstable) for w in s.warnings)
    assert any(w.startswith("Dynamic dimensions required for input: x") for w in s.warnings)
    assert T.build_memory(text) == {  # "... bytes" in 10.16
        "Total Host Persistent Memory": 18896,
        "Total Device Persistent Memory": 0,
        "Max Scratch Memory": 4608,
        "Total Activation Memory": 125440,
        "Total Weights Memory": 13100672,
    }
    assert T.device_info(text).sms == 114


def test_trt1016_orin_device_block_epoch_timestamps():
    text = read("trt10.16.2_orin_nx16gb_device_info_epoch_timestamps_excerpt.txt")
    assert T.trt_version(text) == "10.16.2"  # "TensorRT version: 10.16.2", no &&&& line in the excerpt
    assert T.check_output(text) is None
    assert T.parse_summaries(text) == []
    with pytest.raises(TrtpruneError, match="no trtexec performance summary"):
        T.parse_summary(text)
    dev = T.device_info(text)
    assert dev.name == "Orin" and dev.compute_capability == "8.7" and dev.sms == 8 and dev.global_memory_mib == 15536
    assert dev.application_clocks and dev.compute_clock_ghz == 1.173 and dev.memory_clock_ghz == 0.408
    assert dev.uuid == "GPU-f5507ee1-b6b1-556b-8350-83af993dbffd"


def test_trt71_profile_log_has_only_the_gpu_compute_tail():
    s = T.parse_summary(read("trt7.1.3_xavier_agx_dla_googlenet_dumpprofile_oldformat.txt"))
    assert s.gpu_compute == T.Stats(3.60278, 4.14014, 3.68068, 3.66748, {99.0: 3.87695})
    assert s.total_gpu_compute_s == 3.68068
    assert s.latency is None and s.throughput_qps is None and s.passed is None and s.trt_version is None


def test_garbage_raises_a_clear_error():
    with pytest.raises(TrtpruneError, match="no trtexec performance summary") as e:
        T.parse_summary("Segmentation fault (core dumped)\nsomething else")
    assert "Segmentation fault" in e.value.why and "trtexec" in e.value.fix
    with pytest.raises(TrtpruneError, match="no trtexec performance summary"):
        T.parse_summary("")
    assert T.parse_summaries("random words: min = 3 ms") == []


# -- per-layer profiles ---------------------------------------------------------------------------------------
def test_trt71_old_profile_layout_long_dla_name():
    p = T.parse_profile(read("trt7.1.3_xavier_agx_dla_googlenet_dumpprofile_oldformat.txt"))
    assert p.layout == "name-first" and p.iterations == 1514
    assert [x.name for x in p.layers][:1] == ["data to nvm"] and len(p.layers) == 6
    assert p.layers[0] == T.LayerTime("data to nvm", 68.17, 0.05, None, 1.2)
    dla = p.layers[1]
    assert dla.name.startswith("{conv1/7x7_s2,conv1/relu_7x7,") and dla.name.endswith(",loss3/classifier}")
    assert len(dla.name) > 2900 and (dla.total_ms, dla.average_ms, dla.percent) == (298.26, 0.20, 5.4)
    assert p.layers[3] == T.LayerTime("prob input reformatter 0", 5046.37, 3.33, None, 92.1)
    assert p.total == T.LayerTime("Total", 5477.95, 3.62, None, 100.0)
    assert all(x.name != "Total" for x in p.layers)
    nodes = T.layer_onnx_nodes(dla.name)
    assert nodes[:2] == ("conv1/7x7_s2", "conv1/relu_7x7") and nodes[-1] == "loss3/classifier"
    assert T.layer_onnx_nodes("prob input reformatter 0") == () and T.layer_onnx_nodes("data to nvm") == ()


def test_trt85_old_layout_with_median_and_spaced_names():
    rows = T.parse_profile_table(read("trt8.5.2_orin_agx_dla_googlenet_dumpprofile.txt"))
    assert [r.name for r in rows] == [
        "Reformatting CopyNode for Input Tensor 0 to {ForeignNode[conv1/7x7_s2...loss3/classifier]}",
        "{ForeignNode[conv1/7x7_s2...loss3/classifier]}",
        "Reformatting CopyNode for Input Tensor 0 to prob",
        "prob",
    ]
    assert rows[1] == T.LayerTime("{ForeignNode[conv1/7x7_s2...loss3/classifier]}", 5089.98, 1.0320, 1.0321, 93.1)
    assert T.parse_profile(read("trt8.5.2_orin_agx_dla_googlenet_dumpprofile.txt")).total.total_ms == 5469.61
    assert T.layer_onnx_nodes(rows[1].name) == ("conv1/7x7_s2", "loss3/classifier")  # ends of the range only
    assert T.layer_onnx_nodes(rows[0].name) == ()


def test_trt85_verbose_profile_without_summary():
    text = read("trt8.5.2_xavier_nx_lprnet_dumpprofile_verbose.txt")
    assert T.check_output(text) is None
    assert T.parse_summaries(text) == []
    with pytest.raises(TrtpruneError) as e:
        T.parse_summary(text)
    assert "--separateProfileRun" in str(e.value) and "--dumpProfile" in str(e.value)
    p = T.parse_profile(text)
    assert p.iterations == 309 and len(p.layers) == 28
    assert p.layers[0] == T.LayerTime("[HostToDeviceCopy 0]", 16.77, 0.0543, 0.0285, 0.5)
    big = max(p.layers, key=lambda r: r.total_ms)
    assert big == T.LayerTime("{ForeignNode[lstm_W...Max_reduce_min]}", 2130.62, 6.8952, 6.2962, 69.4)
    assert p.total == T.LayerTime("Total", 3068.65, 9.9309, 9.1586, 100.0)
    assert T.layer_onnx_nodes("res2a_branch2b + tf_op_layer_add/add + PWN(re_lu_2_clip)") == (
        "res2a_branch2b",
        "tf_op_layer_add/add",
        "re_lu_2_clip",
    )
    assert T.layer_onnx_nodes("[HostToDeviceCopy 0]") == ()
    dev = T.device_info(text)
    assert dev.name == "Xavier" and dev.sms == 6 and not dev.application_clocks and dev.compute_clock_ghz == 1.109


def test_profile_tolerates_verbose_and_warning_lines_inside_the_table():
    text = read("trt8.5.2_xavier_nx_lprnet_dumpprofile_verbose.txt")
    lines = text.splitlines()
    at = next(i for i, ln in enumerate(lines) if "res2a_branch1 " in ln)
    lines[at:at] = [
        "[10/21/2025-15:16:16] [V] [TRT] a verbose line printed while the table was written",
        "[10/21/2025-15:16:16] [W] [TRT] a warning in between",
    ]
    assert T.parse_profile("\n".join(lines)) == T.parse_profile(text)


def test_trt1016_new_profile_layout_name_last():
    text = read("trt10.16_h100pcie_dumpprofile_loadengine.txt")
    assert T.check_output(text) is None  # "Shape missing for input with dynamic shape" is a warning
    with pytest.raises(TrtpruneError, match="per-layer profile but no performance summary"):
        T.parse_summary(text)
    p = T.parse_profile(text)
    assert p.layout == "name-last" and p.iterations == 18362 and len(p.layers) == 15
    assert p.layers[0] == T.LayerTime("__mye59_0_myl0_0", 31.40, 0.0017, 0.0018, 2.1)
    reformat = "Reformatting CopyNode for Input Tensor 0 to {ForeignNode[node_conv2d_1...node_relu_1]}"
    assert p.layers[3] == T.LayerTime(reformat, 101.96, 0.0056, 0.0044, 6.7)
    assert p.total == T.LayerTime("Total", 1529.13, 0.0833, 0.0804, 100.0)
    assert T.layer_onnx_nodes("node_conv2d_myl0_1") == ("node_conv2d",)
    assert T.layer_onnx_nodes("__myl_MaxrSubExpSum_myl5_4") == ()


@pytest.mark.parametrize(
    "name, decimals",
    [
        ("trt7.1.3_xavier_agx_dla_googlenet_dumpprofile_oldformat.txt", 2),  # name first, no median
        ("trt8.5.2_orin_agx_dla_googlenet_dumpprofile.txt", 4),  # name first, median
        ("trt8.5.2_xavier_nx_lprnet_dumpprofile_verbose.txt", 4),
        ("trt10.16_h100pcie_dumpprofile_loadengine.txt", 4),  # name last
    ],
)
def test_both_profile_layouts_have_the_same_field_semantics(name, decimals):
    p = T.parse_profile(read(name))
    assert sum(r.total_ms for r in p.layers) == pytest.approx(p.total.total_ms, abs=0.005 * len(p.layers))
    for r in p.layers:  # total over all iterations, average per iteration, percent of the total
        rounding = 0.5 * 10**-decimals + 0.005 / p.iterations + 1e-6  # printed average, and total to 2 decimals
        assert r.average_ms == pytest.approx(r.total_ms / p.iterations, abs=rounding)
        assert r.percent == pytest.approx(100 * r.total_ms / p.total.total_ms, abs=0.051)
        assert (r.median_ms is None) == (decimals == 2)


def test_no_profile_table_is_a_clear_error():
    with pytest.raises(TrtpruneError, match="no per-layer profile") as e:
        T.parse_profile_table(read("trt8.5.2_orin_nano_yoloxs_fp16_perf_summary.txt"))
    assert "--dumpProfile" in e.value.fix


# -- JSON exports ---------------------------------------------------------------------------------------------
def test_trt71_export_profile_has_no_median_and_skips_count():
    name = "trt7.1.3_xavier_agx_googlenet_gpu_exportProfile.json"
    rows = T.load_export_profile(path(name))
    raw = json.loads(read(name))
    assert raw[0] == {"count": 12485} and len(rows) == len(raw) - 1 == 84
    assert rows[0] == T.LayerTime("conv1/7x7_s2 + conv1/relu_7x7 input reformatter 0", 277.965, 0.022264, None, 1.15064)
    slowest = max(rows, key=lambda r: r.total_ms)
    assert slowest == T.LayerTime("conv2/3x3 + conv2/relu_3x3", 1567.15, 0.125523, None, 6.48725)
    assert all(r.median_ms is None for r in rows)
    assert sum(r.percent for r in rows) == pytest.approx(100, abs=0.01)
    for r in rows:  # same semantics as the console table: per-iteration average of the total
        assert r.average_ms == pytest.approx(r.total_ms / 12485, rel=1e-4)


def test_trt84_export_profile_with_median_joins_layer_info():
    rows = T.load_export_profile(path("trt8.4era_titanrtx_mobilenetv2_qat_exportProfile.json"))
    assert len(rows) == 73 and all(r.name != "count" for r in rows)
    assert rows[0] == T.LayerTime("QuantizeLinear_2", 31.3879, 0.00474854, 0.004544, 1.00949)
    assert rows[-1].total_ms == 0 and rows[-1].median_ms == 0  # a 0-ms layer is kept
    assert max(r.total_ms for r in rows) == 108.727
    # the same engine's layer info: the two join by name
    layers = T.load_layer_info(path("trt8.4era_titanrtx_mobilenetv2_qat_exportLayerInfo.json"))
    assert [r.name for r in rows] == [layer.name for layer in layers]
    # a path string, the JSON text and the parsed list give the same rows
    text = read("trt8.4era_titanrtx_mobilenetv2_qat_exportProfile.json")
    assert T.load_export_profile(text) == rows == T.load_export_profile(json.loads(text))
    assert T.load_export_profile(str(path("trt8.4era_titanrtx_mobilenetv2_qat_exportProfile.json"))) == rows


def test_trt84_layer_info_detailed():
    layers = T.load_layer_info(path("trt8.4era_titanrtx_mobilenetv2_qat_exportLayerInfo.json"))
    assert len(layers) == 73
    q = layers[0]
    assert (q.name, q.layer_type, q.tactic, q.inputs, q.outputs) == (
        "QuantizeLinear_2",
        "Reformat",
        "0x0000000000000000",  # no TacticName: the TacticValue
        ("input1",),
        ("317",),
    )
    assert q.raw["Origin"] == "QDQ" and q.onnx_nodes == ("QuantizeLinear_2",)
    conv = layers[1]
    assert conv.layer_type == "CaskConvolution"
    assert conv.tactic == "volta_int8x4_icudnn_int8x4_128x32_relu_xregs_medium_c32_nn_v1"
    assert conv.onnx_nodes == ("features.0.0.weight", "QuantizeLinear_8", "Conv_12", "Clip_16")
    assert conv.raw["Weights"] == {"Type": "Int8", "Count": 864}
    fc = next(layer for layer in layers if "Gemm_864" in layer.name)
    assert fc.onnx_nodes == ("classifier.1.weight", "QuantizeLinear_860", "Gemm_864", "classifier.1.bias")
    assert layers[-1].layer_type == "NoOp" and layers[-1].onnx_nodes == ()


def test_trt1016_layer_info_metadata_maps_to_onnx_nodes():
    text = read("trt10.16_h100pcie_mnist_exportLayerInfo.json")
    assert "\\u001e" in text and "\\u001f" in text  # the separators, as JSON escapes in the file
    layers = T.load_layer_info(path("trt10.16_h100pcie_mnist_exportLayerInfo.json"))
    by_name = {layer.name: layer for layer in layers}
    assert len(layers) == 9
    conv = by_name["node_conv2d + node_relu"]  # Metadata "[ONNX Layer: node_conv2d]\x1e[ONNX Layer: node_relu]"
    assert conv.onnx_nodes == ("node_conv2d", "node_relu") == T.layer_onnx_nodes(conv.name)
    assert conv.tactic.startswith("sm80_xmma_fprop_implicit_gemm") and conv.raw["StreamId"] == 0
    gemm = by_name["node_linear_myl4_0"]  # myelin layer, "\x1f" separator; no "Location" in its tensors
    assert gemm.layer_type == "gemm" and gemm.onnx_nodes == ("node_linear", "node_relu_2")
    assert "Location" not in gemm.raw["Inputs"][0]
    assert by_name["__myl_DivMulMaxr_myl4_3"].onnx_nodes == ("node_softmax", "node_argmax")
    cast = by_name["__myl_CastReshCast_myl4_4"]  # empty Metadata: the name heuristic, a myelin kernel -> ()
    assert cast.onnx_nodes == () and cast.outputs == ("z",)
    assert json.loads(text)["Bindings"] == ["x", "y", "z"]


def test_layer_info_names_only_form():
    data = {"Layers": ["Conv_0 + Relu_1", "Reformatting CopyNode for Input Tensor 0 to Conv_2", "7"], "Bindings": []}
    layers = T.load_layer_info(data)
    assert [x.name for x in layers] == ["Conv_0 + Relu_1", "Reformatting CopyNode for Input Tensor 0 to Conv_2", "7"]
    assert layers[0].onnx_nodes == ("Conv_0", "Relu_1") and layers[0].layer_type is None and layers[0].tactic is None
    assert layers[1].onnx_nodes == () and layers[2].onnx_nodes == ()  # reformat; layer index (verbosity none)


def test_layer_onnx_nodes_heuristic():
    assert T.layer_onnx_nodes("Conv_0 + Relu_1") == ("Conv_0", "Relu_1")
    assert T.layer_onnx_nodes("conv1 + relu1") == ("conv1", "relu1")
    assert T.layer_onnx_nodes("Conv_3 + PWN(PWN(Sigmoid_4), Mul_5)") == ("Conv_3", "Sigmoid_4", "Mul_5")
    assert T.layer_onnx_nodes("{a,b,c}") == ("a", "b", "c")
    assert T.layer_onnx_nodes("/model/conv/Conv + /model/act/Relu") == ("/model/conv/Conv", "/model/act/Relu")
    assert T.layer_onnx_nodes("") == ()


def test_export_times_stats_like_trtexec():
    recs = T.load_export_times(path("trt8.4era_rtx3090_resnet50_b32_fp32_exportTimes.json"))
    assert len(recs) == 263 and all(r["h2dMs"] == 0 and r["d2hMs"] == 0 for r in recs)  # --noDataTransfers
    assert recs[0]["latencyMs"] == 13.0181 and recs[0]["startComputeMs"] == 16.6236
    s = T.latency_stats(recs)
    assert (s.min_ms, s.max_ms, s.median_ms) == (12.0986, 13.0181, 12.1682)
    assert s.mean_ms == pytest.approx(12.2299194, abs=1e-7)
    # trtexec drops int((1 - p/100) * 263) of the largest: 26, 13 and 2 values
    assert s.percentiles == {90.0: 12.2686, 95.0: 12.7857, 99.0: 12.7959}
    assert T.latency_stats(recs, key="computeMs") == s  # no transfers: latency == compute
    assert T.latency_stats([{"computeMs": 2.0}, {"computeMs": 1.0}]).median_ms == 1.5
    with pytest.raises(TrtpruneError):
        T.latency_stats([])


def test_bad_json_is_a_clear_error(tmp_path):
    bad = tmp_path / "profile.json"
    bad.write_text("[{ not json")
    with pytest.raises(TrtpruneError, match="not a trtexec exportProfile JSON"):
        T.load_export_profile(bad)
    with pytest.raises(TrtpruneError, match="cannot read"):
        T.load_export_times(tmp_path / "missing.json")
    with pytest.raises(TrtpruneError, match="not a trtexec --exportLayerInfo"):
        T.load_layer_info({"Bindings": []})


# -- failures -------------------------------------------------------------------------------------------------
def test_onnx_parser_failure_names_the_node():
    text = read("trt8.2.4_failed_onnx_parser_pad_reflect.txt")
    assert T.trt_version(text) == "8.2.4"
    with pytest.raises(TrtpruneError) as e:
        T.check_output(text)
    msg = str(e.value)
    assert "Pad_13" in e.value.what and "(Pad)" in e.value.what
    assert "Invalid Node - Pad_13" in msg and "mode=reflect" in msg
    assert "opset" in e.value.fix and "unsupported by TensorRT" in e.value.fix
    assert T.parse_summaries(text) == []
    with pytest.raises(TrtpruneError, match="Pad_13"):
        T.parse_summary(text)  # says why there is no summary: the parse failure
    with pytest.raises(TrtpruneError, match=r"exit code 1"):
        T.check_output(text, returncode=1)


def test_out_of_memory_build_failure():
    text = read("trt10.3_failed_build_cuda_oom_excerpt.txt")  # no &&&& FAILED line in this excerpt
    with pytest.raises(TrtpruneError) as e:
        T.check_output(text)
    assert "out of memory" in e.value.what and "building the engine" in e.value.what
    assert "15485030400 bytes" in e.value.why and "Engine could not be created from network" in e.value.why
    assert "--memPoolSize=workspace" in e.value.fix and "batch" in e.value.fix


def test_failed_marker_and_return_code():
    ok = read("trt8.5.2_orin_nano_yoloxs_fp16_perf_summary.txt")
    assert T.check_output(ok, returncode=0) is None
    with pytest.raises(TrtpruneError, match="exit code 3"):
        T.check_output(ok, returncode=3)
    failed = "&&&& RUNNING TensorRT.trtexec [TensorRT v8601] # trtexec\n[01/01/1970-00:00:12] [E] boom\n" + (
        "&&&& FAILED TensorRT.trtexec [TensorRT v8601] # trtexec"
    )
    with pytest.raises(TrtpruneError, match="reported FAILED") as e:
        T.check_output(failed)
    assert "[E] boom" in e.value.why
    assert T.check_output("[W] [TRT] only a warning\n[I] fine") is None


def test_version_tags():
    assert T.trt_version("&&&& PASSED TensorRT.trtexec [TensorRT v8502] # trtexec") == "8.5.2"
    assert T.trt_version("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec") == "10.3.0"
    assert T.trt_version("&&&& RUNNING TensorRT.trtexec [TensorRT v101601] [b11] # trtexec") == "10.16.1"
    assert T.trt_version("&&&& RUNNING TensorRT.trtexec # /usr/src/tensorrt/bin/trtexec") is None


def test_a_trtexec_that_cannot_start_is_named():
    with pytest.raises(TrtpruneError, match="trtexec could not be started") as e:
        T.check_output("sh: 1: /usr/src/tensorrt/bin/trtexec: not found\n", 127)
    assert "/usr/src/tensorrt/bin/trtexec" in e.value.fix
