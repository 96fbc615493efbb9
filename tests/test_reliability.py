"""Reliability: bad inputs, interruptions, concurrency, untrusted files and resources (docs/reliability.md).

Every bad input gives exit status 2, one message (what, why, fix), no traceback and no partial output.
Cases already checked elsewhere are listed in docs/reliability.md and not repeated here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import cli
from trtprune.errors import TrtpruneError

WEIGHTS = "weights/resnet20-random.th"  # in the tiny_data fixture (conftest.py)
TEMP = re.compile(r"^\..+\.tmp\d+$")  # fsutil.atomic_path's temporary names


def temp_files(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob(".*") if TEMP.match(p.name)]


def _onnx_model(path: Path, nodes, inputs, outputs, initializers=(), opsets=(("", 17),)) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _external_conv(path: Path, location: str) -> Path:
    """A one-Conv ONNX model whose weight is stored as external data at ``location``."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(4 * 27 * 4))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    return _onnx_model(path, [helper.make_node("Conv", ["x", "w"], ["y"])], [x], [y], [w])


def _unwritable_folder(d: Path) -> Path | None:
    """A folder no file can be created in: a read-only one, or for root (who writes anywhere) /sys if it refuses."""
    import tempfile

    def folder_writable(folder) -> bool:
        try:
            with tempfile.TemporaryFile(dir=folder):
                return True
        except OSError:
            return False

    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o555)
    if not folder_writable(ro):
        return ro
    return Path("/sys") if Path("/sys").is_dir() and not folder_writable("/sys") else None


def _factory(path: Path, fn: str = "make"):
    from trtprune.sources.models import _load_user_factory

    return _load_user_factory(str(path), fn)


LINEAR_ONLY = """
import torch.nn as nn


def make():
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
"""

TINY_CNN = """
import torch.nn as nn


def make():
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10),
    )
"""


@pytest.fixture(scope="module")
def bad(tmp_path_factory, tiny_data):
    """Every bad input file, made once: {name: path}."""
    import onnx
    from onnx import TensorProto, helper

    from trtprune.deploy.export import onnx_from_torch
    from trtprune.sources.models import build_model

    d = tmp_path_factory.mktemp("bad")
    f = {"data": tiny_data, "w": tiny_data / WEIGHTS, "dir": d}
    f["small"] = d / "small.onnx"
    onnx_from_torch(torch.nn.Conv2d(3, 4, 3), f["small"], (3, 8, 8))
    raw = f["small"].read_bytes()
    (d / "cut.onnx").write_bytes(raw[: len(raw) // 3])
    proto = onnx.load(str(f["small"]))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(proto, d / "dyn.onnx")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    _onnx_model(d / "custom.onnx", [helper.make_node("FooOp", ["x"], ["y"], domain="com.example")], [x], [y],
                opsets=(("", 17), ("com.example", 1)))  # fmt: skip
    (d / "model").mkdir()
    (d / "secret.bin").write_bytes(np.ones(108, np.float32).tobytes())
    _external_conv(d / "model" / "escape.onnx", "../secret.bin")
    torch.manual_seed(0)
    torch.save(build_model("resnet32").state_dict(), d / "r32.pt")
    torch.save(build_model("resnet20"), d / "whole.pt")
    (d / "linear.py").write_text(LINEAR_ONLY)
    torch.save(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10)).state_dict(), d / "lin.pt")
    for name, classes in (("narrow", 5), ("wide", 1000)):  # models for 5 and 1,000 classes, on 10-class data
        (d / f"{name}.py").write_text(TINY_CNN.replace("nn.Linear(24, 10)", f"nn.Linear(24, {classes})"))
        torch.save(_factory(d / f"{name}.py")().state_dict(), d / f"{name}.pt")
    x1, x2 = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 32, 32]) for n in ("a", "b"))
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 32, 32])
    _onnx_model(d / "two.onnx", [helper.make_node("Add", ["a", "b"], ["y"])], [x1, x2], [out])
    (d / "exits.py").write_text("import sys\n\nsys.exit(3)\n")
    (d / "afile").write_text("a file where a folder is needed")
    (d / "empty.pt").write_bytes(b"")
    (d / "cut.pt").write_bytes((d / "r32.pt").read_bytes()[:3000])  # a zip without its end
    f["ro"] = _unwritable_folder(d)
    (d / "junk.sqlite").write_bytes(b"not sqlite " * 100)
    plan = {"format": "trtprune.plan/1", "model": "resnet20", "device": "cpu", "method": "locp", "budget": "0.5x"}
    for name, text in {
        "plan_text": "this is not json",
        "plan_format": json.dumps({**plan, "format": "other/2", "keep_channels": {}, "channels": {}}),
        "plan_types": json.dumps({**plan, "keep_channels": [8, 16], "channels": {"conv1": 16}}),
        "plan_groups": json.dumps({**plan, "keep_channels": {"nope": 3}, "channels": {"nope": 4}}),
    }.items():
        (d / f"{name}.json").write_text(text)
    for name, text in {"run_json": "{not json", "run_types": '{"model": 5, "finetune": {"epochs": "x"}}'}.items():
        (d / name).mkdir()
        (d / name / "config.json").write_text(text)
    (d / "runs" / "corrupt").mkdir(parents=True)
    (d / "runs" / "corrupt" / "config.json").write_text("{garbage")
    (d / "dev_syntax.toml").write_text("[devices.x\n")
    (d / "dev_types.toml").write_text('[devices.x]\nbackend = "ort"\nbatch = "8"\n')
    for name, (x_, y_) in {
        "data_float": (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.uint8)),
        "data_labels": (np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 2, 10])),
    }.items():
        (d / name / "cifar10").mkdir(parents=True)
        for split in ("train", "test"):
            np.savez(d / name / "cifar10" / f"cifar10_{split}.npz", x=x_, y=y_)
    np.save(d / "calib_empty.npy", np.zeros((0, 32, 32, 3), np.uint8))
    (d / "calib_dir").mkdir()
    np.save(d / "calib.npy", np.zeros((4, 32, 32, 3), np.uint8))
    (d / "loaders.py").write_text("def broken():\n    raise ValueError('no such folder /nowhere')\n")
    from PIL import Image

    for split in ("train", "val"):  # an image folder of 12 classes, for a 10-output model
        for c in range(12):
            (d / "folder12" / split / f"c{c:02d}").mkdir(parents=True)
            Image.new("RGB", (40, 36), (20 * c, 0, 0)).save(d / "folder12" / split / f"c{c:02d}" / "0.png")
    return f


