"""Issue 30, models, ONNX inputs and the Python API: a new user's models (tuples, a forward that raises, float16 and
float64 weights), ONNX files whose input is not float32, the API's arguments and data (string shapes, arrays in the
wrong layout or scale, one-hot labels, wrongly typed settings) and loaders (channels last, read once, empty)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import trtprune
from tests.mistakes.common import api_error, user_error
from trtprune.sources.datasets import synthetic_cifar10

MODELS = """
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, mode="tensor"):
        super().__init__()
        self.mode = mode
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head, self.aux = nn.Linear(8, 10), nn.Linear(8, 4)

    def forward(self, x):
        f = self.body(x)
        if self.mode == "tuple":
            return self.head(f), self.aux(f)
        if self.mode == "dict":
            return {"logits": self.head(f), "aux": self.aux(f)}
        if self.mode == "one":
            return (self.head(f),)
        if self.mode == "raise":
            raise RuntimeError("boom")
        return self.head(f)


def make():
    return Net()


def tup():
    return Net("tuple")


def dic():
    return Net("dict")


def one():
    return Net("one")


def boom():
    return Net("raise")


def half():
    return Net().half()


def double():
    return Net().double()
"""

LOADERS = """
import torch
from torch.utils.data import DataLoader, TensorDataset

from trtprune.sources.datasets import synthetic_cifar10

x, y = synthetic_cifar10(32, 1)
X, Y = torch.from_numpy(x), torch.from_numpy(y).long()
GOOD = TensorDataset(X.permute(0, 3, 1, 2).float() / 255, Y)


def nhwc():
    return DataLoader(TensorDataset(X, Y), batch_size=16), DataLoader(TensorDataset(X, Y), batch_size=16)


def empty():
    return DataLoader(TensorDataset(GOOD[:0][0], Y[:0]), batch_size=16), DataLoader(GOOD, batch_size=16)
"""


def _onnx(path: Path, elem_type, shape=(1, 3, 32, 32)) -> Path:
    """A classifier-like ONNX model (mean over the image, then 10 scores) whose input is of ``elem_type``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", elem_type, list(shape))
    if elem_type == TensorProto.STRING:
        nodes, inits = [helper.make_node("Identity", ["x"], ["y"])], []
        y = helper.make_tensor_value_info("y", TensorProto.STRING, list(shape))
    else:
        nodes = [
            helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
            helper.make_node("ReduceMean", ["xf"], ["r"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["r", "w"], ["y"]),
        ]
        inits = [numpy_helper.from_array(np.linspace(-1, 1, 30, dtype=np.float32).reshape(3, 10), "w")]
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 10])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_data):
    """The user's files, made once: {name: path}."""
    from onnx import TensorProto

    from trtprune.deploy.export import onnx_from_torch
    from trtprune.sources.models import _load_user_factory

    d = tmp_path_factory.mktemp("api_models")
    (d / "models.py").write_text(MODELS)
    (d / "loaders.py").write_text(LOADERS)
    torch.manual_seed(0)
    torch.save(_load_user_factory(str(d / "models.py"), "make")().state_dict(), d / "net.pt")
    for name, elem in (("int64", TensorProto.INT64), ("f16", TensorProto.FLOAT16), ("str", TensorProto.STRING)):
        _onnx(d / f"{name}.onnx", elem)
    _onnx(d / "f32.onnx", TensorProto.FLOAT)
    onnx_from_torch(_load_user_factory(str(d / "models.py"), "tup")(), d / "two.onnx", (3, 32, 32))
    return {"dir": d, "data": tiny_data, "m": f"{d / 'models.py'}", "w": str(d / "net.pt")}


def _model(files, fn: str) -> str:
    return f"{files['m']}:{fn}"


# -- 1. models returning tuples and dicts, and a forward that raises ------------------------------------------------
@pytest.mark.parametrize("fn,names", [("tup", "(output0, output1)"), ("dic", "(logits, aux)")])
@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_tuple_outputs_scored_as_classes(capsys, files, fn, names, command):
    out = files["dir"] / f"ft-{fn}.pt"
    extra = ["--epochs", "1", "--train-limit", "32", "--eval-limit", "32", "-o", str(out)]
    extra = extra if command == "finetune" else []
    user_error(capsys, command, "--data", str(files["data"]), "--model", _model(files, fn), "--weights", files["w"],
               *extra, message=f"the model returns 2 tensors {names}, not one row of class scores per image",
               absent=[out], roots=[files["dir"]])  # fmt: skip


