"""Issue 30, outputs, names and stage files: a command that would write over its own input, a device named like a
path, a run's damaged or missing files, a file given twice, a folder or a bare .py where a file or file.py:name
is expected."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.mistakes.common import user_error

WEIGHTS = "weights/resnet20-random.th"
FAST = ["--budget", "none", "--round-to", "4", "--epochs", "1", "--batch-size", "8", "--train-limit", "8"]
FAST += ["--eval-limit", "8", "--precision", "fp32", "--no-channels-last", "--importance", "l1", "--recalibrate", "0"]
FAST += ["--distill", "0"]


def digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    import torch

    from trtprune.deploy.export import onnx_from_torch

    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    onnx_from_torch(torch.nn.Conv2d(3, 4, 3), path, (3, 8, 8))
    return path


@pytest.fixture
def files(tiny_data, small_onnx, tmp_path, monkeypatch) -> Path:
    """In the current folder: w.th (dense ResNet-20 weights), m.onnx, a.npy (calibration images), p.json (a plan),
    l.sqlite (a latency table), f.py (a factory), a folder dir/ and link.th -> w.th."""
    import numpy as np

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(tiny_data / WEIGHTS, "w.th")
    shutil.copyfile(small_onnx, "m.onnx")
    np.save("a.npy", np.zeros((4, 32, 32, 3), np.uint8))
    Path("p.json").write_text('{"format": "trtprune.plan/1"}')
    Path("l.sqlite").write_bytes(b"")
    Path("f.py").write_text("from trtprune.sources.models import build_model\n\ndef make():\n"
                            "    return build_model('resnet20')\n")  # fmt: skip
    Path("dir").mkdir()
    Path("link.th").symlink_to("w.th")
    return tmp_path


R20 = ["--model", "resnet20", "--weights", "w.th"]

# (argv, the first words of the message): every command whose output is one of its inputs (through './', '..' or
# a link too) is refused before any work, and its input is left as it was
OVERWRITES = [
    (["prune", *R20, "--importance", "l1", "-o", "w.th"], "-o 'w.th' is the same file as --weights 'w.th'"),
    (["prune", *R20, "--importance", "l1", "-o", "./dir/../w.th"], "-o './dir/../w.th' is the same file as --weights"),
    (["prune", *R20, "--importance", "l1", "-o", "link.th"], "-o 'link.th' is the same file as --weights 'w.th'"),
    (["prune", *R20, "--plan", "p.json", "-o", "p.json"], "-o 'p.json' is the same file as --plan 'p.json'"),
    (["prune", "--model", "resnet20", "--weights", "w.plan.json", "-o", "w.pt"],
     "the plan written beside -o 'w.plan.json' is the same file as --weights"),
    (["finetune", *R20, "--teacher", "m.onnx", "--distill", "0.5", "-o", "m.onnx"],
     "-o 'm.onnx' is the same file as --teacher 'm.onnx'"),
    (["finetune", *R20, "-o", "w.th", "--resume"], "-o 'w.th' is the same file as --weights 'w.th'"),
    (["export", *R20, "-o", "w.th"], "-o 'w.th' is the same file as --weights 'w.th'"),
    (["quantize", "m.onnx", "--calib", "a.npy", "-o", "m.onnx"], "-o 'm.onnx' is the same file as input 'm.onnx'"),
    (["quantize", "m.onnx", "--calib", "a.npy", "-o", "a.npy"], "-o 'a.npy' is the same file as --calib 'a.npy'"),
    (["build", *R20, "-o", "w.th"], "-o 'w.th' is the same file as --weights 'w.th'"),
    (["measure", "m.onnx", "--json-file", "m.onnx"], "--json-file 'm.onnx' is the same file as input 'm.onnx'"),
    (["search", *R20, "--budget", "0.5x", "--lut", "l.sqlite", "-o", "l.sqlite"],
     "-o 'l.sqlite' is the same file as --lut 'l.sqlite'"),
    (["search", *R20, "--budget", "0.5x", "-o", "w.th"], "-o 'w.th' is the same file as --weights 'w.th'"),
    (["export", "--model", "f.py:make", "--weights", "w.th", "-o", "f.py"],
     "-o 'f.py' is the same file as --model's file 'f.py'"),
    (["eval", "--onnx", "m.onnx", "--log-file", "m.onnx"], "--log-file 'm.onnx' is the same file as --onnx 'm.onnx'"),
    (["run", "--model", "resnet20", "--weights", "runs/x/model.pt", "--name", "x", "--fresh"],
     "the run's model.pt 'runs/x/model.pt' is the same file as --weights"),
    (["run", *R20, "--name", "x", "--lut", "engines/x.onnx"],
     "the run's engine 'engines/x.onnx' is the same file as --lut"),
]  # fmt: skip


@pytest.mark.parametrize("argv, message", OVERWRITES, ids=[f"{a[0]}-{i}" for i, (a, _) in enumerate(OVERWRITES)])
def test_an_output_that_is_an_input_is_refused_before_any_work(files, capsys, tiny_data, argv, message):
    Path("w.plan.json").write_bytes(Path("w.th").read_bytes())
    for name in ("runs/x/model.pt", "engines/x.onnx"):
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile("w.th", name)
    before = {p: digest(p) for p in files.rglob("*") if p.is_file()}
    err = user_error(capsys, *argv, "--data", tiny_data, message=message, roots=[files])
    assert "fix: give" in err and "another path" in err
    assert {p: digest(p) for p in files.rglob("*") if p.is_file()} == before  # nothing read was written over


@pytest.mark.parametrize("name", ["a/../../../x", "..", "a\\b", "../x"])
def test_a_device_named_like_a_path_is_refused_when_its_file_is_read(files, capsys, monkeypatch, name):
    Path("devices.toml").write_text(f"[devices.'{name}']\nbackend = 'ort'\n")  # literal: a\b stays
    monkeypatch.setenv("TRTPRUNE_DEVICES", str(files / "devices.toml"))
    deep = files / "a" / "b" / "c"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    message = f"device '{name}' in '{files / 'devices.toml'}' is not a plain name"
    for argv in (["build", "--model", "resnet20", "--weights", files / "w.th", "--device", name],
                 ["run", "--model", "resnet20", "--weights", files / "w.th", "--device", name], ["list"]):  # fmt: skip
        user_error(capsys, *argv, message=message, absent=[files / "x.onnx", files / "x", files / "engines"])
    assert sorted(p.name for p in deep.iterdir()) == []  # no runs/ nor engines/ made here either


# -- a run's files: damaged ones are made again on resume and named by report; a missing one is named first -----
def fake_device(mp: pytest.MonkeyPatch) -> None:
    """The tests' deterministic latency formula as device "fake-test": reports in a moment, not seconds of timing."""
    from trtprune.latency import devices

    mp.setitem(devices.DEVICES, "fake-test", devices.Device("fake-test", "fake"))