R20 = ["--model", "resnet20", "--weights", "{w}"]
LIN = ["--model", "{dir}/linear.py:make"]
SEARCH = ["search", *R20, "--lut", "{out}/l.sqlite", "-o", "{out}/plan.json"]

# (case, argv, first words of the message, outputs that must not exist afterwards, environment)
CASES = [
    # missing and unreadable paths (a missing --weights, ONNX, data folder: tests/test_cli.py)
    ("weights-is-a-folder", ["eval", "--model", "resnet20", "--weights", "{dir}", "--data", "{data}"],
     "weights path '{dir}' is not a file", [], {}),
    ("output-folder-is-a-file", ["export", *R20, "-o", "{dir}/afile/x.onnx"],
     "cannot write '{dir}/afile/x.onnx': cannot create its folder", [], {}),
    ("lut-folder-is-a-file", ["profile", "--model", "resnet20", "--lut", "{dir}/afile/l.sqlite", "--out", "{out}/p"],
     "cannot create the latency table", ["{out}/p"], {}),
    ("lut-is-a-folder", ["profile", "--model", "resnet20", "--lut", "{dir}", "--out", "{out}/p"],
     "the latency table '{dir}' is a folder", ["{out}/p"], {}),
    ("lut-is-not-sqlite", ["profile", "--model", "resnet20", "--lut", "{dir}/junk.sqlite", "--out", "{out}/p"],
     "cannot open the latency table", ["{out}/p"], {}),
    ("data-is-a-file", ["eval", *R20, "--data", "{dir}/afile"],
     "data folder '{dir}/afile' (from --data) is a file, not a folder", [], {}),
    ("prune-output-folder-unwritable", ["prune", *R20, "--importance", "l1", "-o", "{ro}/p.pt"],
     "cannot write '{ro}/p.pt': its folder '{ro}' cannot be written", ["{ro}/p.pt", "{ro}/p.plan.json"], {}),
    ("lut-folder-unwritable", ["profile", "--model", "resnet20", "--lut", "{ro}/l.sqlite", "--out", "{out}/p"],
     "cannot open the latency table '{ro}/l.sqlite': its folder '{ro}' cannot be written",
     ["{out}/p", "{ro}/l.sqlite"], {}),
    ("model-file-exits", ["groups", "--model", "{dir}/exits.py:make"], "importing '{dir}/exits.py' called sys.exit(3)",
     [], {}),
    ("model-file-missing", ["eval", "--model", "{dir}/none.py:make", "--data", "{data}"],
     "model file '{dir}/none.py' does not exist", [], {}),
    ("plan-missing", ["prune", *R20, "--plan", "{dir}/none.json", "-o", "{out}/p.pt"],
     "plan '{dir}/none.json' does not exist", ["{out}/p.pt"], {}),
    # files that are not checkpoints: not "pickles" (see whole-model-pickle)
    ("weights-empty", ["eval", "--model", "resnet20", "--weights", "{dir}/empty.pt", "--data", "{data}"],
     "weights file '{dir}/empty.pt' is empty (0 bytes)", [], {}),
    ("weights-truncated", ["eval", "--model", "resnet20", "--weights", "{dir}/cut.pt", "--data", "{data}"],
     "weights file '{dir}/cut.pt' is a truncated PyTorch checkpoint (3,000 bytes)", [], {}),
    ("weights-is-onnx", ["eval", "--model", "resnet20", "--weights", "{dir}/small.onnx", "--data", "{data}"],
     "'{dir}/small.onnx' is an ONNX model, not a PyTorch checkpoint", [], {}),
    # weights that do not fit the architecture
    ("weights-of-resnet32", ["eval", "--model", "resnet20", "--weights", "{dir}/r32.pt", "--data", "{data}"],
     "weights '{dir}/r32.pt' do not fit the model", [], {}),
    ("onnx-for-other-images", ["eval", "--model", "resnet20", "--onnx", "{dir}/small.onnx", "--data", "{data}"],
     "'{dir}/small.onnx' takes input 'input' of shape [1, 3, 8, 8]", [], {}),
    # a model for fewer classes than the dataset has; an ONNX model with two inputs
    ("model-fewer-outputs-than-classes",
     ["eval", "--model", "{dir}/narrow.py:make", "--weights", "{dir}/narrow.pt", "--data", "{data}"],
     "the model gives 5 class scores per image, but the dataset has 10 classes", [], {}),
    ("finetune-fewer-outputs-than-classes",
     ["finetune", "--model", "{dir}/narrow.py:make", "--weights", "{dir}/narrow.pt", "--data", "{data}",
      "--train-limit", "8", "--batch-size", "4", "--eval-limit", "8", "-o", "{out}/f.pt"],
     "the model gives 5 class scores per image, but the dataset has 10 classes", ["{out}/f.pt"], {}),
    ("onnx-two-inputs", ["eval", "--model", "resnet20", "--onnx", "{dir}/two.onnx", "--data", "{data}"],
     "'{dir}/two.onnx' takes 2 inputs (a, b), not one batch of images", [], {}),
    # input shapes, normalisation and datasets that do not fit the model
    ("input-shape-malformed", ["export", *R20, "--input-shape", "3x224", "-o", "{out}/x.onnx"],
     "input shape '3x224' is not C x H x W", ["{out}/x.onnx"], {}),
    ("input-shape-the-model-cannot-take",
     ["prune", *R20, "--input-shape", "1x32x32", "--mean", "0.5", "--std", "0.25", "-o", "{out}/p.pt"],
     "input shape 1x32x32 gives 1-channel images, but model 'resnet20' takes 3", ["{out}/p.pt", "{out}/p.plan.json"],
     {}),
    ("mean-for-other-channels", ["export", *R20, "--mean", "0.5,0.5", "-o", "{out}/x.onnx"],
     "normalisation mean (0.5, 0.5)", ["{out}/x.onnx"], {}),
    ("input-shape-for-other-channels", ["prune", *R20, "--input-shape", "1x32x32", "-o", "{out}/p.pt"],
     "input shape 1x32x32 gives 1-channel images, but model 'resnet20' takes 3: its first convolution (conv1)",
     ["{out}/p.pt"], {}),
    ("loaders-file-raises", ["eval", *R20, "--data", "{dir}/loaders.py:broken"],
     "the data loaders of '{dir}/loaders.py:broken' failed: ValueError: no such folder /nowhere", [], {}),
    ("folder-with-more-classes-than-the-head", ["eval", *R20, "--data", "{dir}/folder12"],
     "the model gives 10 class scores per image, but the dataset has 12 classes", [], {}),
    ("finetune-on-more-classes-than-the-head",
     ["finetune", *R20, "--data", "{dir}/folder12", "--batch-size", "4", "-o", "{out}/f.pt"],
     "the model gives 10 class scores per image, but the dataset has 12 classes", ["{out}/f.pt"], {}),
    ("ignore-names-no-module", ["run", *R20, "--data", "{data}", "--ignore", "layer9", "--runs-dir", "{out}/runs",
                                "--engines-dir", "{out}/engines"],
     "--ignore names 'layer9', which is not a module of the model", ["{out}/runs", "{out}/engines"], {}),
    # truncated or corrupt ONNX (all-zero bytes: tests/test_cli.py)
    ("truncated-onnx-measure", ["measure", "{dir}/cut.onnx", "--json-file", "{out}/m.json"],
     "'{dir}/cut.onnx' is not a valid ONNX model", ["{out}/m.json"], {}),
    ("truncated-onnx-eval", ["eval", "--model", "resnet20", "--onnx", "{dir}/cut.onnx", "--data", "{data}"],
     "'{dir}/cut.onnx' is not a valid ONNX model", [], {}),
    ("truncated-onnx-quantize",
     ["quantize", "--model", "resnet20", "{dir}/cut.onnx", "--calib", "{dir}/calib.npy", "-o", "{out}/q.onnx"],
     "'{dir}/cut.onnx' is not a valid ONNX model", ["{out}/q.onnx"], {}),
    # an operator the engine does not implement; dynamic shapes where static ones are needed
    ("custom-operator", ["measure", "{dir}/custom.onnx", "--json-file", "{out}/m.json"],
     "ONNX Runtime cannot load '{dir}/custom.onnx'", ["{out}/m.json"], {}),
    ("dynamic-batch", ["measure", "{dir}/dyn.onnx", "--json-file", "{out}/m.json"],
     "input 'input' of '{dir}/dyn.onnx' has a dynamic shape ['N', 3, 8, 8]", ["{out}/m.json"], {}),
    ("onnx-external-data-outside", ["measure", "{dir}/model/escape.onnx"],
     "'{dir}/model/escape.onnx' refers to external data outside its folder", [], {}),
    # a model without prunable layers (a user factory returning a Linear-only model)
    ("no-groups-groups", ["groups", *LIN], "the model has no prunable channel groups", [], {}),
    ("no-groups-prune", ["prune", *LIN, "--weights", "{dir}/lin.pt", "--importance", "l1", "-o", "{out}/p.pt"],
     "the model has no prunable channel groups", ["{out}/p.pt", "{out}/p.plan.json"], {}),
    ("no-groups-profile", ["profile", *LIN, "--lut", "{out}/l.sqlite", "--out", "{out}/p"],
     "the model has no prunable channel groups", ["{out}/p"], {}),
    ("no-groups-search", ["search", *LIN, "--weights", "{dir}/lin.pt", "--importance", "l1", "--budget", "0.5x",
                          "--lut", "{out}/l.sqlite", "-o", "{out}/plan.json"],
     "the model has no prunable channel groups", ["{out}/plan.json"], {}),
    # profiling on Ray: a worker count without a local cluster, a cluster nobody runs
    ("ray-workers-without-local", ["profile", "--model", "resnet20", "--ray-workers", "2", "--out", "{out}/p"],
     "--ray-workers 2 needs --ray local", ["{out}/p"], {}),
    ("ray-address-unreachable", ["profile", "--model", "resnet20", "--ray", "127.0.0.1:1", "--lut", "{out}/l.sqlite",
                                 "--out", "{out}/p"],
     "cannot reach the Ray cluster at '127.0.0.1:1'", ["{out}/p"], {}),
    # budgets: zero, negative, not below the baseline (unreachable: tests/test_cli.py, test_search_then_prune...)
    ("budget-zero", [*SEARCH, "--budget", "0"], "budget 0.0x is not below the baseline", ["{out}/plan.json"], {}),
    ("budget-negative", [*SEARCH, "--budget=-0.5x"], "budget '-0.5x' is negative", ["{out}/plan.json"], {}),
    ("budget-above-1x", [*SEARCH, "--budget", "1.5x"], "budget 1.5x is not below the baseline", ["{out}/plan.json"],
     {}),
    ("budget-ms-zero", [*SEARCH, "--budget-ms", "0"], "--budget-ms 0.0 is not a latency", ["{out}/plan.json"], {}),
    ("budget-ms-negative", [*SEARCH, "--budget-ms=-1"], "--budget-ms -1.0 is not a latency", ["{out}/plan.json"], {}),
    ("budget-ms-inf", [*SEARCH, "--budget-ms", "inf"],
     "argument --budget-ms: 'inf' is not a number: it must be a finite number", ["{out}/plan.json"], {}),
    ("budget-ms-nan", [*SEARCH, "--budget-ms", "nan"],
     "argument --budget-ms: 'nan' is not a number: it must be a finite number", ["{out}/plan.json"], {}),
    ("budget-and-budget-ms", [*SEARCH, "--budget", "0.5x", "--budget-ms", "1"],
     "argument --budget-ms: not allowed with argument --budget", ["{out}/plan.json"], {}),
    ("run-budget-and-budget-ms", ["run", *R20, "--budget", "0.5x", "--budget-ms", "1", "--runs-dir", "{out}/runs"],
     "argument --budget-ms: not allowed with argument --budget", ["{out}/runs"], {}),
    ("budget-missing", SEARCH, "trtprune search needs a budget", ["{out}/plan.json"], {}),
    ("run-budget-zero", ["run", *R20, "--budget", "0", "--runs-dir", "{out}/runs"],
     "budget 0.0x is not below the baseline", ["{out}/runs"], {}),
    # data with the wrong shape, dtype or labels; an empty calibration set
    ("data-float-images", ["eval", *R20, "--data", "{dir}/data_float"],
     "images in '{dir}/data_float/cifar10/cifar10_test.npz' have shape (4, 32, 32, 3) and dtype float32", [], {}),
    ("data-label-10", ["finetune", *R20, "--data", "{dir}/data_labels", "-o", "{out}/f.pt"],
     "labels in '{dir}/data_labels/cifar10/cifar10_train.npz' are not integers in 0..9", ["{out}/f.pt"], {}),
    ("calib-empty-array",
     ["quantize", "--model", "resnet20", "{dir}/small.onnx", "--calib", "{dir}/calib_empty.npy", "-o", "{out}/q.onnx"],
     "'{dir}/calib_empty.npy' holds no images", ["{out}/q.onnx"], {}),
    ("calib-empty-folder",
     ["quantize", "--model", "resnet20", "{dir}/small.onnx", "--calib", "{dir}/calib_dir", "-o", "{out}/q.onnx"],
     "calibration folder '{dir}/calib_dir' holds no images", ["{out}/q.onnx"], {}),
    ("calib-zero-images",
     ["quantize", "--model", "resnet20", "{dir}/small.onnx", "--calib", "{dir}/calib.npy", "-n", "0", "-o",
      "{out}/q.onnx"],
     "asked for 0 calibration images", ["{out}/q.onnx"], {}),
    # settings no run can use: refused while parsing (non-finite, negative) or before any file is made
    ("lr-nan", ["finetune", *R20, "--data", "{data}", "--lr", "nan", "-o", "{out}/f.pt"],
     "argument --lr: 'nan' is not a positive number: it must be a finite number", ["{out}/f.pt"], {}),
    ("lr-inf", ["finetune", *R20, "--data", "{data}", "--lr", "inf", "-o", "{out}/f.pt"],
     "argument --lr: 'inf' is not a positive number: it must be a finite number", ["{out}/f.pt"], {}),
    ("lr-negative", ["finetune", *R20, "--data", "{data}", "--lr=-0.1", "-o", "{out}/f.pt"],
     "argument --lr: '-0.1' is not a positive number: it must be above 0", ["{out}/f.pt"], {}),
    ("distill-nan", ["run", *R20, "--distill", "nan", "--runs-dir", "{out}/runs"],
     "argument --distill: 'nan' is not a number: it must be a finite number", ["{out}/runs"], {}),
    ("eval-limit-negative", ["finetune", *R20, "--data", "{data}", "--eval-limit=-1", "-o", "{out}/f.pt"],
     "argument --eval-limit: '-1' is negative: give 0 (all) or a positive count", ["{out}/f.pt"], {}),
    ("train-limit-negative", ["finetune", *R20, "--data", "{data}", "--train-limit=-5", "-o", "{out}/f.pt"],
     "argument --train-limit: '-5' is negative: give 0 (all) or a positive count", ["{out}/f.pt"], {}),
    ("eval-limit-negative-eval", ["eval", *R20, "--data", "{data}", "--limit=-1"],
     "argument --limit: '-1' is negative: give 0 (all) or a positive count", [], {}),
    ("round-to-above-every-group", ["prune", *R20, "--importance", "l1", "--round-to", "1000", "-o", "{out}/p.pt"],
     "--round-to 1000 exceeds the channels of every group (at most 64)", ["{out}/p.pt", "{out}/p.plan.json"], {}),
    ("run-round-to-above-every-group", ["run", *R20, "--budget", "none", "--round-to", "1000", "--runs-dir",
                                        "{out}/runs"],
     "--round-to 1000 exceeds the channels of every group (at most 64)", ["{out}/runs", "engines"], {}),
    ("export-batch-beyond-memory", ["export", *R20, "--batch", "100000000", "-o", "{out}/x.onnx"],
     "batch 100,000,000 needs about", ["{out}/x.onnx"], {}),
    # malformed plan, run configuration and device file
    ("plan-not-json", ["prune", *R20, "--plan", "{dir}/plan_text.json", "-o", "{out}/p.pt"],
     "plan '{dir}/plan_text.json' is not JSON", ["{out}/p.pt"], {}),
    ("plan-other-format", ["prune", *R20, "--plan", "{dir}/plan_format.json", "-o", "{out}/p.pt"],
     "'{dir}/plan_format.json' is not a trtprune plan", ["{out}/p.pt"], {}),
    ("plan-wrong-types", ["prune", *R20, "--plan", "{dir}/plan_types.json", "-o", "{out}/p.pt"],
     "plan '{dir}/plan_types.json' is malformed: wrong types for keep_channels", ["{out}/p.pt"], {}),
    ("plan-unknown-group", ["prune", *R20, "--plan", "{dir}/plan_groups.json", "--importance", "l1", "-o",
                            "{out}/p.pt"],
     "the plan names groups the model does not have: nope", ["{out}/p.pt"], {}),
    ("config-not-json", ["report", "{dir}/run_json"],
     "'{dir}/run_json/config.json' is not a run configuration", ["{dir}/run_json/report.md"], {}),
    ("config-wrong-types", ["report", "{dir}/run_types"],
     "'{dir}/run_types/config.json' has settings of the wrong type: model, finetune.epochs",
     ["{dir}/run_types/report.md"], {}),
    ("run-config-not-json", ["run", *R20, "--budget", "none", "--runs-dir", "{dir}/runs", "--name", "corrupt"],
     "'{dir}/runs/corrupt/config.json' is not a run configuration", ["{dir}/runs/corrupt/baseline.onnx"], {}),
    ("device-file-syntax", ["measure", "{dir}/small.onnx", "--device", "x"],
     "device file '{dir}/dev_syntax.toml' cannot be read", [], {"TRTPRUNE_DEVICES": "{dir}/dev_syntax.toml"}),
    ("device-file-is-a-folder", ["measure", "{dir}/small.onnx", "--device", "x"],
     "device file '{dir}' is a folder", [], {"TRTPRUNE_DEVICES": "{dir}"}),
    ("device-file-types", ["measure", "{dir}/small.onnx", "--device", "x"],
     "device 'x' in '{dir}/dev_types.toml': batch = '8' has the wrong type", [],
     {"TRTPRUNE_DEVICES": "{dir}/dev_types.toml"}),
    # unknown device (`run --device quantum`: tests/test_cli.py) or method
    ("unknown-device-search", [*SEARCH, "--device", "quantum", "--budget", "0.5x"], "unknown device 'quantum'",
     ["{out}/plan.json"], {}),
    ("unknown-method", [*SEARCH, "--method", "magic", "--budget", "0.5x"],
     "argument --method: invalid choice: 'magic'", ["{out}/plan.json"], {}),
    ("unknown-importance", ["prune", *R20, "--importance", "magic", "-o", "{out}/p.pt"],
     "argument --importance: invalid choice: 'magic'", ["{out}/p.pt"], {}),
    # run names that would write outside --runs-dir
    ("run-name-escapes", ["run", *R20, "--budget", "none", "--runs-dir", "{out}/runs", "--name", "../../x"],
     "run name '../../x' is not a plain name", ["{out}/runs", "{out}/x", "x", "engines"], {}),
    ("run-name-dotdot", ["run", *R20, "--budget", "none", "--runs-dir", "{out}/runs", "--name", ".."],
     "run name '..' is not a plain name", ["{out}/runs", "engines"], {}),
    # untrusted checkpoints (see also test_a_pickled_whole_model_loads_only_when_trusted)
    ("whole-model-pickle", ["eval", "--model", "resnet20", "--weights", "{dir}/whole.pt", "--data", "{data}"],
     "cannot read weights file '{dir}/whole.pt': UnpicklingError: it holds pickled Python objects", [], {}),
]  # fmt: skip


