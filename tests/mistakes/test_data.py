"""Issue 30, data: images, labels and normalisation that do not fit the model's input shape or head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import cli
from tests.mistakes.common import api_error, user_error
from trtprune.sources.models import model_spec

W = "weights/resnet20-random.th"

MODELS = """
import torch.nn as nn


def gray():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 10))


def fixed64():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64 * 64, 10))


def two():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 2))
"""

LOADERS = """
import torch


def fifty():
    ds = torch.utils.data.TensorDataset(torch.randn(64, 3, 32, 32), torch.arange(64) % 50)
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    return loader, loader
"""


def _image(path: Path, size, mode="RGB", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    a = rng.integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, mode).save(path)


def _folder(root: Path, size, classes, splits=("train", "val"), mode="RGB", n=2, ext="png") -> Path:
    for split in splits:
        for c in classes:
            for i in range(n):
                _image(root / split / c / f"{i}.{ext}", size, mode, seed=i)
    return root


@pytest.fixture(scope="module")
def d(tmp_path_factory, tiny_data):
    """The bad inputs of this file, made once."""
    from trtprune.deploy.export import onnx_from_torch
    from trtprune.sources.models import build_model
    from trtprune.sources.userfile import user_function

    root = tmp_path_factory.mktemp("data_mistakes")
    f = {"data": tiny_data, "w": tiny_data / W, "dir": root}
    (root / "models.py").write_text(MODELS)
    for name in ("gray", "fixed64", "two"):
        torch.manual_seed(0)
        torch.save(user_function(str(root / "models.py"), name, "u", "f", "g")().state_dict(), root / f"{name}.pt")
    (root / "loaders.py").write_text(LOADERS)
    _folder(root / "photos", (300, 200), ["cat", "dog"])  # CIFAR-10 names, not all ten
    _folder(root / "gray", (32, 32), ["a", "b"], mode="L")
    _folder(root / "corrupt", (32, 32), ["a", "b"])
    (root / "corrupt" / "train" / "a" / "bad.png").write_bytes(np.random.default_rng(0).bytes(500))
    (root / "corrupt" / "val" / "a" / "bad.png").write_bytes(np.random.default_rng(1).bytes(500))
    _folder(root / "junk", (32, 32), ["a", "b"], n=0)
    for split in ("train", "val"):
        (root / "junk" / split / "a").mkdir(parents=True)
        (root / "junk" / split / "a" / "x.png").write_bytes(b"not a png" * 30)
    _folder(root / "noval", (32, 32), ["a", "b"], splits=("train",))
    for split in ("train", "val"):
        for i in range(2):
            _image(root / "flat" / split / f"{i}.png", (32, 32))
    for i in range(4):
        _image(root / "webp" / f"{i}.webp", (32, 32), seed=i)
    _folder(root / "calib32", (32, 32), ["a"], splits=("c",), n=2)
    (root / "d50" / "cifar10").mkdir(parents=True)
    for split in ("train", "test"):
        x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
        np.savez(root / "d50" / "cifar10" / f"cifar10_{split}.npz", x=x, y=(np.arange(64) % 50).astype(np.uint8))
    torch.manual_seed(0)
    net = build_model("resnet20")
    onnx_from_torch(net, root / "r32.onnx", (3, 32, 32), 1)
    onnx_from_torch(net, root / "r64.onnx", (3, 64, 64), 1)
    return f


def _argv(d, tmp_path, *argv):
    fill = {k: str(v) for k, v in d.items()} | {"out": str(tmp_path / "out")}
    return [a.format(**fill) for a in argv]


R20 = ["--model", "resnet20", "--weights", "{w}"]
M = "{dir}/models.py"


# -- 1, 8: images and the model's input shape -------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv",
    [
        ["eval", *R20, "--data", "{data}", "--input-shape", "3x64x64"],
        ["finetune", *R20, "--data", "{data}", "--input-shape", "3x64x64", "-o", "{out}/f.pt"],
        ["prune", *R20, "--data", "{data}", "--input-shape", "3x64x64", "--importance", "taylor", "-o", "{out}/p.pt"],
    ],
    ids=["eval", "finetune", "prune-taylor"],
)
def test_cifar_arrays_at_another_size_than_the_input_shape_are_refused(d, tmp_path, capsys, argv):
    argv = _argv(d, tmp_path, *argv)
    err = user_error(
        capsys, *argv, message="the CIFAR-10 ", absent=[tmp_path / "out/f.pt", tmp_path / "out/p.pt"], roots=[tmp_path]
    )
    assert "are 3x32x32 (C x H x W), but the model takes 3x64x64" in err and "--input-shape 3x32x32" in err


def test_run_checks_the_data_against_the_input_shape_before_its_first_stage(d, tmp_path, capsys):
    argv = _argv(d, tmp_path, "run", *R20, "--data", "{data}", "--input-shape", "3x16x16", "--budget", "none",
                 "--runs-dir", "{out}/runs", "--engines-dir", "{out}/engines")  # fmt: skip
    err = user_error(
        capsys, *argv, message="the CIFAR-10 test images", absent=[tmp_path / "out/runs", tmp_path / "out/engines"]
    )
    assert "but the model takes 3x16x16" in err and "--input-shape 3x32x32" in err


def test_a_folder_of_photos_is_resized_to_the_input_shape_and_says_so_once(d, tmp_path, capsys):
    code, out, err = cli(capsys, *_argv(d, tmp_path, "finetune", *R20, "--data", "{dir}/photos", "--epochs", "1",
                                        "--batch-size", "2", "-o", "{out}/f.pt"))  # fmt: skip
    assert code == 0, err
    said = [line for line in err.splitlines() if "are 300x200 colour (the first one), the model takes 3x32x32" in line]
    assert len(said) == 1 and "resized to 32x32 (bilinear" in said[0], err


# -- 2: normalisation in 0..255 units ---------------------------------------------------------------------------
def test_mean_and_std_in_pixel_units_are_refused_with_the_values_divided(d, tmp_path, capsys):
    argv = _argv(d, tmp_path, "eval", *R20, "--data", "{data}", "--mean", "123.675,116.28,103.53",
                 "--std", "58.395,57.12,57.375")  # fmt: skip
    err = user_error(capsys, *argv, message="normalisation mean 123.675, 116.28, 103.53 / std 58.395")
    assert "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225" in err
    api_error(model_spec, "resnet20", mean=(123.675, 116.28, 103.53), message="normalisation mean 123.675")


def test_a_std_above_1_alone_is_a_warning(caplog):
    model_spec("resnet20", std="2,2,2")
    assert "normalisation std 2, 2, 2 is above 1" in caplog.text


# -- 3: labels beyond the head ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["eval", "finetune"])
def test_a_loaders_labels_beyond_the_head_are_one_message(d, tmp_path, capsys, command):
    extra = ["--epochs", "1", "-o", "{out}/f.pt"] if command == "finetune" else []
    argv = _argv(d, tmp_path, command, *R20, "--data", "{dir}/loaders.py:fifty", *extra)
    err = user_error(capsys, *argv, message="a batch ", absent=[tmp_path / "out/f.pt"], roots=[tmp_path])
    assert "has labels 0..15, but the model gives 10 class scores per image" in err


def test_cifar_files_with_labels_beyond_9_say_how_to_give_other_classes(d, tmp_path, capsys):
    err = user_error(capsys, *_argv(d, tmp_path, "eval", *R20, "--data", "{dir}/d50"), message="labels in '")
    assert "range 0..49" in err and "image folder (train/<class>/*.png, val/<class>/*.png)" in err


# -- 4: channels and heads fixed to another size ----------------------------------------------------------------
GRAY = ["--model", f"{M}:gray", "--weights", "{dir}/gray.pt", "--input-shape", "1x32x32", "--mean", "0.5",
        "--std", "0.25"]  # fmt: skip


def test_a_1_channel_model_on_cifar_is_refused(d, tmp_path, capsys):
    err = user_error(capsys, *_argv(d, tmp_path, "eval", *GRAY, "--data", "{data}"), message="the CIFAR-10 test")
    assert "are 3x32x32 (C x H x W), but the model takes 1x32x32" in err


@pytest.mark.parametrize("folder,said", [("gray", False), ("photos", True)])
def test_a_1_channel_model_reads_an_image_folder_in_grey(d, tmp_path, capsys, folder, said):
    code, out, err = cli(capsys, *_argv(d, tmp_path, "eval", *GRAY, "--data", f"{{dir}}/{folder}"))
    assert code == 0 and "Traceback" not in err and "top-1" in out, err
    assert ("converted to grey" in err) == said, err


@pytest.mark.parametrize("data", ["{data}", "{dir}/gray"])
def test_a_head_fixed_to_another_size_is_one_message(d, tmp_path, capsys, data):
    argv = _argv(d, tmp_path, "eval", "--model", f"{M}:fixed64", "--weights", "{dir}/fixed64.pt", "--data", data)
    err = user_error(capsys, *argv, message="the model fails on an input of shape (")
    assert "mat1 and mat2 shapes cannot be multiplied" in err and "--input-shape" in err


def test_finetune_with_a_head_fixed_to_another_size_is_one_message(d, tmp_path, capsys):
    argv = _argv(d, tmp_path, "finetune", "--model", f"{M}:fixed64", "--weights", "{dir}/fixed64.pt", "--data",
                 "{data}", "-o", "{out}/f.pt")  # fmt: skip
    user_error(capsys, *argv, message="the model fails on an input of shape (", absent=[tmp_path / "out/f.pt"])


# -- 5: damaged image files -------------------------------------------------------------------------------------
def test_an_unreadable_image_is_skipped_with_a_warning_naming_it(d, tmp_path, capsys):
    code, out, err = cli(capsys, *_argv(d, tmp_path, "eval", *R20, "--data", "{dir}/corrupt"))
    assert code == 0 and "Traceback" not in err, err
    bad = str(d["dir"] / "corrupt" / "val" / "a" / "bad.png")
    assert [line for line in err.splitlines() if f"skipped an unreadable image '{bad}'" in line], err
    assert "top-1" in out


def test_a_folder_of_no_readable_image_is_one_message(d, tmp_path, capsys):
    user_error(capsys, *_argv(d, tmp_path, "eval", *R20, "--data", "{dir}/junk"), message="no image of '")


# -- 6: image folders: their classes and their layout -----------------------------------------------------------
def test_cifar_class_names_of_a_smaller_folder_say_why_there_are_10_classes(d, tmp_path, capsys):
    argv = _argv(d, tmp_path, "eval", "--model", f"{M}:two", "--weights", "{dir}/two.pt", "--data", "{dir}/photos")
    err = user_error(capsys, *argv, message="the model gives 2 class scores per image, but the dataset has 10 classes")
    assert "2 class folders (cat, dog), named as CIFAR-10's classes" in err and "rename the class folders" in err


@pytest.mark.parametrize(
    "folder,found",
    [("noval", "it has train/ with 2 class folder(s); no val/"), ("flat", "train/ with 0 class folder(s) and 2 loose")],
)
def test_a_partial_image_folder_is_described_not_taken_for_missing_cifar(d, tmp_path, capsys, folder, found):
    err = user_error(capsys, *_argv(d, tmp_path, "eval", *R20, "--data", f"{{dir}}/{folder}"), message="'")
    assert "is not a whole image folder" in err and found in err and "train/<class>/<image>" in err
    assert "CIFAR-10" not in err


# -- 7: calibration images --------------------------------------------------------------------------------------
def test_calibration_takes_the_image_suffixes_data_folders_take(d, tmp_path, capsys):
    code, out, err = cli(capsys, *_argv(d, tmp_path, "quantize", "{dir}/r32.onnx", "--model", "resnet20", "--calib",
                                        "{dir}/webp", "-o", "{out}/q.onnx"))  # fmt: skip
    assert code == 0 and "calibration on 4 images" in out, err


def test_calibration_of_a_64px_export_with_32px_images_names_input_shape(d, tmp_path, capsys):
    q = tmp_path / "out" / "q.onnx"
    argv = _argv(d, tmp_path, "quantize", "{dir}/r64.onnx", "--model", "resnet20", "--calib", "{dir}/calib32",
                 "-o", "{out}/q.onnx")  # fmt: skip
    err = user_error(capsys, *argv, message="calibration image '", absent=[q], roots=[tmp_path])
    assert "is 32x32 (WxH), not 64x64" in err and "--input-shape 3x32x32" in err
    argv = _argv(d, tmp_path, "quantize", "{dir}/r64.onnx", "--model", "resnet20", "--data", "{data}",
                 "-o", "{out}/q.onnx")  # fmt: skip
    err = user_error(capsys, *argv, message="the CIFAR-10 train images", absent=[q], roots=[tmp_path])
    assert "but the model takes 3x64x64" in err and "--input-shape 3x32x32" in err
    argv = _argv(d, tmp_path, "quantize", "{dir}/r64.onnx", "--model", "resnet20", "--input-shape", "3x32x32",
                 "--data", "{data}", "-o", "{out}/q.onnx")  # fmt: skip
    user_error(capsys, *argv, message="--input-shape 3x32x32 does not match '", absent=[q], roots=[tmp_path])