def test_tuple_outputs_export_and_a_one_tensor_tuple_is_scored(capsys, files):
    """Export is task-free: one ONNX output per tensor. A tuple holding one tensor is well-defined logits."""
    from tests.conftest import cli

    out = files["dir"] / "tup.onnx"
    code, _, err = cli(capsys, "export", "--model", _model(files, "tup"), "--weights", files["w"], "-o", str(out))
    assert code == 0 and out.is_file(), err
    args = ("--data", str(files["data"]), "--weights", files["w"], "--limit", "64", "--json")
    code, one, err = cli(capsys, "eval", "--model", _model(files, "one"), *args)
    assert code == 0, err
    code, plain, err = cli(capsys, "eval", "--model", _model(files, "make"), *args)
    assert code == 0, err
    import json

    assert json.loads(one)["top1"] == json.loads(plain)["top1"]


def test_onnx_with_two_outputs_on_eval(capsys, files):
    two = files["dir"] / "two.onnx"
    message = f"'{two}' gives 2 outputs (output0, output1), not one row of class scores per image"
    user_error(capsys, "eval", "--data", str(files["data"]), "--onnx", str(two), "--limit", "32", message=message)


@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_forward_raises(capsys, files, command):
    out = files["dir"] / "ft-boom.pt"
    extra = ["--epochs", "1", "--train-limit", "32", "-o", str(out)] if command == "finetune" else ["--limit", "32"]
    err = user_error(capsys, command, "--data", str(files["data"]), "--model", _model(files, "boom"),
                     "--weights", files["w"], *extra, message="the model fails on an input of shape (",
                     absent=[out])  # fmt: skip
    assert "RuntimeError: boom" in err and "run the model on a batch of your data yourself" in err


def test_api_forward_raises_and_tuples(files):
    from trtprune.sources.models import _load_user_factory

    x, y = synthetic_cifar10(32, 1)
    boom = _load_user_factory(files["m"], "boom")()
    api_error(trtprune.evaluate, boom, (x, y), message="the model fails on an input of shape (32, 3, 32, 32)")
    tup = _load_user_factory(files["m"], "tup")()
    api_error(trtprune.evaluate, tup, (x, y), message="the model returns 2 tensors (output0, output1)")


# -- 2. float16 and float64 models: the command line converts them (saying so), the API refuses them ----------------
@pytest.mark.parametrize("fn,dtype", [("half", "float16"), ("double", "float64")])
@pytest.mark.parametrize("command", ["groups", "eval", "export", "prune", "finetune"])
def test_half_and_double_models_run_in_float32(capsys, caplog, files, fn, dtype, command):
    from tests.conftest import cli
    from trtprune.sources import models

    models._converted.clear()
    out = files["dir"] / f"{command}-{fn}"
    extra = {
        "groups": [],
        "eval": ["--data", str(files["data"]), "--limit", "32"],
        "export": ["-o", f"{out}.onnx"],
        "prune": ["--data", str(files["data"]), "--ratio", "0.5", "-o", f"{out}.pt"],
        "finetune": ["--data", str(files["data"]), "--epochs", "1", "--train-limit", "32", "--eval-limit", "32",
                     "-o", f"{out}.pt"],
    }[command]  # fmt: skip
    code, _, err = cli(capsys, command, "--model", _model(files, fn), "--weights", files["w"], *extra)
    assert code == 0, err
    warned = [r.getMessage() for r in caplog.records if "converted to float32" in r.getMessage()]
    assert len(warned) == 1 and f"has {dtype} weights" in warned[0], caplog.text


@pytest.mark.parametrize("cast", ["half", "double"])
def test_api_refuses_half_and_double_models(files, cast):
    from trtprune.sources.models import _load_user_factory

    x, y = synthetic_cifar10(32, 1)
    model = getattr(_load_user_factory(files["m"], "make")(), cast)()
    dtype = {"half": "float16", "double": "float64"}[cast]
    message = f"model has {dtype} weights, not float32"
    api_error(trtprune.evaluate, model, (x, y), message=message)
    api_error(trtprune.finetune, model, (x, y), message=message)
    api_error(trtprune.groups, model, (3, 32, 32), message=message)
    api_error(trtprune.export, model, files["dir"] / "never.onnx", (3, 32, 32), message=message)
    api_error(trtprune.prune, model, {}, (3, 32, 32), message=message)
    assert not (files["dir"] / "never.onnx").exists()
    assert next(model.parameters()).dtype != torch.float32  # the caller's model is left as it is


# -- 3. ONNX inputs that are not float32 ------------------------------------------------------------------------------
def test_onnx_string_input(capsys, files):
    path = files["dir"] / "str.onnx"
    for argv in (["measure", str(path), "--rounds", "1"], ["eval", "--data", str(files["data"]), "--onnx", str(path)]):
        user_error(capsys, *argv, message=f"input 'x' of '{path}' is a tensor of strings")


