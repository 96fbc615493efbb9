"""INT8 as a device precision: cpu-int8's Q/DQ form in micro-models and whole networks, the check that ONNX
Runtime really runs INT8 kernels, calibration lists, the budget stated against fp32, and a whole run."""

from __future__ import annotations

import json
import logging
from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.small_models import RESNET8
from trtprune.errors import TrtpruneError
from trtprune.latency import devices
from trtprune.latency.devices import DEVICES, Device
from trtprune.latency.ort import OrtBackend, int8_kernels
from trtprune.profiling.layers import Signature, micro_model

SIG = Signature("conv", kernel=(3, 3), pads=(1, 1, 1, 1), hw=(8, 8), act="relu")


def test_int8_devices_name_the_form_they_run():
    assert DEVICES["cpu-int8"].int8_form == "ort" and DEVICES["cpu-int8"].check().backend == "ort"
    assert DEVICES["cpu"].int8_form is None and DEVICES["gpu"].int8_form is None
    assert replace(DEVICES["gpu"], precision="int8").int8_form == "tensorrt"
    assert Device("lab", "ssh", host="u@h", precision="int8").int8_form == "tensorrt"
    with pytest.raises(TrtpruneError, match="run fp32 or int8 models, not fp16"):
        replace(DEVICES["cpu"], precision="fp16").check()