@pytest.mark.parametrize("case,argv,message,outputs,env", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_message_exit_2_and_nothing_written(
    case, argv, message, outputs, env, bad, tmp_path, capsys, monkeypatch
):
    if bad["ro"] is None and any("{ro}" in a for a in argv):
        pytest.skip("no folder here refuses writes (root without a read-only /sys)")
    fill = {k: str(v) for k, v in bad.items()} | {"out": str(tmp_path / "out")}
    monkeypatch.chdir(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(**fill))
    argv = [a.format(**fill) for a in argv]
    code, out, err = cli(capsys, *argv)
    assert code == 2, (out, err)
    assert "Traceback" not in err and "Traceback" not in out
    errors = [line for line in err.splitlines() if line.startswith(f"trtprune {argv[0]}: error:")]
    assert len(errors) == 1, err  # one message ...
    assert errors[0].startswith(f"trtprune {argv[0]}: error: {message.format(**fill)}"), errors[0]
    for path in outputs:  # ... and nothing (half-)written where the output would have gone
        assert not Path(path.format(**fill)).exists(), path
    assert temp_files(tmp_path) == [] and temp_files(bad["dir"]) == []


def test_profiling_skips_layers_it_cannot_time_with_a_warning(tmp_path, capsys, monkeypatch):
    """A conv whose weight is computed in forward() (weight standardisation) has no constant-weight Conv in
    the exported graph: profiling goes on without it and says so."""
    from trtprune.latency import devices

    monkeypatch.setitem(devices.DEVICES, "fake-test", devices.Device("fake-test", "fake"))
    (tmp_path / "ws.py").write_text(
        "import torch.nn as nn\nimport torch.nn.functional as F\n\n\n"
        "class WSConv(nn.Conv2d):\n"
        "    def forward(self, x):\n"
        "        w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)\n"
        "        return F.conv2d(x, w, self.bias, self.stride, self.padding)\n\n\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), WSConv(8, 8, 3, padding=1), nn.ReLU(),\n"
        "                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))\n"
    )
    argv = ["profile", "--model", f"{tmp_path}/ws.py:make", "--device", "fake-test", "--no-plots"]
    code, out, err = cli(capsys, *argv, "--lut", tmp_path / "l.sqlite", "--out", tmp_path / "p")
    assert code == 0, err
    assert "group 0: 2 not found as Conv/Gemm with constant weights" in err and "profiled without them" in err
    stairs = json.loads((tmp_path / "p" / "stairs.json").read_text())
    assert stairs["left_out"] == {"0": ["2"], "2": ["2"]} and set(stairs["groups"]) == {"0", "2"}


def test_two_runs_of_one_model_get_their_own_engines_and_factories_their_own_names(tmp_path):
    """The engine is named after the run: two --names of one model and device write two engines (the default name
    <model>-<device> keeps make engine's engines/resnet56-cpu.onnx); two factories of one file, two default names."""
    from trtprune.config import RunConfig
    from trtprune.run import Run, run_name

    def engine(name):
        return Run(tmp_path / "runs" / name, RunConfig(model="resnet20"), engines_dir=tmp_path / "e").engine_path

    assert engine("a") == tmp_path / "e" / "a.onnx" and engine("b") == tmp_path / "e" / "b.onnx"
    assert engine(run_name(None, "resnet56", "cpu")) == tmp_path / "e" / "resnet56-cpu.onnx"
    (tmp_path / "f.py").write_text(TINY_CNN)
    names = {run_name(None, f"{tmp_path}/f.py:{fn}", "cpu") for fn in ("a", "b")}
    assert names == {"f.a-cpu", "f.b-cpu"}
    for bad in ("../x", "a/b", "a\\b", "..", ".", ""):
        with pytest.raises(TrtpruneError, match="is not a plain name"):
            run_name(bad, "resnet20", "cpu")


def test_a_model_for_more_classes_than_the_dataset_is_scored_with_a_warning(bad, capsys, caplog, tmp_path):
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.metrics import top1_onnx
    from trtprune.sources.images import ArrayImages

    argv = ["eval", "--model", bad["dir"] / "wide.py:make", "--weights", bad["dir"] / "wide.pt", "--data", bad["data"]]
    code, out, err = cli(capsys, *argv, "--limit", "16")
    assert code == 0 and "top-1" in out, err
    assert "gives 1000 class scores per image but the dataset has 10 classes" in caplog.text
    onnx_from_torch(_factory(bad["dir"] / "narrow.py")(), tmp_path / "narrow.onnx", (3, 32, 32))
    x, y = np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.int64)
    with pytest.raises(TrtpruneError, match="gives 5 class scores per image, but the dataset has 10 classes"):
        top1_onnx(tmp_path / "narrow.onnx", ArrayImages(x, y, num_classes=10), (0.5,) * 3, (0.25,) * 3)