def test_onnx_int64_input(capsys, files):
    """Timed with inputs of its own type; not evaluated on images (it does not take float images)."""
    from tests.conftest import cli

    path = files["dir"] / "int64.onnx"
    code, _, err = cli(capsys, "measure", str(path), "--rounds", "1")
    assert code == 0, err
    user_error(capsys, "eval", "--data", str(files["data"]), "--onnx", str(path), "--limit", "32",
               message=f"'{path}' takes input 'x' of type tensor(int64), not float images")  # fmt: skip


def test_onnx_float16_input_measured_and_evaluated(capsys, files):
    """A float16 input is timed with float16 inputs and fed the images in float16: top-1 as the float32 twin's."""
    import json

    from tests.conftest import cli

    half, full = files["dir"] / "f16.onnx", files["dir"] / "f32.onnx"
    code, _, err = cli(capsys, "measure", str(half), "--rounds", "1")
    assert code == 0, err
    results = []
    for path in (half, full):
        code, out, err = cli(capsys, "eval", "--data", str(files["data"]), "--onnx", str(path), "--limit", "64",
                             "--json")  # fmt: skip
        assert code == 0, err
        results.append(json.loads(out)["top1"])
    assert abs(results[0] - results[1]) <= 100 / 64 * 2, results


# -- 4. the API's arguments, checked at the door -----------------------------------------------------------------
def test_api_shape_as_text(files):
    from trtprune.sources.models import _load_user_factory

    model = _load_user_factory(files["m"], "make")()
    assert trtprune.groups(model, "3x32x32") == trtprune.groups(model, (3, 32, 32))
    api_error(trtprune.groups, model, "32,32", message="input_shape='32,32' is not (C, H, W)")
    api_error(trtprune.groups, model, "3x32", message="input_shape='3x32' is not (C, H, W)")


@pytest.mark.parametrize("module", [nn.Flatten(), nn.Identity()])
def test_api_evaluate_model_without_parameters(module):
    """No StopIteration looking for the device: a warning (3,072 "class scores") or a clear error (images)."""
    x, y = synthetic_cifar10(32, 1)
    if isinstance(module, nn.Identity):
        api_error(trtprune.evaluate, module, (x, y), message="the model gives outputs of shape [32, 3, 32, 32]")
    else:
        assert set(trtprune.evaluate(module, (x, y))) == {"top1"}


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


def test_api_arrays_in_the_wrong_layout_or_scale():
    x, y = synthetic_cifar10(32, 1)
    net = _net()
    xf = x.astype(np.float32)
    assert trtprune.evaluate(net, (xf, y)) == trtprune.evaluate(net, (x, y))  # float pixels 0..255: as uint8
    api_error(trtprune.evaluate, net, (xf / 255, y), message="x holds float32 values from 0 to 1: pixels scaled")
    api_error(trtprune.evaluate, net, (xf.transpose(0, 3, 1, 2), y),
              message="x of shape (32, 3, 32, 32) holds images channels first (N, C, H, W)")  # fmt: skip
    api_error(trtprune.evaluate, net, (x.transpose(0, 3, 1, 2), y), message="x of shape (32, 3, 32, 32) holds")
    api_error(trtprune.evaluate, net, ((xf - 128) / 64, y), message="x holds float32 values from -2 to")
    api_error(trtprune.evaluate, net, (x[0], y), message="x of shape (32, 32, 3) is not a batch of images")
    api_error(trtprune.finetune, net, (xf / 255, y), message="x holds float32 values from 0 to 1")


def test_api_labels():
    x, y = synthetic_cifar10(32, 1)
    net = _net()
    message = "y of shape (32, 10) holds a row per image (one-hot or scores), not one label per image"
    api_error(trtprune.evaluate, net, (x, np.eye(10)[y]), message=message)
    api_error(trtprune.evaluate, net, (x, y[:10]), message="y of shape (10,) does not hold one label per image of x")
    api_error(trtprune.evaluate, net, (x, y + 0.5), message="y holds float64 values that are not class labels")
    assert trtprune.evaluate(net, (torch.from_numpy(x), torch.from_numpy(y))) == trtprune.evaluate(net, (x, y))