def run_argv(tiny_data, work: Path) -> list:
    return ["run", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--data", tiny_data, *FAST,
            "--device", "fake-test", "--runs-dir", work / "runs", "--engines-dir", work / "engines"]  # fmt: skip


@pytest.fixture(scope="module")
def finished(tiny_data, tmp_path_factory) -> Path:
    from trtprune.cli import main

    work = tmp_path_factory.mktemp("finished")
    with pytest.MonkeyPatch.context() as mp:
        fake_device(mp)
        assert main([str(a) for a in run_argv(tiny_data, work)]) == 0
    return work


@pytest.fixture
def copy(finished, tmp_path, monkeypatch) -> Path:
    """A copy of the finished run (and its engine) to damage; the fake device defined."""
    fake_device(monkeypatch)
    shutil.copytree(finished, tmp_path / "w")
    return tmp_path / "w"


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("name", ["pruned.onnx", "model.pt", "plan.json", "baseline.onnx", "finetune.pt"])
def test_a_resumed_run_makes_a_damaged_stage_file_again(copy, capsys, caplog, tiny_data, name):
    from trtprune.deploy.export import read_onnx

    run = copy / "runs" / "resnet20-fake-test"
    cut(run / name)
    if name == "finetune.pt":  # the per-epoch checkpoint, read when fine-tuning resumes (stopped before model.pt)
        (run / "model.pt").unlink()
    caplog.set_level("INFO")
    code, _, err = cli(capsys, *run_argv(tiny_data, copy))
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "making it again" in r.message]
    assert len(warnings) == 1 and str(run / name) in warnings[0], caplog.text
    engine = copy / "engines" / "resnet20-fake-test.onnx"
    read_onnx(engine)  # the engine delivered is a whole model, the pruned one made again
    assert engine.read_bytes() == (run / "pruned.onnx").read_bytes()
    report = json.loads((run / "report.json").read_text())
    assert report["engine"] == str(engine)


