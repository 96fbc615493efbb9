"""Issue 30, data (second pass): image bit depths, normalisation, loader labels and lengths, input shapes, npz files."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import cli
from tests.mistakes.common import api_error, user_error
from trtprune.sources.models import model_spec

W = "weights/resnet20-random.th"
R20 = ["--model", "resnet20", "--weights", "{w}"]

LOADERS = """
import torch

N = 64


def _xy():
    g = torch.Generator().manual_seed(0)
    return torch.randn(N, 3, 32, 32, generator=g), torch.arange(N) % 10


class Batches:  # re-iterable, with a length in batches, but no .dataset
    def __init__(self, labels):
        self.labels = labels

    def __iter__(self):
        x, y = _xy()
        for i in range(0, N, 16):
            yield x[i : i + 16], self.labels(y[i : i + 16])

    def __len__(self):
        return N // 16


def _pair(labels):
    return Batches(labels), Batches(labels)


def onehot():
    return _pair(lambda y: torch.nn.functional.one_hot(y, 10).float())


def floats():
    return _pair(lambda y: y.float())


def column():
    return _pair(lambda y: y[:, None])


def fractions():
    return _pair(lambda y: y.float() + 0.5)


def plain():
    return _pair(lambda y: y)


def trainonly():
    return Batches(lambda y: y), None


def valonly():
    return None, Batches(lambda y: y)
"""

MODELS = """
import torch.nn as nn


