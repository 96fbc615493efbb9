"""Plans, budgets, devices and ignored layers (issue 30): what used to be done silently wrong is refused or said."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from torch import nn

import trtprune
from tests.conftest import cli
from tests.mistakes.common import user_error
from tests.small_models import RESNET8
from trtprune.errors import TrtpruneError
from trtprune.sources.weights import load_model

WEIGHTS = "weights/resnet20-random.th"
WEIGHTS8 = "weights/resnet8-random.th"

TINY = """
import torch.nn as nn


def make():
    return nn.Sequential(
        nn.Conv2d(3, 24, 3, padding=1), nn.ReLU(), nn.Conv2d(24, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 10), nn.Identity(),
    )


def first_identity():
    return nn.Sequential(nn.Identity(), *make())


class Unused(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.spare = make(), nn.ReLU()

    def forward(self, x):
        return self.body(x)


def unused():
    return Unused()
"""


@pytest.fixture()
def tiny_file(tmp_path):
    (tmp_path / "tiny.py").write_text(TINY)
    return tmp_path / "tiny.py"


def _groups(capsys, *argv) -> dict:
    code, out, err = cli(capsys, "--json", "groups", *argv)
    assert code == 0, err
    return {g["name"]: g for g in json.loads(out)["groups"]}


# -- --ignore of a module without a conv or linear of its own -------------------------------------------------------
@pytest.mark.parametrize("name,kind", [("1", "ReLU"), ("3", "BatchNorm2d"), ("4", "ReLU"), ("5", "AdaptiveAvgPool2d")])
def test_ignore_of_a_batchnorm_or_activation_keeps_the_channels_passing_through_it(
    name, kind, tiny_file, capsys, caplog, monkeypatch
):
    monkeypatch.setattr("trtprune.pruning.prune._SAID", set())
    model = ["--model", f"{tiny_file}:make"]
    assert set(_groups(capsys, *model)) == {"0", "2"}
    with caplog.at_level(logging.INFO, logger="trtprune"):
        groups = _groups(capsys, *model, "--ignore", name)
    carried = "0" if name == "1" else "2"
    assert carried not in groups and len(groups) == 1  # the group whose channels it carries is kept whole ...
    assert f"--ignore {name} (a {kind}): keeps the output channels of {carried}" in caplog.text  # ... and said


def test_ignore_of_a_resnet_batchnorm_keeps_its_conv_and_prune_keeps_its_channels(tiny_data, tmp_path, capsys):
    out = tmp_path / "p.pt"
    code, _, err = cli(capsys, "prune", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--importance", "l1",
                       "--ignore", "layer1.0.bn1", "-o", out)  # fmt: skip
    assert code == 0, err
    model, _ = load_model("resnet20", out)
    assert model.layer1[0].conv1.out_channels == 16  # kept: the BatchNorm after it was ignored
    assert model.layer1[1].conv1.out_channels == 8  # the others: halved


@pytest.mark.parametrize(
    "factory,name,message",
    [
        ("unused", "spare", "--ignore names 'spare' (a ReLU), which does not run in the model's forward pass"),
        ("first_identity", "0", "--ignore names '0' (a Identity), which no convolution or linear layer feeds"),
    ],
)
def test_ignore_of_a_module_no_channel_passes_through_is_refused(factory, name, message, tiny_file, capsys):
    user_error(capsys, "groups", "--model", f"{tiny_file}:{factory}", "--ignore", name, message=message)


# -- a plan with a group left out ---------------------------------------------------------------------------------
@pytest.fixture()
def plan_file(tiny_data, tmp_path, capsys):
    code, _, err = cli(capsys, "prune", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--importance", "l1",
                       "-o", tmp_path / "u.pt")  # fmt: skip
    assert code == 0, err
    return tmp_path / "u.plan.json"


@pytest.mark.parametrize("where", ["keep_channels", "both"])
def test_a_plan_with_a_group_left_out_is_refused(where, plan_file, tiny_data, tmp_path, capsys):
    plan = json.loads(plan_file.read_text())
    del plan["keep_channels"]["layer2.1.conv1"]
    if where == "both":
        del plan["channels"]["layer2.1.conv1"]
    plan_file.write_text(json.dumps(plan))
    message = (
        f"plan '{plan_file}' gives no channel count for group(s) layer2.1.conv1"
        if where == "keep_channels"
        else "the plan gives no channel count for group(s) of the model: layer2.1.conv1"
    )
    out = tmp_path / "p.pt"
    user_error(capsys, "prune", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--plan", plan_file,
               "-o", out, message=message, absent=[out], roots=[tmp_path])  # fmt: skip


def test_the_api_refuses_a_plan_object_with_a_group_left_out_and_keeps_a_partial_dict(tiny_data, plan_file):
    from trtprune.searching import Plan
    from trtprune.sources.models import build_model

    plan = Plan.load(plan_file)
    del plan.keep_channels["layer3.0.conv1"], plan.channels["layer3.0.conv1"]
    with pytest.raises(TrtpruneError, match="no channel count for group.*layer3.0.conv1"):
        trtprune.prune(build_model("resnet20"), plan, (3, 32, 32), importance="l1")
    model = trtprune.prune(build_model("resnet20"), {"layer3.0.conv1": 32}, (3, 32, 32), importance="l1")
    assert model.layer3[0].conv1.out_channels == 32 and model.layer3[1].conv1.out_channels == 64  # documented


# -- a budget in milliseconds above the measured baseline ----------------------------------------------------------
def test_a_budget_in_ms_above_the_measured_baseline_is_refused_before_the_search(tiny_data, tmp_path, capsys):
    out = tmp_path / "plan.json"
    err = user_error(capsys, "search", "--model", RESNET8, "--weights", tiny_data / WEIGHTS8, "--data", tiny_data,
                     "--budget", "100ms", "--lut", tmp_path / "l.sqlite", "-o", out,
                     message="the budget 100 ms is not below the unpruned model's latency (",
                     absent=[out], roots=[tmp_path])  # fmt: skip
    assert "measured on cpu" in err and "--budget-ms" in err


# -- an int8 device given a float model ----------------------------------------------------------------------------
def test_measure_on_an_int8_device_refuses_a_float_model(tmp_path, capsys):
    from trtprune.deploy.export import onnx_from_torch

    onnx_from_torch(nn.Conv2d(3, 8, 3), tmp_path / "f.onnx", (3, 16, 16))
    out = tmp_path / "m.json"
    user_error(capsys, "measure", tmp_path / "f.onnx", "--device", "cpu-int8", "--json-file", out,
               message=f"'{tmp_path / 'f.onnx'}' has no INT8 (QuantizeLinear) nodes, and device 'cpu-int8' runs",
               absent=[out])  # fmt: skip


def test_measure_on_an_int8_device_times_a_quantized_model(tmp_path, capsys):
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.deploy.quantize import qdq_from_onnx

    onnx_from_torch(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), tmp_path / "f.onnx", (3, 16, 16))
    calib = np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype(np.float32)
    qdq_from_onnx(tmp_path / "f.onnx", tmp_path / "q.onnx", calib, target="ort")
    code, _, err = cli(capsys, "measure", tmp_path / "q.onnx", "--device", "cpu-int8", "--rounds", "2")
    assert code == 0, err


# -- run on an int8 device: the calibration images are checked before the first stage ------------------------------
def test_run_on_an_int8_device_checks_calib_before_the_first_stage(tiny_data, tmp_path, capsys):
    runs, engines = tmp_path / "runs", tmp_path / "engines"
    user_error(capsys, "run", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--data", tiny_data,
               "--device", "cpu-int8", "--budget", "none", "--calib", tmp_path / "missing_dir", "--runs-dir", runs,
               "--engines-dir", engines, message="calibration", absent=[runs, engines])  # fmt: skip


# -- run: inputs checked before the first stage; a run that made nothing takes new settings --------------------------
def test_run_with_missing_weights_fails_before_any_file_is_made(tmp_path, capsys):
    runs, engines = tmp_path / "runs", tmp_path / "engines"
    missing = tmp_path / "missing.pt"
    message = f"weights file '{missing}' does not exist"
    user_error(capsys, "run", "--model", "resnet20", "--weights", missing, "--budget", "none", "--runs-dir", runs,
               "--engines-dir", engines, message=message, absent=[runs, engines])  # fmt: skip


def test_a_run_that_made_nothing_takes_new_settings_and_one_that_made_a_file_refuses_them(tmp_path, caplog):
    from trtprune.config import RunConfig
    from trtprune.run import Run

    with Run(tmp_path / "r", RunConfig(weights="old.pt")):
        pass  # stopped before its first stage: config.json only
    with caplog.at_level(logging.INFO, logger="trtprune"), Run(tmp_path / "r", RunConfig(weights="new.pt")) as run:
        run.path("baseline.onnx").write_bytes(b"made")
    assert "nothing was made with the earlier settings (weights): these replace them" in caplog.text
    assert json.loads((tmp_path / "r" / "config.json").read_text())["weights"] == "new.pt"
    with pytest.raises(TrtpruneError, match=r"was made with other settings \(weights\)"):
        Run(tmp_path / "r", RunConfig(weights="old.pt")).__enter__()


# -- build: an engine under another kind of file's suffix ---------------------------------------------------------
@pytest.mark.parametrize("name", ["eng.plan", "eng.pt", "eng.engine"])
def test_build_refuses_an_output_named_as_another_kind_of_file(name, tiny_data, tmp_path, capsys):
    out = tmp_path / name
    user_error(capsys, "build", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--device", "cpu",
               "-o", out, message=f"-o '{out}' ends in {out.suffix}, but device 'cpu' delivers an ONNX model (.onnx)",
               absent=[out], roots=[tmp_path])  # fmt: skip


def test_build_takes_the_devices_suffix_or_a_name_of_its_own(tiny_data, tmp_path, capsys):
    for name in ("eng.onnx", "eng"):
        code, _, err = cli(capsys, "build", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--device", "cpu",
                           "-o", tmp_path / name)  # fmt: skip
        assert code == 0 and (tmp_path / name).is_file(), err