def test_a_model_file_that_parses_sys_argv_at_import_sees_only_its_own_name(tmp_path, capsys):
    """A script-like model file (argparse at its top level) used to end trtprune with its usage text, exit 2: it
    is imported with sys.argv = [the file], and trtprune's own argv is restored afterwards."""
    (tmp_path / "script.py").write_text(
        "import argparse\nimport sys\n\nSEEN = list(sys.argv)\nargparse.ArgumentParser().parse_args()\n" + TINY_CNN
    )
    argv_before = list(sys.argv)
    code, out, err = cli(capsys, "groups", "--model", f"{tmp_path}/script.py:make")
    assert code == 0 and "2 prunable groups" in out, err
    seen = sys.modules["trtprune_user_script"].SEEN
    assert seen == [str(tmp_path / "script.py")] and sys.argv == argv_before


def test_advice_names_a_user_factory_as_path_file_py_factory(bad, tmp_path, capsys):
    """A pruned checkpoint or plan of a user factory, used with another model: the fix spells --model as the CLI
    takes it (path/to/linear.py:make), not as the spec name (linear.make)."""
    from trtprune.searching import Plan
    from trtprune.sources.weights import save_pruned

    save_pruned(tmp_path / "lin.pt", torch.nn.Linear(2, 2), "linear.make", [])
    code, _, err = cli(capsys, "eval", "--model", "resnet20", "--weights", tmp_path / "lin.pt", "--data", bad["data"])
    assert code == 2 and "was pruned from 'linear.make', not from 'resnet20'" in err
    assert "fix: use --model path/to/linear.py:make" in err
    Plan("linear.make", "cpu", "locp", "0.5x", {"0": 1}, {"0": 2}).save(tmp_path / "plan.json")
    argv = ["prune", "--model", "resnet20", "--weights", bad["w"], "--plan", tmp_path / "plan.json"]
    code, _, err = cli(capsys, *argv, "-o", tmp_path / "p.pt")
    assert code == 2 and "fix: use --model path/to/linear.py:make" in err and not (tmp_path / "p.pt").exists()