@pytest.mark.parametrize("name", ["pruned.onnx", "model.pt", "plan.json", "baseline.onnx"])
def test_report_names_a_damaged_run_file_and_how_to_remake_it(copy, capsys, tiny_data, name):
    run = copy / "runs" / "resnet20-fake-test"
    cut(run / name)
    before = digest(run / "report.json"), digest(run / "report.md")
    err = user_error(capsys, "report", run, "--data", tiny_data, "--engines-dir", copy / "engines",
                     message=f"the run's {name} is damaged: ", roots=[copy])  # fmt: skip
    assert f"--runs-dir {copy / 'runs'} --name resnet20-fake-test" in err and "trtprune export" not in err
    assert (digest(run / "report.json"), digest(run / "report.md")) == before


@pytest.mark.parametrize("name", ["plan.json", "model.pt"])
def test_report_on_a_run_without_a_stage_file_names_it_before_timing(copy, capsys, caplog, tiny_data, name):
    run = copy / "runs" / "resnet20-fake-test"
    (run / name).unlink()
    caplog.set_level("INFO")
    err = user_error(capsys, "report", run, "--data", tiny_data, "--engines-dir", copy / "engines",
                     message=f"the run has no {name} yet", roots=[copy])  # fmt: skip
    assert "--name resnet20-fake-test" in err and "No such file" not in err
    assert "median" not in caplog.text  # nothing was timed


def test_report_refuses_an_engines_dir_without_the_runs_engine(copy, capsys, tiny_data):
    run = copy / "runs" / "resnet20-fake-test"
    before = digest(run / "report.md")
    err = user_error(capsys, "report", run, "--data", tiny_data, "--engines-dir", copy / "nowhere",
                     message=f"engine '{copy / 'nowhere' / 'resnet20-fake-test.onnx'}' does not exist",
                     absent=[copy / "nowhere"], roots=[copy])  # fmt: skip
    assert "--engines-dir" in err and digest(run / "report.md") == before


# -- one file twice, folders and bare .py files where a file or file.py:name is expected ---------------------------
@pytest.mark.parametrize(
    "given, message",
    [(["m.onnx", "m.onnx", "./m.onnx"], "'m.onnx' is given twice"),
     (["m.onnx", "./dir/../m.onnx"], "'./dir/../m.onnx' is given twice (also as 'm.onnx')")],
)  # fmt: skip
def test_measure_refuses_a_file_given_twice(files, capsys, given, message):
    code, out, _ = cli(capsys, "--json", "measure", *given, "--rounds", "2", "--json-file", "t.json")
    assert code == 2 and out == ""
    user_error(capsys, "measure", *given, "--rounds", "2", "--json-file", "t.json", message=message, absent=["t.json"])