def two():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2))
"""


def _png(path: Path, a: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)


def _npz(root: Path, **arrays) -> Path:
    base = {"x": np.zeros((8, 32, 32, 3), np.uint8), "y": (np.arange(8) % 10).astype(np.uint8)}
    (root / "cifar10").mkdir(parents=True)
    for split in ("train", "test"):
        np.savez(root / "cifar10" / f"cifar10_{split}.npz", **(base | arrays))
    return root


@pytest.fixture(scope="module")
def d(tmp_path_factory, tiny_data):
    """The inputs of this file, made once."""
    root = tmp_path_factory.mktemp("data_more")
    f = {"data": tiny_data, "w": tiny_data / W, "dir": root}
    (root / "loaders.py").write_text(LOADERS)
    (root / "models.py").write_text(MODELS)
    from trtprune.sources.userfile import user_function

    torch.manual_seed(0)
    torch.save(user_function(str(root / "models.py"), "two", "u", "f", "g")().state_dict(), root / "two.pt")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            for i in range(2):
                a16 = rng.integers(0, 65536, (32, 32), dtype=np.uint16)
                _png(root / "g16" / split / c / f"{i}.png", a16)  # PIL mode I;16
                _png(root / "g8" / split / c / f"{i}.png", (a16 >> 8).astype(np.uint8))  # the same, 8 bits
        for c in ("p", "q", "r"):
            _png(root / "three" / split / c / "0.png", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    x = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    npz = {
        "yfloat": {"y": (np.arange(8) % 10).astype(np.float32)},
        "yfrac": {"y": (np.arange(8) % 10).astype(np.float32) + 0.5},
        "ycolumn": {"y": (np.arange(8) % 10).astype(np.uint8)[:, None]},
        "yonehot": {"y": np.eye(10, dtype=np.uint8)[np.arange(8)]},
        "xfloat01": {"x": x.astype(np.float32) / 255},
        "xfloat255": {"x": x.astype(np.float32)},
        "xnchw": {"x": x.transpose(0, 3, 1, 2)},
        "xgrey": {"x": x[..., 0]},
        "x16": {"x": x.astype(np.uint16) * 257},
    }
    for name, arrays in npz.items():
        _npz(root / f"npz_{name}", **arrays)
    return f


def _argv(d, tmp_path, *argv):
    fill = {k: str(v) for k, v in d.items()} | {"out": str(tmp_path / "out")}
    return [a.format(**fill) for a in argv]


def _batches(images):
    return torch.cat([xb for xb, _ in images.batches(4, (0.0,) * 3, (1.0,) * 3)])


# -- 1: 16-bit, 32-bit and float images are scaled to 8 bits --------------------------------------------------------
def test_16_bit_grey_images_are_read_as_their_8_bit_values_and_said_once(d, caplog):
    from trtprune.sources.images import open_images

    caplog.set_level(logging.INFO)
    x16 = _batches(open_images(d["dir"] / "g16", "test"))
    x8 = _batches(open_images(d["dir"] / "g8", "test"))
    assert x16.std() > 0.1 and torch.equal(x16, x8)  # not every pixel white
    said = [r.getMessage() for r in caplog.records if "scaled from 16 bits to 8" in r.getMessage()]
    assert len(said) == 1 and "are 32x32 16-bit grey (the first one)" in said[0], caplog.text


def test_calibration_reads_16_bit_images_as_their_8_bit_values(d, caplog):
    from trtprune.deploy.quantize import _read_image_files

    caplog.set_level(logging.INFO)
    files16 = sorted((d["dir"] / "g16" / "val" / "a").glob("*.png"))
    files8 = sorted((d["dir"] / "g8" / "val" / "a").glob("*.png"))
    spec = model_spec("resnet20")
    a16, a8 = _read_image_files(files16, spec), _read_image_files(files8, spec)
    assert a16.std() > 10 and np.array_equal(a16, a8)
    assert caplog.text.count("scaled from 16 bits to 8") == 1, caplog.text


@pytest.mark.parametrize(
    "a,want",
    [
        (np.array([[0, 256, 65535]], np.int32), [0, 1, 255]),  # mode I holding 16-bit values
        (np.array([[0, 2**24, 2**31 - 1]], np.int32), [0, 1, 127]),  # mode I holding 32-bit values
        (np.array([[0.0, 0.5, 1.0]], np.float32), [0, 128, 255]),  # mode F in 0..1
        (np.array([[-3.0, 100.0, 300.0]], np.float32), [0, 100, 255]),  # mode F in pixel units, clipped
    ],
    ids=["I-16bit", "I-32bit", "F-0..1", "F-0..255"],
)
def test_32_bit_and_float_images_are_scaled_to_8_bits(a, want):
    from PIL import Image

    from trtprune.sources.images import eight_bit

    im = Image.fromarray(a)
    assert np.asarray(eight_bit(im, 1))[0].tolist() == want


# -- 2: std of 0, below 0, or implausibly small -----------------------------------------------------------------------
@pytest.mark.parametrize("std", ["0", "0.229,0,0.225", "-0.2"])
def test_a_std_of_0_or_below_is_refused_as_such(d, tmp_path, capsys, std):
    err = user_error(capsys, *_argv(d, tmp_path, "eval", *R20, "--data", "{data}", "--std", std), message="norm")
    assert "std must be above 0" in err and "does not fit" not in err
    api_error(model_spec, "resnet20", std=(0.0,), message="normalisation std 0: std must be above 0")


@pytest.mark.parametrize("std", ["0.0229,0.0224,0.0225", "1e-9", "0.05"])
def test_an_implausibly_small_std_is_a_warning_once(caplog, std):
    model_spec("resnet20", std=std)
    model_spec("resnet20", std=std)
    assert caplog.text.count("is below 0.06") == 1, caplog.text
    assert "misplaced decimal point" in caplog.text


@pytest.mark.parametrize("std", ["0.229,0.224,0.225", "0.2023,0.1994,0.2010", "0.5", "0.3081", "0.1"])
def test_usual_stds_are_not_warned(caplog, std):
    model_spec("resnet20", std=std)
    assert "is below" not in caplog.text


# -- 3: a loader's classification targets --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "fn,message,fix",
    [
        ("onehot", "has labels of shape (", "y.argmax(1)"),
        ("floats", "has float32 labels (whole numbers)", "y.long()"),
        ("column", "has labels of shape (", "y.reshape(-1)"),
        ("fractions", "has float32 labels", "class index (0..9) as an integer tensor"),
    ],
)
@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_a_loaders_targets_that_are_not_class_indices_are_refused_on_the_first_batch(
    d, tmp_path, capsys, command, fn, message, fix
):
    extra = ["--epochs", "1", "--batch-size", "16", "-o", "{out}/f.pt"] if command == "finetune" else []
    argv = _argv(d, tmp_path, command, *R20, "--data", f"{{dir}}/loaders.py:{fn}", *extra)
    err = user_error(capsys, *argv, message="a batch of 'Batches' ", absent=[tmp_path / "out/f.pt"], roots=[tmp_path])
    assert message in err and fix in err, err
    assert "epoch" not in err  # before any training


# -- 4: CIFAR arrays at another shape: the fix line names the shape --------------------------------------------------
def test_cifar_arrays_at_another_shape_name_it_in_the_fix_line(d, tmp_path, capsys):
    argv = _argv(d, tmp_path, "eval", *R20, "--data", "{data}", "--input-shape", "3x100x100")
    err = user_error(capsys, *argv, message="the CIFAR-10 test images")
    fix = [line for line in err.splitlines() if line.strip().startswith("fix:")]
    assert len(fix) == 1 and "for 3x100x100 give an image folder" in fix[0] and "{" not in fix[0], err


# -- 5: input shapes in H x W x C order, or with other channels than the model's first convolution --------------------
@pytest.mark.parametrize("shape,fixed", [("32x32x3", "3x32x32"), ("224x224x1", "1x224x224"), ("64x48x4", "4x64x48")])
def test_an_input_shape_in_h_w_c_order_says_to_give_c_h_w(d, tmp_path, capsys, shape, fixed):
    argv = _argv(d, tmp_path, "eval", *R20, "--data", "{data}", "--input-shape", shape)
    err = user_error(capsys, *argv, message=f"input shape {shape} is in H x W x C order")
    assert f"--input-shape {fixed}" in err and "normalisation" not in err


@pytest.mark.parametrize(
    "model,name,conv",
    [(R20, "resnet20", "conv1"), (["--model", "{dir}/models.py:two", "--weights", "{dir}/two.pt"], "models.two", "0")],
)
def test_an_input_shape_of_other_channels_than_the_models_first_conv_names_it(d, tmp_path, capsys, model, name, conv):
    argv = _argv(d, tmp_path, "eval", *model, "--data", "{data}", "--input-shape", "1x32x32")
    err = user_error(capsys, *argv, message=f"input shape 1x32x32 gives 1-channel images, but model '{name}' takes 3")
    assert f"first convolution ({conv}) has in_channels=3" in err and "--input-shape 3x32x32" in err


# -- 6: npz files in CIFAR-10's layout: each departure gets its fix ---------------------------------------------------
@pytest.mark.parametrize(
    "name,fix",
    [
        ("yfloat", "store the labels as integers (np.uint8): y.astype(np.uint8)"),
        ("yfrac", "store each image's class index 0..9, as integers (np.uint8)"),
        ("ycolumn", "store y.ravel()"),
        ("yonehot", "store y.argmax(1)"),
        ("xfloat01", "store (x * 255).round().astype(np.uint8)"),
        ("xfloat255", "store x.round().clip(0, 255).astype(np.uint8)"),
        ("xnchw", "store x.transpose(0, 2, 3, 1)"),
        ("xgrey", "store grey images as RGB: np.repeat("),
        ("x16", "store (x >> 8).astype(np.uint8)"),
    ],
)
def test_an_npz_file_not_in_cifar_10s_form_says_how_to_store_it(d, tmp_path, capsys, name, fix):
    err = user_error(capsys, *_argv(d, tmp_path, "eval", *R20, "--data", f"{{dir}}/npz_{name}"), message="")
    assert f"  fix: {fix}" in err and "for a dataset of other classes" not in err, err


# -- 7: more class scores than classes --------------------------------------------------------------------------------
def test_more_class_scores_than_classes_warns_what_the_accuracy_means(d, tmp_path, capsys, caplog, monkeypatch):
    monkeypatch.setattr("trtprune.metrics._warned", set())  # said once per process: not by an earlier test
    code, out, err = cli(capsys, *_argv(d, tmp_path, "eval", *R20, "--data", "{dir}/three"))
    assert code == 0 and "top-1" in out, err
    said = [r.getMessage() for r in caplog.records if "gives 10 class scores per image" in r.getMessage()]
    assert len(said) == 1 and "meaningless" not in said[0], caplog.text
    assert "its labels 0..2 are read as the model's classes 0..2" in said[0]
    assert "a prediction of one of the model's other 7 classes counts as wrong" in said[0]


# -- 8: data that is not a sized loader ------------------------------------------------------------------------------
def _normalised(x: np.ndarray) -> torch.Tensor:
    return (torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255 - 0.45) / 0.225


def _arrays():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), (np.arange(32) % 10).astype(np.int64)


def _generator():
    x, y = _arrays()
    for i in range(0, 32, 8):
        yield _normalised(x[i : i + 8]), torch.from_numpy(y[i : i + 8])


def test_the_api_evaluates_a_generator_read_once():
    import trtprune
    from trtprune.sources.models import build_model

    result = trtprune.evaluate(build_model("resnet20"), _generator())
    assert 0 <= result["top1"] <= 100


def test_the_api_says_a_list_of_arrays_is_not_a_tuple():
    import trtprune
    from trtprune.sources.models import build_model

    x, y = _arrays()
    api_error(trtprune.evaluate, build_model("resnet20"), [x, y], message="the data is a list of two arrays")
    err = api_error(trtprune.finetune, build_model("resnet20"), [x, y], message="the data is a list of two arrays")
    assert "give a tuple (x, y) of arrays" in str(err)


def test_the_api_says_a_generator_cannot_be_fine_tuned_on():
    import trtprune
    from trtprune.sources.models import build_model

    err = api_error(trtprune.finetune, build_model("resnet20"), _generator(),
                    message="the data is an iterable without a length (a generator)")  # fmt: skip
    assert "give a DataLoader, a list of (x, y) batches" in str(err)


@pytest.mark.parametrize("fn,split", [("trainonly", "val"), ("valonly", "train")])
def test_loaders_returning_none_for_a_split_say_so(d, tmp_path, capsys, fn, split):
    argv = _argv(d, tmp_path, "finetune", *R20, "--data", f"{{dir}}/loaders.py:{fn}", "--epochs", "1",
                 "-o", "{out}/f.pt")  # fmt: skip
    user_error(capsys, *argv, message=f"the loaders function '{d['dir']}/loaders.py:{fn}' returned None for {split}",
               absent=[tmp_path / "out/f.pt"])  # fmt: skip


@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_a_re_iterable_loader_without_a_dataset_is_counted_as_read(d, tmp_path, capsys, command):
    extra = ["--epochs", "1", "--batch-size", "16", "-o", "{out}/f.pt"] if command == "finetune" else []
    code, out, err = cli(capsys, *_argv(d, tmp_path, command, *R20, "--data", "{dir}/loaders.py:plain", *extra))
    assert code == 0 and "Traceback" not in err, err
    if command == "eval":
        assert "on 64 test images" in out, out
    else:
        assert (tmp_path / "out" / "f.pt").exists()