def test_the_plan_of_prune_ratio_is_one_prune_plan_takes_and_prune_defaults_to_search_s_importance(
    bad, tmp_path, capsys
):
    """prune --ratio writes <out>.plan.json in the Plan format (it used to write another document, which
    prune --plan refused as 'not a trtprune plan'); prune and search have one default importance, fisher."""
    from trtprune.cli import parser
    from trtprune.searching import Plan

    w = ["--model", "resnet20", "--weights", bad["w"], "--data", bad["data"]]
    code, _, err = cli(capsys, "prune", *w, "--ratio", "0.5", "--round-to", "4", "-o", tmp_path / "a.pt")
    assert code == 0, err
    plan = Plan.load(tmp_path / "a.plan.json")
    assert (plan.model, plan.method, plan.meta["importance"], plan.keep_channels["conv1"]) == (
        "resnet20", "uniform", "fisher", 8
    )  # fmt: skip
    code, out, err = cli(capsys, "prune", *w, "--plan", tmp_path / "a.plan.json", "-o", tmp_path / "b.pt")
    assert code == 0 and "pruned to" in out, err
    defaults = {c: parser().parse_args([c, "-o", "x"]).importance for c in ("prune", "search")}
    assert defaults == {"prune": "fisher", "search": "fisher"}
    assert parser().parse_args(["run"]).importance == "fisher"