def test_micro_models_of_cpu_int8_run_quantized_kernels():
    int8 = micro_model(SIG, 16, 24, qdq="ort")
    ops = {n.op_type for n in onnx.load_from_string(int8).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Relu" not in ops  # folded into the uint8 range
    backend = OrtBackend(DEVICES["cpu-int8"])
    assert backend.kernel(int8) == "int8"
    assert backend.kernel(micro_model(SIG, 16, 24)) in ("nchwc", "plain")
    residual = micro_model(replace(SIG, residual=True), 16, 16, qdq="ort")
    assert backend.kernel(residual) == "int8" and int8_kernels(residual)["float"] == []
    with pytest.raises(ValueError, match="unknown Q/DQ form"):
        micro_model(SIG, 16, 24, qdq="int4")


def _float_weight_qdq_model() -> bytes:
    """x -> Q -> DQ -> Conv with float weights: Q/DQ on the activation only, which no INT8 kernel takes."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8, 3, 3)).astype(np.float32), "w")
    scale = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    zero = numpy_helper.from_array(np.array(128, np.uint8), "z")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Conv", ["xd", "w"], ["y"], pads=[1, 1, 1, 1], name="conv_fp32"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        initializer=[w, scale, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_qdq_model_onnx_runtime_runs_in_fp32_is_refused_and_a_partial_one_named(tmp_path, caplog):
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.deploy.quantize import check_int8_kernels, qdq_from_onnx

    fp32_run = tmp_path / "fp32_run.onnx"
    fp32_run.write_bytes(_float_weight_qdq_model())
    with pytest.raises(TrtpruneError, match="runs no INT8 kernel") as e:
        check_int8_kernels(fp32_run)
    assert "fp32 run reported as INT8" in e.value.why

    # A network quantized whole runs INT8 kernels throughout ...
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3))
    src = onnx_from_torch(net.eval(), tmp_path / "net.onnx", (3, 16, 16)).path
    calib = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    whole = qdq_from_onnx(src, tmp_path / "whole.onnx", calib, target="ort")
    assert len(check_int8_kernels(whole)["int8"]) == 2 and not check_int8_kernels(whole)["float"]
    # ... and one whose second conv the quantizer left alone runs that conv in fp32: named in a warning
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from trtprune.deploy.quantize import _Batches

    second = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Conv"][1]
    partial = tmp_path / "partial.onnx"
    quantize_static(
        str(src),
        str(partial),
        _Batches(calib, "input", 1),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=[second],
    )
    with caplog.at_level(logging.WARNING, logger="trtprune.deploy.quantize"):
        found = check_int8_kernels(partial)
    assert len(found["int8"]) == 1 and len(found["float"]) == 1
    assert "runs 1 of 2 convolutions/products of partial.onnx in fp32" in caplog.text


def test_calibration_from_an_image_list(tmp_path):
    from PIL import Image

    from trtprune.deploy.quantize import calib_images
    from trtprune.sources.models import ModelSpec

    spec = ModelSpec("tiny", "tests:tiny")  # 3x32x32
    (tmp_path / "imgs").mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "imgs" / f"{i}.png")
    listing = tmp_path / "calib.txt"
    listing.write_text("# five images\nimgs/0.png\n\nimgs/1.png\nimgs/2.png\nimgs/3.png\nimgs/4.png\n")
    x = calib_images(listing, spec, 3)
    assert x.shape == (3, 3, 32, 32) and x.dtype == np.float32
    listing.write_text("imgs/0.png\nimgs/missing.png\n")
    with pytest.raises(TrtpruneError, match="names 1 missing file"):
        calib_images(listing, spec, 3)


@pytest.fixture
def fake_int8(monkeypatch):
    """The test-only formula engine as an int8 CPU device: it plays ONNX Runtime, its Q/DQ convs cost half."""
    monkeypatch.setitem(devices.DEVICES, "fake-int8", Device("fake-int8", "fake", precision="int8"))
    return "fake-int8"


def test_a_budget_met_by_int8_alone_says_so(fake_int8, tmp_path):
    from tests.small_models import resnet8
    from trtprune.searching.plan import Budget
    from trtprune.searching.runner import int8_budget

    device = devices.get_device(fake_int8)
    budget, facts = int8_budget(Budget.parse("0.3x"), resnet8(), (3, 32, 32), device, tmp_path)
    assert 0.5 < facts["int8_vs_fp32"] < 0.7  # the fake's INT8 convs cost half, the graph's overhead does not
    assert budget.fraction == pytest.approx(0.3 / facts["int8_vs_fp32"], abs=1e-4) and facts["searched"] == f"{budget}"
    with pytest.raises(TrtpruneError, match="met by INT8 alone"):
        int8_budget(Budget.parse("0.9x"), resnet8(), (3, 32, 32), device, tmp_path)


def test_an_int8_run_searches_on_int8_latency_and_delivers_the_calibrated_qdq_model(tiny_data, tmp_path, fake_int8):
    from trtprune.cli import main

    code = main(["run", "--data", str(tiny_data), "--model", RESNET8, "--weights",
                 str(tiny_data / "weights" / "resnet8-random.th"), "--device", fake_int8, "--method", "knapsack",
                 "--budget", "0.4x", "--no-depth", "--epochs", "1", "--train-limit", "64", "--eval-limit", "16",
                 "--precision", "fp32", "--no-channels-last",
                 "--calib-images", "32", "--lut", str(tmp_path / "l.sqlite"), "--runs-dir", str(tmp_path),
                 "--engines-dir", str(tmp_path / "e"), "--name", "q"])  # fmt: skip
    assert code == 0
    run = tmp_path / "q"
    report = json.loads((run / "report.json").read_text())
    # fp32 dense, fp32 pruned and INT8 pruned, timed in one run; the speed-up and the budget against fp32 dense
    assert report["baseline"]["onnx"].endswith("baseline.onnx") and report["pruned_fp32"]["onnx"].endswith(
        "pruned.onnx"
    )
    assert report["pruned"]["onnx"].endswith("pruned.int8.onnx")
    b, p, f = (report[k]["latency"]["median_ms"] for k in ("baseline", "pruned", "pruned_fp32"))
    assert p < f < b and report["speedup"] == pytest.approx(b / p)
    assert report["budget"]["budget"] == "0.4x" and report["budget"]["ratio"] == pytest.approx(p / b)
    assert report["budget"]["met"]
    vs = report["method"]["meta"]["budget_vs_fp32"]
    assert vs["budget"] == "0.4x" and report["method"]["budget"] == vs["searched"]
    q = report["int8"]
    assert q["form"] == "ort" and q["kernels"]["int8"] > 0 and q["calibration"]["images"] == 32
    assert q["top1_drop_vs_fp32_pruned"] == pytest.approx(report["pruned_fp32"]["top1"] - report["pruned"]["top1"])
    # the delivered model is the very file the report timed
    assert (tmp_path / "e" / "q.onnx").read_bytes() == (run / "pruned.int8.onnx").read_bytes()
    md = (run / "report.md").read_text()
    assert "| | fp32 dense | fp32 pruned | INT8 pruned (delivered) |" in md
    assert "INT8 pruned (delivered) against fp32 dense" in md and "of the INT8 dense model (0.4x of the fp32" in md


_NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU())
        self.fc = nn.Linear(12, 10)

    def forward(self, x):
        return self.fc(self.b(self.a(x)).mean((2, 3)))


def make():
    return Net()
"""


def test_profile_and_build_on_cpu_int8(tiny_data, tmp_path, capsys):
    """`trtprune profile --device cpu-int8` times Q/DQ layers under the int8 key; `trtprune build` writes the
    calibrated Q/DQ model that ONNX Runtime runs with INT8 kernels."""
    from trtprune.cli import main

    (tmp_path / "net.py").write_text(_NET)
    model = f"{tmp_path / 'net.py'}:make"
    torch.manual_seed(0)
    namespace: dict = {}
    exec(_NET, namespace)
    torch.save(namespace["make"]().state_dict(), tmp_path / "w.pt")
    code = main(["--json", "profile", "--model", model, "--device", "cpu-int8", "--quick", "--no-plots",
                 "--out", str(tmp_path / "p"), "--lut", str(tmp_path / "l.sqlite")])  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["lut_key"].split("|")[6] == "int8" and summary["measured"] > 0
    stairs = json.loads((tmp_path / "p" / "stairs.json").read_text())["groups"]
    assert set(stairs) == {"a.0", "b.0"} and all(len(g["latency_ms"]) == g["channels"] for g in stairs.values())

    out = tmp_path / "net.int8.onnx"
    code = main(["build", "--model", model, "--weights", str(tmp_path / "w.pt"), "--device", "cpu-int8",
                 "--data", str(tiny_data), "--calib-images", "16", "-o", str(out)])  # fmt: skip
    assert code == 0 and "INT8 Q/DQ ONNX model for cpu-int8" in capsys.readouterr().out
    assert len(int8_kernels(out)["int8"]) == 3 and int8_kernels(out)["float"] == []  # two convs and the linear
