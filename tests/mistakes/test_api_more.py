"""Issue 30, second review: the Python API's arguments checked at its door as the command line checks its options
(normalisation in 0..255 units, plan counts that are not integers, ignore/plan/paths/rounds/rel of the wrong kind,
calibration pixels), measure's precision check in both directions, a factory file importing its sibling, weights
files that are not checkpoints, plans' remove_blocks, unknown fields and a conflicting --ignore, budgets written
with an exponent, and a task file without a loss."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from torch import nn

import trtprune
from tests.conftest import cli
from tests.mistakes.common import api_error, user_error
from trtprune.searching.plan import Budget

SHAPE = (3, 16, 16)
WEIGHTS = "weights/resnet20-random.th"
PIXEL_MEAN, PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
UNITS = "normalisation mean 123.675, 116.28, 103.53 / std 58.395, 57.12, 57.375 is in 0..255 pixel units"


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def _arrays(n: int = 16):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, SHAPE[1], SHAPE[2], 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int64)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory):
    """A float ONNX model and its INT8 Q/DQ form (ONNX Runtime's)."""
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.deploy.quantize import qdq_from_onnx

    root = tmp_path_factory.mktemp("onnx")
    onnx_from_torch(_tiny(), root / "f.onnx", SHAPE)
    calib = np.random.default_rng(0).standard_normal((4, *SHAPE)).astype(np.float32)
    qdq_from_onnx(root / "f.onnx", root / "q.onnx", calib, target="ort")
    return root / "f.onnx", root / "q.onnx"


# -- 1. mean/std in 0..255 units: every API function that takes them refuses them, as --mean/--std are ---------------
@pytest.mark.parametrize(
    "call",
    [
        lambda m, d, kw: trtprune.evaluate(m, d, **kw),
        lambda m, d, kw: trtprune.finetune(m, d, d, epochs=1, train_limit=16, **kw),
        lambda m, d, kw: trtprune.scores(m, SHAPE, importance="taylor", data=d, **kw),
        lambda m, d, kw: trtprune.prune(m, {"0": 8}, SHAPE, data=d, **kw),
        lambda m, d, kw: trtprune.search(m, SHAPE, "cpu", "0.5x", data=d, **kw),
        lambda m, d, kw: trtprune.build(m, SHAPE, "cpu-int8", "never.onnx", calib=d[0], **kw),
    ],
    ids=["evaluate", "finetune", "scores", "prune", "search", "build"],
)
def test_api_mean_and_std_in_pixel_units_are_refused_as_on_the_command_line(call, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _tiny()
    before = [p.detach().clone() for p in model.parameters()]
    api_error(call, model, _arrays(), {"mean": PIXEL_MEAN, "std": PIXEL_STD}, message=UNITS)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert list(tmp_path.iterdir()) == []


# -- 2. measure: a model not in the device's precision, both directions, CLI and API --------------------------------
def test_measure_refuses_an_int8_model_on_a_float_device(onnx_files, tmp_path, capsys):
    _, q = onnx_files
    out = tmp_path / "m.json"
    message = f"'{q}' is an INT8 Q/DQ model, and device 'cpu' runs fp32 models"
    err = user_error(capsys, "measure", q, "--device", "cpu", "--json-file", out, message=message, absent=[out])
    assert "--device cpu-int8" in err
    api_error(trtprune.measure, [q], message=message)


def test_api_measure_refuses_a_float_model_on_an_int8_device_and_times_each_in_its_own(onnx_files):
    f, q = onnx_files
    api_error(trtprune.measure, [f], "cpu-int8", rounds=2,
              message=f"'{f}' has no INT8 (QuantizeLinear) nodes, and device 'cpu-int8' runs INT8 models")  # fmt: skip
    assert len(trtprune.measure([q], "cpu-int8", rounds=2)) == 1
    assert len(trtprune.measure(str(f), "cpu", rounds=2)) == 1  # one path alone is accepted


# -- 3. prune's dict plan: counts that are not integers -------------------------------------------------------------
@pytest.mark.parametrize("count,kind", [(8.5, "float"), (True, "bool"), ("8", "str"), (8.0, "float")])
def test_api_prune_refuses_counts_that_are_not_integers(count, kind):
    model = _tiny()
    api_error(trtprune.prune, model, {"0": count}, SHAPE, importance="l1",
              message=f"plan gives '0': {count!r} (a {kind}), not a group name and a channel count")  # fmt: skip
    assert model[0].out_channels == 16
    assert trtprune.prune(model, {"0": np.int64(8)}, SHAPE, importance="l1")[0].out_channels == 8


# -- 4. the API's door: arguments of the wrong kind, one TrtpruneError each, or accepted -------------------------------
@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m, tmp: trtprune.prune(m, None, SHAPE, importance="l1"), "plan is a NoneType, not a plan"),
        (lambda m, tmp: trtprune.prune(m, [("0", 8)], SHAPE, importance="l1"), "plan is a list, not a plan"),
        (lambda m, tmp: trtprune.export(m, None, SHAPE), "path=None is not a file path"),
        (lambda m, tmp: trtprune.build(m, SHAPE, "cpu", None), "out=None is not a file path"),
        (lambda m, tmp: trtprune.build(m, SHAPE, "cpu", tmp / "b.onnx", calibration=1), "build() got unknown"),
        (lambda m, tmp: trtprune.measure([m]), "measure() got a Sequential, not the path of a model file"),
        (lambda m, tmp: trtprune.measure(m), "measure() got a Sequential, not the path of a model file"),
        (lambda m, tmp: trtprune.measure([]), "measure() got no models"),
        (lambda m, tmp: trtprune.measure([tmp / "f.onnx"], rounds="3"), "rounds='3' is not an integer of 1 or more"),
        (lambda m, tmp: trtprune.measure([tmp / "f.onnx"], rounds=0), "rounds=0 is not an integer of 1 or more"),
        (lambda m, tmp: trtprune.profile(m, SHAPE, rel=-1, lut=tmp / "l.sqlite"), "rel=-1 is not a tolerance"),
        (lambda m, tmp: trtprune.groups(m, SHAPE, ignore=5), "ignore=5 is not module names (it is of type int)"),
        (lambda m, tmp: trtprune.groups(m, SHAPE, ignore=[nn.ReLU()]), "ignore holds ReLU() (a module that is not"),
        (lambda m, tmp: trtprune.groups(m, SHAPE, ignore=[3]), "ignore holds 3 (type int), which is not a module name"),
    ],
    ids=["prune-None", "prune-list", "export-None", "build-None", "build-kw", "measure-module-list", "measure-module",
         "measure-empty", "rounds-str", "rounds-0", "rel-negative", "ignore-int", "ignore-foreign", "ignore-ints"],
)  # fmt: skip
def test_api_arguments_of_the_wrong_kind_are_one_error(call, message, tmp_path, onnx_files):
    (tmp_path / "f.onnx").write_bytes(onnx_files[0].read_bytes())
    api_error(call, _tiny(), tmp_path, message=message)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.onnx"]