def test_budgets_and_round_to_that_prune_nothing_are_refused_by_the_library(caplog):
    import math

    from trtprune.pruning.prune import ChannelGroup, uniform_plan
    from trtprune.searching import Budget

    for ms in (math.inf, math.nan, -math.inf):
        with pytest.raises(TrtpruneError, match="is not a latency"):
            Budget.parse(ms=ms)
    groups = [ChannelGroup(n, c, (n,), ()) for n, c in (("a", 16), ("b", 64))]
    with pytest.raises(TrtpruneError, match="exceeds the channels of every group"):
        uniform_plan(groups, 0.5, 100)
    assert uniform_plan(groups, 0.5, 32) == {"a": 16, "b": 32}  # some groups too small: a warning naming them
    assert "--round-to 32 exceeds the channels of 1 group(s), which keep all their channels: a (16)" in caplog.text


# -- interruption -----------------------------------------------------------------------------------------------
def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(argv, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trtprune", *map(str, argv)],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill(proc: subprocess.Popen, sig: int) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return proc.returncode, err


def _wait_for(condition, proc: subprocess.Popen, timeout_s: float = 300.0) -> None:
    deadline = time.time() + timeout_s
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the command ended (status {proc.returncode}) before it could be interrupted: "
                        f"{proc.stderr.read()[-2000:]}")  # fmt: skip
        if time.time() > deadline:
            proc.kill()
            pytest.fail("the command made no progress to interrupt")
        time.sleep(0.05)


def _check_stopped(sig: int, code: int, err: str) -> None:
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:  # Ctrl-C and SIGTERM stop cleanly with the conventional status and one line
        # 128 + signal, or death by the signal, which a shell reports as the same status: CPython exits by
        # re-raising SIGINT when a KeyboardInterrupt once escaped code run through PyRun_String (pybind11's
        # py::exec inside an extension's import), even if the program caught it later (seen once under load)
        assert code in (128 + sig, -sig), err
        assert "interrupted; finished files are kept, re-run to resume" in err and "Traceback" not in err


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_the_startup_imports_stops_with_the_one_line(sig, monkeypatch, capsys):
    """Ctrl-C or SIGTERM while `trtprune` is still importing torch (seconds on a loaded machine; CI once sent
    SIGTERM there and the program died without a word): held until the imports end, then the same line and
    status as later in the run, and the command does not start."""
    import threading

    from trtprune import entry, signals

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")

    class Deliver:  # the signal's handler fires while `trtprune.cli` is being imported
        def find_spec(self, name, path=None, target=None):
            if name == "trtprune.cli":
                signal.getsignal(sig)(sig, None)

    monkeypatch.delitem(sys.modules, "trtprune.cli", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Deliver(), *sys.meta_path])
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        code = entry.main(["build", "--model", "resnet20", "--weights", "absent.th"])
        assert signal.getsignal(signal.SIGINT) is previous[0]  # Ctrl-C raises again once the imports are done
        assert signal.getsignal(signal.SIGTERM) is signals.on_sigterm
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert code == 128 + sig
    assert capsys.readouterr().err == "trtprune build: interrupted; finished files are kept, re-run to resume\n"


KILLS = [(signal.SIGINT, 0.0), (signal.SIGTERM, 0.5), (signal.SIGKILL, 0.3)]  # (signal, seconds after the trigger)