FOLDERS = [
    (["prune", *R20, "--importance", "l1", "--plan", "dir", "-o", "p.pt"], "plan 'dir' is a folder", ["p.pt"]),
    (["measure", "dir"], "ONNX file 'dir' is a folder", []),
    (["eval", "--onnx", "dir"], "ONNX file 'dir' is a folder", []),
    (["quantize", "dir", "--calib", "a.npy", "-o", "q.onnx"], "ONNX file 'dir' is a folder", ["q.onnx"]),
    (["export", "--model", "dir.py:make", "-o", "e.onnx"], "model file 'dir.py' is a folder", ["e.onnx"]),
    (["export", "--model", "dir.py:make", "--weights", "w.th", "-o", "e.onnx"], "model file 'dir.py' is a folder",
     ["e.onnx"]),
    (["search", *R20, "--budget", "0.5x", "--importance", "l1", "--lut", "dir", "-o", "s.json"],
     "the latency table 'dir' is a folder", ["s.json"]),
]  # fmt: skip


@pytest.mark.parametrize("argv, message, absent", FOLDERS, ids=[f"{a[0]}-{i}" for i, (a, _, _) in enumerate(FOLDERS)])
def test_a_folder_given_for_a_file_is_named_a_folder(files, capsys, caplog, tiny_data, argv, message, absent):
    Path("dir.py").mkdir()
    caplog.set_level("INFO")
    user_error(capsys, *argv, "--data", tiny_data, message=message, absent=absent, roots=[files])
    assert "median" not in caplog.text  # refused before anything was timed (the search's --lut)


@pytest.mark.parametrize(
    "option, value, message, hint",
    [("--data", "loaders.py", "data 'loaders.py' (from --data) is a Python file without ':function'",
      "--data loaders.py:loaders"),
     ("--task", "loaders.py", "task 'loaders.py' is a Python file without ':object'", "--task loaders.py:task"),
     ("--model", "loaders.py", "model 'loaders.py' is a Python file without ':factory'", "--model loaders.py:")],
)  # fmt: skip
def test_a_python_file_without_its_name_says_what_to_add(files, capsys, tiny_data, option, value, message, hint):
    Path("loaders.py").write_text("def loaders():\n    return [], []\n")
    argv = {"--model": ["--model", value, "--data", tiny_data], "--data": [*R20, "--data", value]}
    argv = argv.get(option, [*R20, "--data", tiny_data, option, value])
    err = user_error(capsys, "eval", *argv, "--limit", "8", message=message)
    assert hint in err and "cifar10" not in err.split("fix:")[-1]


def test_trtprune_data_naming_a_python_file_says_it_takes_a_folder(files, capsys, monkeypatch):
    Path("loaders.py").write_text("def loaders():\n    return [], []\n")
    monkeypatch.setenv("TRTPRUNE_DATA", "loaders.py")
    err = user_error(capsys, "eval", *R20, "--limit", "8",
                     message="data 'loaders.py' (from TRTPRUNE_DATA) is a Python file without ':function'")  # fmt: skip
    assert "--data loaders.py:loaders" in err and "TRTPRUNE_DATA names a dataset folder" in err


@pytest.mark.parametrize(
    "argv",
    [["measure", "m.onnx", "--json-file", "dir"], ["prune", *R20, "--importance", "l1", "-o", "dir"],
     ["search", *R20, "--budget", "0.5x", "--importance", "l1", "-o", "dir"]],
)  # fmt: skip
def test_an_output_that_is_a_folder_is_refused_before_any_work(files, capsys, monkeypatch, tiny_data, argv):
    from trtprune import commands

    def work(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    for name in ("load_model", "get_backend", "resolve_weights"):  # loading the model or timing is work
        monkeypatch.setattr(commands, name, work)
    user_error(capsys, *argv, "--data", tiny_data, message="cannot write 'dir': it is a folder", roots=[files])
    assert list(Path("dir").iterdir()) == []