def test_api_accepts_a_single_name_modules_none_arrays_and_tensors_where_the_meaning_is_plain(tmp_path):
    model = _tiny()
    names = [g.name for g in trtprune.groups(model, SHAPE)]
    assert [g.name for g in trtprune.groups(model, SHAPE, ignore=None)] == names
    assert [g.name for g in trtprune.groups(model, SHAPE, ignore="0")] == names[1:]  # a name, not its letters
    assert [g.name for g in trtprune.groups(model, SHAPE, ignore=[model[0]])] == names[1:]  # a module, by its name
    assert [g.name for g in trtprune.groups(model, np.array(SHAPE))] == names
    assert [g.name for g in trtprune.groups(model, torch.Size(SHAPE))] == names
    x, y = _arrays()
    plain = trtprune.evaluate(model, (x, y))
    mean, std = torch.tensor([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    assert trtprune.evaluate(model, (x, y), mean=mean, std=std) == plain


def test_api_prune_takes_the_path_of_a_plan_file(tmp_path):
    from trtprune.searching.plan import Plan

    model = _tiny()
    channels = {g.name: g.channels for g in trtprune.groups(model, SHAPE)}
    Plan("tiny", "cpu", "uniform", "0.5x", {**channels, "0": 8}, channels).save(tmp_path / "p.plan.json")
    for plan in (tmp_path / "p.plan.json", str(tmp_path / "p.plan.json")):
        assert trtprune.prune(_tiny(), plan, SHAPE, importance="l1")[0].out_channels == 8


# -- 5. build's calib: uint8 NHWC pixels are normalised; anything else says what calib= takes -----------------------
def test_api_build_normalises_uint8_pixels_and_says_what_calib_takes(tmp_path):
    x, _ = _arrays()
    engine = trtprune.build(_tiny(), SHAPE, "cpu-int8", tmp_path / "q.onnx", calib=x)
    assert engine.kind == "INT8 Q/DQ ONNX model" and engine.path.is_file()
    e = api_error(trtprune.build, _tiny(), SHAPE, "cpu-int8", tmp_path / "r.onnx", calib=x[:, :8],
                  message="calib is a uint8 array of shape (16, 8, 16, 3), not calibration images for input shape "
                  "(3, 16, 16)")  # fmt: skip
    assert "normalised float32 NCHW images (N, 3, 16, 16)" in str(e) and "trtprune-build" not in str(e)
    assert not (tmp_path / "r.onnx").exists()


# -- 6. a factory file importing its sibling module ------------------------------------------------------------------
def test_a_factory_file_imports_a_module_beside_it(tmp_path, capsys, monkeypatch):
    models = tmp_path / "models_here"
    models.mkdir()
    (models / "sibling_net_f.py").write_text(
        "import torch.nn as nn\n\n\ndef net():\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten())\n"
    )
    (models / "fac_f.py").write_text("import sibling_net_f\n\n\ndef make():\n    return sibling_net_f.net()\n")
    (models / "lazy_f.py").write_text("def make():\n    import sibling_net_f\n\n    return sibling_net_f.net()\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", list(__import__("sys").path))
    for fn in ("fac_f.py:make", "lazy_f.py:make"):
        code, out, err = cli(capsys, "groups", "--model", f"models_here/{fn}", "--input-shape", "3x16x16")
        assert code == 0 and "1 prunable group" in out, err


# -- 7. --weights given a file that is not a checkpoint: said what it is, --unsafe-pickle only for pickles -----------
def _sqlite(path):
    with sqlite3.connect(path) as db:
        db.execute("create table t (x)")


@pytest.mark.parametrize(
    "name,make,what",
    [
        ("tl.sqlite", _sqlite, "is an SQLite database, not a PyTorch checkpoint"),
        ("plan.json", lambda p: p.write_text('{"format": "trtprune.plan/1", "model": "resnet20"}'),
         "is a trtprune plan (JSON), not a PyTorch checkpoint"),
        ("r.json", lambda p: p.write_text('{"top1": 91.2}'), "is a JSON file, not a PyTorch checkpoint"),
        ("notes.txt", lambda p: p.write_text("resnet20 weights: see the wiki\n"), "is a text file, not a PyTorch"),
        ("noise.bin", lambda p: p.write_bytes(bytes(range(7, 256)) * 40), "cannot read weights file"),
    ],
    ids=["sqlite", "plan", "json", "text", "binary"],
)  # fmt: skip
def test_weights_that_are_not_a_checkpoint_are_named_and_unsafe_pickle_is_not_suggested(
    name, make, what, tmp_path, capsys
):
    make(tmp_path / name)
    err = user_error(capsys, "groups", "--model", "resnet20", "--weights", tmp_path / name,
                     message=f"weights file '{tmp_path / name}' {what}" if "cannot" not in what else what)  # fmt: skip
    assert "--unsafe-pickle" not in err and "pickled" not in err


# -- 8. plans: remove_blocks, unknown fields, --ignore against the plan, --ignore of everything, TorchScript --------
@pytest.fixture(scope="module")
def plan_json(tiny_data, tmp_path_factory):
    from trtprune.searching.plan import Plan
    from trtprune.sources.models import build_model

    channels = {g.name: g.channels for g in trtprune.groups(build_model("resnet20"), (3, 32, 32))}
    path = tmp_path_factory.mktemp("plan") / "p.plan.json"
    Plan("resnet20", "cpu", "uniform", "0.5x", {**channels, "layer1.0.conv1": 8}, channels).save(path)
    return json.loads(path.read_text())


def _prune(capsys, tiny_data, tmp_path, plan: dict, *more, message: str) -> str:
    (tmp_path / "x.plan.json").write_text(json.dumps(plan))
    out = tmp_path / "p.pt"
    return user_error(capsys, "prune", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--importance", "l1",
                      "--plan", tmp_path / "x.plan.json", *more, "-o", out, message=message, absent=[out],
                      roots=[tmp_path])  # fmt: skip


@pytest.mark.parametrize(
    "blocks,message,why",
    [
        (["layer2.0"], "the plan's remove_blocks names 'layer2.0', which is not a removable residual block",
         "does not add its input"),
        (["layer1", "layer2", "layer3"], "the plan's remove_blocks names 'layer1', which is not a removable", "stage"),
        (["layer1.0.conv1"], "the plan's remove_blocks names 'layer1.0.conv1', which is not a removable", "Conv2d"),
        (["layer9.0"], "the plan's remove_blocks names 'layer9.0', which is not a removable", "not a module"),
        (["layer1.1", "layer1.1"], "the plan removes the block(s) layer1.1 twice", "once"),
    ],
    ids=["downsampling", "stages", "conv", "absent", "twice"],
)  # fmt: skip
def test_a_plan_removing_what_is_not_a_removable_block_is_named(blocks, message, why, plan_json, tiny_data, tmp_path,
                                                                capsys):  # fmt: skip
    err = _prune(capsys, tiny_data, tmp_path, {**plan_json, "remove_blocks": blocks}, message=message)
    assert why in err
    assert "twice" in message or "layer1.0, layer1.1, layer1.2, layer2.1, layer2.2, layer3.1, layer3.2;" in err


def test_api_prune_checks_a_plans_remove_blocks_before_changing_the_model(plan_json):
    from trtprune.searching.plan import Plan
    from trtprune.sources.models import build_model

    fields = {k: v for k, v in plan_json.items() if k != "format"}
    model = build_model("resnet20")
    api_error(trtprune.prune, model, Plan(**{**fields, "remove_blocks": ["layer2.0"]}), (3, 32, 32),
              importance="l1", message="the plan's remove_blocks names 'layer2.0'")  # fmt: skip
    assert not isinstance(model.layer2[0], nn.Identity)


def test_a_plan_with_an_unknown_or_missing_field_names_it(plan_json, tiny_data, tmp_path, capsys):
    path = tmp_path / "x.plan.json"
    _prune(capsys, tiny_data, tmp_path, {**plan_json, "frobnicate": 1},
           message=f"plan '{path}' is malformed: unknown field(s) 'frobnicate'")  # fmt: skip
    plan = {k: v for k, v in plan_json.items() if k != "channels"}
    _prune(capsys, tiny_data, tmp_path, plan, message=f"plan '{path}' is malformed: missing field(s) 'channels'")


def test_prune_ignore_that_keeps_a_group_the_plan_prunes_is_said_to_conflict(plan_json, tiny_data, tmp_path, capsys):
    message = "--ignore layer1.0.conv1 keeps whole the group(s) layer1.0.conv1, which the plan prunes"
    _prune(capsys, tiny_data, tmp_path, plan_json, "--ignore", "layer1.0.conv1", message=message)


TORCHSCRIPT = """
import torch
import torch.nn as nn


def make():
    return torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten()))
"""


@pytest.mark.parametrize(
    "argv,message",
    [
        (["groups", "--model", "resnet20", "--ignore", ""], "--ignore '' keeps every channel group of the model whole"),
        (["groups", "--model", "resnet20", "--ignore", "conv1", "layer1", "layer2", "layer3"],
         "--ignore conv1 layer1 layer2 layer3 keeps every channel group of the model whole"),
        (["search", "--model", "resnet20", "--weights", "{data}/" + WEIGHTS, "--data", "{data}", "--budget", "0.5x",
          "--importance", "l1", "-o", "s.json", "--ignore", "conv1", "layer1", "layer2", "layer3"],
         "--ignore conv1 layer1 layer2 layer3 keeps every channel group of the model whole"),
        (["groups", "--model", "{dir}/ts.py:make", "--input-shape", "3x16x16"],
         "the model is a TorchScript RecursiveScriptModule, not a torch.nn.Module"),
    ],
    ids=["empty-name", "every-group", "search", "torchscript"],
)  # fmt: skip
def test_no_prunable_group_says_why(argv, message, tiny_data, tmp_path, capsys, monkeypatch):
    (tmp_path / "ts.py").write_text(TORCHSCRIPT)
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{dir}", str(tmp_path)).replace("{data}", str(tiny_data)) for a in argv]
    user_error(capsys, *argv, message=message, absent=[tmp_path / "s.json"], roots=[tmp_path])
    api_error(trtprune.groups, _tiny(), SHAPE, ignore=[""], message="ignore names the whole model")


# -- 9. budgets: any float -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,fraction", [("1e-9x", 1e-9), ("1E-3X", 1e-3), ("5e-1", 0.5), (" .25 x", 0.25)])
def test_a_budget_written_with_an_exponent_is_read(text, fraction):
    assert Budget.from_text(text).fraction == fraction
    with pytest.raises(Exception, match="budget '-0.5x' is negative"):
        Budget.from_text("-0.5x")


# -- 10. a task file whose object has no loss ------------------------------------------------------------------------
TASKS = """
class NoLoss:
    def metric(self, model):
        return 1.0


class NoMetric:
    def loss(self, outputs, targets):
        return outputs.sum()


class Based:
    base = "classification"

    def metric(self, model):
        return 1.0


noloss, nometric, based = NoLoss(), NoMetric(), Based()
"""


@pytest.mark.parametrize("obj,missing", [("noloss", "no loss"), ("nometric", "no metric")])
def test_a_task_file_without_its_loss_or_metric_is_refused_at_load(obj, missing, tiny_data, tmp_path, capsys):
    (tmp_path / "task_f.py").write_text(TASKS)
    spec = f"{tmp_path / 'task_f.py'}:{obj}"
    out = tmp_path / "ft.pt"
    err = user_error(capsys, "finetune", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--data", tiny_data,
                     "--task", spec, "--epochs", "1", "-o", out, message=f"{spec} holds {missing}",
                     absent=[out])  # fmt: skip
    assert "base = 'classification'" in err
    api_error(trtprune.task, spec, message=f"{spec} holds {missing}")
    assert trtprune.task(f"{tmp_path / 'task_f.py'}:based").metric_name