@pytest.mark.slow
@pytest.mark.parametrize("sig,delay", KILLS, ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_an_interrupted_finetune_keeps_its_last_checkpoint_and_resumes(sig, delay, tiny_data, tmp_path):
    """Stopped in epoch 2 (just after the epoch-1 checkpoint): the checkpoint is whole and loads with
    weights_only, no temporary file is left, and --resume continues from it to the end."""
    ckpt = tmp_path / "f.pt"
    argv = ["finetune", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--data", tiny_data,
            "--epochs", "6", "--batch-size", "16", "--train-limit", "64", "--eval-limit", "16",
            "--precision", "fp32", "-o", ckpt]  # fmt: skip
    proc = _start(argv, tmp_path)
    _wait_for(ckpt.exists, proc)
    time.sleep(delay)
    code, err = _kill(proc, sig)
    if code == 0:
        pytest.skip("the fine-tuning finished before the signal arrived")
    _check_stopped(sig, code, err)
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert 1 <= saved["epoch"] < 6 and len(saved["records"]) == saved["epoch"]
    if sig != signal.SIGKILL:
        assert temp_files(tmp_path) == []
    done = subprocess.run(
        [sys.executable, "-m", "trtprune", *map(str, argv), "--resume"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"resuming from {ckpt} after epoch {saved['epoch']}/6" in done.stderr
    final = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert final["epoch"] == 6 and final["records"][: saved["epoch"]] == saved["records"]  # not trained again
    assert temp_files(tmp_path) == []  # SIGKILL's leftovers (if any) are removed by the next write


@pytest.mark.slow
@pytest.mark.parametrize("sig,delay", KILLS, ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_an_interrupted_profile_keeps_an_intact_lut_and_resumes_without_remeasuring(sig, delay, tmp_path):
    """The real ONNX Runtime profiler on a small CNN, stopped once its first batch is stored: the LUT passes
    SQLite's integrity check, and the re-run times exactly the points that were not stored."""
    (tmp_path / "tiny.py").write_text(TINY_CNN)
    lut = tmp_path / "lut.sqlite"
    # the three-point search: many small batches to stop between (a sweep of every count, the default on ONNX
    # Runtime, stores this small model's profile in two batches)
    argv = ["profile", "--model", f"{tmp_path}/tiny.py:make", "--device", "cpu", "--lut", lut,
            "--out", tmp_path / "prof", "--no-plots", "--method", "three_point"]  # fmt: skip
    if sig != signal.SIGINT:  # one case on the full measurement protocol, the others on the quick one
        argv.append("--quick")

    def stored() -> int:
        if not lut.exists():
            return 0
        try:
            with contextlib.closing(sqlite3.connect(lut, timeout=1)) as db:
                return db.execute("SELECT COUNT(*) FROM latency_v2").fetchone()[0]
        except sqlite3.OperationalError:  # the table is not created yet
            return 0

    proc = _start(argv, tmp_path)
    _wait_for(lambda: stored() > 0, proc)
    time.sleep(delay)
    code, err = _kill(proc, sig)
    if code == 0 or (tmp_path / "prof" / "stairs.json").exists():
        pytest.skip("the profile finished before the signal arrived")
    _check_stopped(sig, code, err)
    with contextlib.closing(sqlite3.connect(lut)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        after_kill = db.execute("SELECT COUNT(*) FROM latency_v2").fetchone()[0]
    assert after_kill > 0
    assert not (tmp_path / "prof" / "stairs.json").exists()  # written only at the end, whole
    if sig != signal.SIGKILL:
        assert temp_files(tmp_path) == []
    done = subprocess.run([sys.executable, "-m", "trtprune", *map(str, argv)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    measured = int(re.search(r"(\d+) points measured", done.stdout).group(1))
    with contextlib.closing(sqlite3.connect(lut)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        final = db.execute("SELECT COUNT(*) FROM latency_v2").fetchone()[0]
    assert measured == final - after_kill  # nothing stored before the signal was timed again
    assert json.loads((tmp_path / "prof" / "stairs.json").read_text())["measured"] == measured
    assert temp_files(tmp_path) == []


def test_an_interrupt_in_the_middle_of_a_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM (raised as KeyboardInterrupt by the CLI) while torch.save is writing: the temporary file
    goes, the checkpoint of the epoch before stays whole."""
    from trtprune.sources import weights as W
    from trtprune.sources.models import build_model

    model = build_model("resnet20")
    W.save_pruned(tmp_path / "f.pt", model, "resnet20", [], epoch=1)

    def half_then_interrupt(obj, path):
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(W.torch, "save", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        W.save_pruned(tmp_path / "f.pt", model, "resnet20", [], epoch=2)
    assert W.read_checkpoint(tmp_path / "f.pt")["epoch"] == 1 and temp_files(tmp_path) == []


def test_a_stale_temporary_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    from trtprune.fsutil import write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".out.json.tmp{int(dead.stdout)}"  # as SIGKILL leaves it
    stale.write_text("half")
    live = tmp_path / f".out.json.tmp{os.getppid()}"  # a writer that is still running: left alone
    live.write_text("busy")
    write_text(tmp_path / "out.json", "{}")
    assert not stale.exists() and live.exists() and (tmp_path / "out.json").read_text() == "{}"


# -- concurrency ------------------------------------------------------------------------------------------------
def test_a_run_directory_locked_by_another_process_is_refused(tiny_data, tmp_path, capsys):
    """Across processes (tests/test_cli.py checks two opens in one process)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom trtprune.config import RunConfig\n"
         "from trtprune.run import Run\n"
         "with Run(sys.argv[1], RunConfig(model='resnet20')):\n    print('locked', flush=True)\n    time.sleep(120)\n",
         str(tmp_path / "runs" / "r")],
        stdout=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        code, _, err = cli(capsys, "run", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--data",
                           tiny_data, "--runs-dir", tmp_path / "runs", "--name", "r")  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and "run directory" in err and "is in use by another trtprune process" in err
    assert sorted(p.name for p in (tmp_path / "runs" / "r").iterdir()) == [".lock", "config.json"]


# -- untrusted files --------------------------------------------------------------------------------------------
def test_a_pickled_whole_model_loads_only_when_trusted(bad, capsys, caplog):
    from trtprune.sources.weights import load_model

    with pytest.raises(TrtpruneError, match="pickled Python objects") as e:
        load_model("resnet20", bad["dir"] / "whole.pt")
    assert "--unsafe-pickle" in e.value.fix
    argv = ["eval", "--model", "resnet20", "--weights", bad["dir"] / "whole.pt", "--data", bad["data"], "--limit", "8"]
    code, out, err = cli(capsys, *argv, "--unsafe-pickle")
    assert code == 0 and "top-1" in out, err
    assert "with full unpickling (--unsafe-pickle): the file can run code" in caplog.text
    with pytest.raises(TrtpruneError, match="pickled Python objects"):  # the opt-in ended with the command
        load_model("resnet20", bad["dir"] / "whole.pt")


def test_onnx_external_data_must_stay_in_the_models_folder(tmp_path):
    from trtprune.deploy.export import read_onnx

    (tmp_path / "secret.bin").write_bytes(np.ones(108, np.float32).tobytes())
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "w.bin").write_bytes(np.ones(108, np.float32).tobytes())
    (model_dir / "link.bin").symlink_to(tmp_path / "secret.bin")
    for location in ("../secret.bin", str(tmp_path / "secret.bin"), "link.bin", "sub/../../secret.bin"):
        with pytest.raises(TrtpruneError, match="refers to external data outside its folder") as e:
            read_onnx(_external_conv(model_dir / "m.onnx", location))
        assert location in str(e.value)
    read_onnx(_external_conv(model_dir / "ok.onnx", "w.bin"))  # beside the model: fine


@pytest.mark.parametrize("entry", ["-m", "script"])
def test_a_file_in_the_working_directory_is_imported_only_when_named(entry, tmp_path):
    """Python files that shadow modules trtprune imports, or that share a built-in model's name, are not run."""
    markers = tmp_path / "imported"
    markers.mkdir()
    for name in ("argparse", "numpy", "resnet20", "resnet_cifar", "models", "trtprune_user_resnet20"):
        (tmp_path / f"{name}.py").write_text(
            f"open({str(markers / name)!r}, 'w').close()\n"
            "import torch.nn as nn\n\n\ndef make():\n"
            "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten())\n"
        )
    script = Path(sys.executable).parent / "trtprune"
    if entry == "script" and not script.exists():
        pytest.skip("the trtprune console script is not installed beside this Python")
    command = [sys.executable, "-m", "trtprune"] if entry == "-m" else [str(script)]
    done = subprocess.run([*command, "groups", "--model", "resnet20"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and "12 prunable groups" in done.stdout, done.stderr
    assert list(markers.iterdir()) == []
    done = subprocess.run([*command, "groups", "--model", "resnet20.py:make"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [p.name for p in markers.iterdir()] == ["resnet20"]  # named: imported, and nothing else


# -- resources --------------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def test_many_fresh_sessions_keep_memory_flat_and_leave_no_temp_files(tmp_path, monkeypatch):
    """Profiling times every burst in a new ONNX Runtime session and reads each point's kernel from an optimised
    copy in a temporary folder: hundreds of them must not grow memory or leave files."""
    import tempfile

    from trtprune.latency import get_backend
    from trtprune.latency.devices import DEVICES
    from trtprune.profiling.layers import Signature, micro_model
    from trtprune.profiling.lut import LUT
    from trtprune.profiling.profile import Profiler

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    sig = Signature("conv", (3, 3), (1, 1), (1, 1, 1, 1), hw=(8, 8), act="relu")
    model = micro_model(sig, 8, 8)
    quick = {"rounds": 2, "warmup": 1, "round_ms": 0.05, "max_runs": 2, "renew": True}
    with get_backend(DEVICES["cpu"]) as backend, LUT(tmp_path / "lut.sqlite") as lut:
        backend.bursts([model], rounds=30, warmup=1, round_ms=0.05, max_runs=1, renew=True)  # libraries loaded
        Profiler(backend, lut, micro=quick).entries([(sig, 8, c) for c in range(1, 5)])
        before = _rss_mb()
        bursts = backend.bursts([model], rounds=300, warmup=1, round_ms=0.05, max_runs=1, renew=True)
        profiler = Profiler(backend, lut, micro=quick)
        profiler.entries([(sig, 8, c) for c in range(5, 41)])  # 36 new points, each with its kernel read
        after = _rss_mb()
        assert lut.count() == 40
    assert len(bursts[0]) == 300 and profiler.measured == 36
    assert after - before < 50, f"RSS grew by {after - before:.1f} MB"
    assert list(tmp.iterdir()) == []
    assert {p.name for p in tmp_path.iterdir()} <= {"tmp", "lut.sqlite", "lut.sqlite-wal", "lut.sqlite-shm"}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_an_interrupted_search_writes_no_plan_keeps_its_lut_and_completes_on_rerun(sig, tmp_path):
    """Stopped while it profiles: no plan (plans are written whole, at the end), an intact LUT, no temporary
    file; the re-run reuses the stored points and writes a plan that loads."""
    from trtprune.searching import Plan

    (tmp_path / "tiny.py").write_text(TINY_CNN)
    sys.path.insert(0, str(tmp_path))
    try:
        import tiny  # noqa: F401 - the test's own model file, for its weights

        torch.save(sys.modules["tiny"].make().state_dict(), tmp_path / "w.pt")
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("tiny", None)
    lut, plan = tmp_path / "lut.sqlite", tmp_path / "plan.json"
    argv = ["search", "--model", f"{tmp_path}/tiny.py:make", "--weights", tmp_path / "w.pt", "--device", "cpu",
            "--budget", "0.7x", "--importance", "l1", "--lut", lut, "-o", plan, "--quick"]  # fmt: skip

    def stored() -> int:
        try:
            with contextlib.closing(sqlite3.connect(lut, timeout=1)) as db:
                return db.execute("SELECT COUNT(*) FROM latency_v2").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    proc = _start(argv, tmp_path)
    _wait_for(lambda: lut.exists() and stored() > 0, proc)
    code, err = _kill(proc, sig)
    if code == 0:
        pytest.skip("the search finished before the signal arrived")
    _check_stopped(sig, code, err)
    assert not plan.exists()
    with contextlib.closing(sqlite3.connect(lut)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    after_kill = stored()
    if sig != signal.SIGKILL:
        assert temp_files(tmp_path) == []
    done = subprocess.run([sys.executable, "-m", "trtprune", *map(str, argv)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr
    loaded = Plan.load(plan)
    assert loaded.measured_ms is not None and stored() >= after_kill
    assert temp_files(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_an_interrupted_build_leaves_the_engine_whole_or_absent(sig, tiny_data, tmp_path):
    import onnx

    out = tmp_path / "engines" / "r20.onnx"
    argv = ["build", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--device", "cpu", "-o", out]
    proc = _start(argv, tmp_path)
    time.sleep(2.5)  # into the export (imports take ~1.5 s idle; a signal during them stops the same way)
    code, err = _kill(proc, sig)
    if code == 0:
        pytest.skip("the build finished before the signal arrived")
    _check_stopped(sig, code, err)
    if out.exists():
        onnx.checker.check_model(str(out))  # whole, or ...
    if sig != signal.SIGKILL:
        assert temp_files(tmp_path) == []  # ... absent, with nothing half-written beside it
    done = subprocess.run([sys.executable, "-m", "trtprune", *map(str, argv)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    onnx.checker.check_model(str(out))
    assert temp_files(tmp_path) == []