def test_api_mean_and_std():
    x, y = synthetic_cifar10(32, 1)
    net = _net()
    api_error(trtprune.evaluate, net, (x, y), mean=(0.5, 0.5), std=(0.2, 0.2),
              message="normalisation mean (0.5, 0.5) / std (0.2, 0.2) does not fit 3-channel images")  # fmt: skip
    api_error(trtprune.evaluate, net, (x, y), mean="0.5", message="mean='0.5' is not one number per channel")
    api_error(trtprune.finetune, net, (x, y), std=(0.2, 0, 0.2), message="std=(0.2, 0, 0.2) is not one positive")
    assert trtprune.evaluate(net, (x, y), mean=(0.5,), std=(0.25,))  # one value for every channel


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"epochs": "1"}, "finetune(): epochs='1' is a str, not an integer"),
        ({"epochs": 0}, "finetune(): epochs=0 is out of range"),
        ({"batch_size": "32"}, "finetune(): batch_size='32' is a str, not an integer"),
        ({"batch_size": 32.0}, "finetune(): batch_size=32.0 is a float, not an integer"),
        ({"batch_size": 0}, "finetune(): batch_size=0 is out of range"),
        ({"lr": "0.1"}, "finetune(): lr='0.1' is a str, not a number"),
        ({"lr": -0.1}, "finetune(): lr=-0.1 is out of range"),
        ({"lr": float("nan")}, "finetune(): lr=nan is out of range"),
        ({"train_limit": True}, "finetune(): train_limit=True is a bool, not an integer"),
        ({"warmup": 3}, "finetune(): warmup=3 is out of range"),
        ({"compile": "yes"}, "finetune(): compile='yes' is a str, not True or False"),
        ({"momentun": 0.9}, "finetune() got unknown settings: momentun"),
    ],
)
def test_api_finetune_settings(settings, message):
    x, y = synthetic_cifar10(32, 1)
    api_error(trtprune.finetune, _net(), (x, y), message=message, **settings)


def test_api_finetune_numpy_numbers_are_numbers():
    x, y = synthetic_cifar10(32, 1)
    records = trtprune.finetune(_net(), (x, y), epochs=np.int64(1), batch_size=np.int64(16), lr=np.float32(0.01),
                                recalibrate=0)  # fmt: skip
    assert len(records) == 1


# -- 5. loaders: channels last, read once, empty --------------------------------------------------------------------
def _loader(x, y, batch_size=16):
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size)


def test_api_loader_of_nhwc_uint8_batches():
    x, y = synthetic_cifar10(32, 1)
    X, Y = torch.from_numpy(x), torch.from_numpy(y).long()
    nhwc, good = _loader(X, Y), _loader(X.permute(0, 3, 1, 2).float() / 255, Y)
    message = "the loader yields inputs of shape [16, 32, 32, 3]: images channels last (N, H, W, C)"
    api_error(trtprune.finetune, _net(), nhwc, good, message=message)
    api_error(trtprune.evaluate, _net(), nhwc, message=message)
    api_error(trtprune.finetune, _net(), _loader(X.float(), Y), good, message=message)


def test_loaders_file_of_nhwc_batches(capsys, files):
    out = files["dir"] / "ft-nhwc.pt"
    data = f"{files['dir'] / 'loaders.py'}:nhwc"
    for command, extra in (("finetune", ["--epochs", "1", "-o", str(out)]), ("eval", [])):
        user_error(capsys, command, "--data", data, "--model", _model(files, "make"), "--weights", files["w"], *extra,
                   message="the loader yields inputs of shape [16, 32, 32, 3]: images channels last",
                   absent=[out])  # fmt: skip


def test_loader_of_uint8_nchw_batches_warns(caplog):
    """Legitimate for a model that normalises its input itself; a warning, once."""
    x, y = synthetic_cifar10(32, 1)
    X, Y = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y).long()
    trtprune.evaluate(_net(), _loader(X, Y))
    assert "yields uint8 inputs: they reach the model as floats of the same values" in caplog.text


def test_empty_training_loader(capsys, files):
    x, y = synthetic_cifar10(32, 1)
    X, Y = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y).long()
    empty, good = _loader(X[:0], Y[:0]), _loader(X, Y)
    api_error(trtprune.finetune, _net(), empty, good, message="the training data holds no images")
    for importance in ("taylor", "fisher"):
        message = f"importance '{importance}' needs training data, and the training data holds no images"
        api_error(trtprune.scores, _net(), (3, 32, 32), importance=importance, data=empty, message=message)
    out = files["dir"] / "pruned-empty.pt"
    user_error(capsys, "prune", "--data", f"{files['dir'] / 'loaders.py'}:empty", "--model", _model(files, "make"),
               "--weights", files["w"], "--importance", "fisher", "--ratio", "0.5", "-o", str(out),
               message="importance 'fisher' needs training data, and the training data holds no images",
               absent=[out])  # fmt: skip


def test_loader_read_only_once():
    """A loader whose iter() does not start over: the second read is empty (was: StopIteration)."""
    x, y = synthetic_cifar10(16, 1)
    X, Y = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255, torch.from_numpy(y).long()
    good = _loader(X, Y)

    class Once:
        dataset = good.dataset

        def __init__(self):
            self.batches = iter(good)

        def __iter__(self):
            return self.batches

    api_error(trtprune.finetune, _net(), Once(), good, recalibrate=0, precision="fp32",
              message="the loader Once gave no batches when read again")  # fmt: skip
