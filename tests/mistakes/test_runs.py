"""Issue 30, outputs, names and stage files (review round): an engine or output written into a run directory, a
stage file that reads back but is not the run's own (edited, or copied in), group names that are paths, an output
written as a folder ('x/'), a log file that is an output, report given no folder or a file, profile --out a file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.mistakes.common import user_error
from tests.mistakes.test_paths import WEIGHTS, digest, fake_device, files, finished, run_argv, small_onnx  # noqa: F401

RUN = "resnet20-fake-test"


@pytest.fixture
def copy(finished, tmp_path, monkeypatch) -> Path:  # noqa: F811
    """A copy of the finished run (made with stages.json) and its engine, in the current folder."""
    fake_device(monkeypatch)
    shutil.copytree(finished, tmp_path / "w")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "w"


def test_a_finished_run_records_its_files(copy):
    run = copy / "runs" / RUN
    records = json.loads((run / "stages.json").read_text())
    for name in ("baseline.onnx", "plan.json", "pruned.pt", "model.pt", "pruned.onnx"):
        assert records[name]["sha256"] == digest(run / name), name
    assert records["pruned.onnx"]["from"] == {"model.pt": digest(run / "model.pt")}
    assert records["engine"] == {
        "sha256": digest(copy / "engines" / f"{RUN}.onnx"),
        "from": {"pruned.onnx": digest(run / "pruned.onnx")},
    }


# -- 1: an engine or output written into a run directory ------------------------------------------------------------
def test_run_refuses_an_engines_dir_inside_its_own_run_directory(tiny_data, tmp_path, capsys, monkeypatch):
    """--name baseline --engines-dir runs/baseline delivered the engine over the run's own dense baseline.onnx."""
    fake_device(monkeypatch)
    argv = [str(a) for a in run_argv(tiny_data, tmp_path)]
    argv[argv.index("--engines-dir") + 1] = str(tmp_path / "runs" / "baseline")
    user_error(capsys, *argv, "--name", "baseline", absent=[tmp_path / "runs"],
               message=f"--engines-dir '{tmp_path / 'runs' / 'baseline'}' is inside the run directory")  # fmt: skip


def test_run_refuses_an_engines_dir_inside_another_run_directory(copy, tiny_data, tmp_path, capsys):
    other = copy / "runs" / RUN
    before = {p.name: digest(p) for p in other.iterdir() if p.is_file()}
    argv = [str(a) for a in run_argv(tiny_data, tmp_path / "x")]
    argv[argv.index("--engines-dir") + 1] = str(other / "sub")
    user_error(capsys, *argv, "--name", "pruned", absent=[tmp_path / "x", other / "sub"],
               message=f"--engines-dir '{other / 'sub'}' is inside the run directory '{other}'")  # fmt: skip
    assert {p.name: digest(p) for p in other.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("name", ["pruned.onnx", "baseline.onnx", "plan.json"])
def test_an_output_over_a_run_file_is_refused(copy, tiny_data, capsys, name):
    run = copy / "runs" / RUN
    before = digest(run / name)
    for argv in (["build", "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--device", "fake-test"],
                 ["export", "--model", "resnet20", "--weights", tiny_data / WEIGHTS]):  # fmt: skip
        user_error(capsys, *argv, "-o", run / name, message=f"-o '{run / name}' would write over the run's {name}")
    assert digest(run / name) == before


# -- 2: a stage file that reads back but is not the run's own -------------------------------------------------------
def keep_a_quarter(plan: Path) -> None:
    found = json.loads(plan.read_text())
    found["keep_channels"] = {g: max(1, c // 4) for g, c in found["channels"].items()}
    plan.write_text(json.dumps(found))


def test_an_edited_plan_is_refused_on_resume_and_by_report(copy, capsys, tiny_data):
    run = copy / "runs" / RUN
    keep_a_quarter(run / "plan.json")
    engine = digest(copy / "engines" / f"{RUN}.onnx")
    for argv in (run_argv(tiny_data, copy), ["report", run, "--data", tiny_data, "--engines-dir", copy / "engines"]):
        err = user_error(capsys, *argv, message=f"'{run / 'plan.json'}' changed since the run made it")
        assert "--fresh" in err and f"delete {run / 'plan.json'} and pruned.pt" in err
    assert digest(copy / "engines" / f"{RUN}.onnx") == engine


@pytest.mark.parametrize("name, other", [("pruned.onnx", "baseline.onnx"), ("pruned.pt", "finetune.pt")])
def test_a_stage_file_from_elsewhere_is_refused_before_timing(copy, capsys, caplog, tiny_data, name, other):
    """A dense ONNX copied over pruned.onnx was delivered (1.00x); another checkpoint over pruned.pt was reported."""
    run = copy / "runs" / RUN
    shutil.copyfile(run / other, run / name)
    caplog.set_level("INFO")
    for argv in (["report", run, "--data", tiny_data, "--engines-dir", copy / "engines"], run_argv(tiny_data, copy)):
        err = user_error(capsys, *argv, message=f"'{run / name}' changed since the run made it")
        assert f"fix: delete {run / name}" in err and "or use --fresh" in err
    assert "median" not in caplog.text  # nothing was timed


def test_a_file_made_from_a_changed_input_is_refused(copy, capsys, tiny_data):
    """pruned.onnx is the run's, but model.pt (recorded too) was replaced along with its record: made from another."""
    run = copy / "runs" / RUN
    shutil.copyfile(run / "pruned.pt", run / "model.pt")
    records = json.loads((run / "stages.json").read_text())
    records["model.pt"]["sha256"] = digest(run / "model.pt")
    (run / "stages.json").write_text(json.dumps(records))
    user_error(capsys, "report", run, "--data", tiny_data, "--engines-dir", copy / "engines",
               message=f"'{run / 'pruned.onnx'}' was made from another model.pt")  # fmt: skip


def another_models_checkpoint(path: Path) -> None:
    from trtprune.sources.models import build_model
    from trtprune.sources.weights import save_pruned

    save_pruned(path, build_model("resnet32"), "resnet32", [])


@pytest.mark.parametrize("name", ["pruned.pt", "model.pt"])
def test_another_models_checkpoint_in_a_run_says_delete_it_or_fresh(copy, capsys, caplog, tiny_data, name):
    """In a run made before stages.json: the advice was 'use --model resnet32' (the run's model is resnet20)."""
    run = copy / "runs" / RUN
    (run / "stages.json").unlink()
    another_models_checkpoint(run / name)
    if name == "pruned.pt":  # read when the run fine-tunes it again
        (run / "model.pt").unlink()
    caplog.set_level("INFO")
    argvs = [run_argv(tiny_data, copy)] + [["report", run, "--data", tiny_data, "--engines-dir", copy / "engines"]] * (
        name == "model.pt"
    )
    for argv in argvs:
        err = user_error(capsys, *argv, message=f"the run's {name} is not a model of this run: ")
        assert f"fix: delete {run / name}" in err and "or use --fresh" in err and "--model resnet32" not in err
    assert "median" not in caplog.text  # nothing was timed


def test_a_run_without_records_resumes_as_before(copy, capsys, tiny_data):
    run = copy / "runs" / RUN
    (run / "stages.json").unlink(missing_ok=True)
    code, _, err = cli(capsys, *run_argv(tiny_data, copy))
    assert code == 0, err


def test_report_refuses_an_engine_that_is_not_the_model_it_measures(copy, capsys, caplog, tiny_data, monkeypatch):
    """config.json edited to an int8 device: the report measured pruned.int8.onnx and named the fp32 engine."""
    from trtprune.latency import devices

    monkeypatch.setitem(devices.DEVICES, "fake-int8", devices.Device("fake-int8", "fake", precision="int8"))
    run = copy / "runs" / RUN
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "device": "fake-int8"}))
    engines = copy / "engines"
    shutil.copyfile(engines / f"{RUN}.onnx", engines / f"{RUN}.onnx.bak")
    caplog.set_level("INFO")
    err = user_error(capsys, "report", run, "--data", tiny_data, "--engines-dir", engines,
                     message=f"engine '{engines / (RUN + '.onnx')}' is not the model this report measures")  # fmt: skip
    assert "median" not in caplog.text and "--fresh" in err
    (run / "config.json").write_text(json.dumps(config))  # the engine itself replaced by another model
    shutil.copyfile(run / "baseline.onnx", engines / f"{RUN}.onnx")
    user_error(capsys, "report", run, "--data", tiny_data, "--engines-dir", engines,
               message=f"engine '{engines / (RUN + '.onnx')}' is not the model this report measures")  # fmt: skip


# -- 3: group names that are paths ----------------------------------------------------------------------------------
def test_a_safe_file_name_stays_in_its_folder():
    from trtprune.fsutil import safe_file_name

    assert safe_file_name("layer1.0.conv1") == "layer1.0.conv1"
    names = ["/tmp/x", "stem/conv", "stem_conv", "..", "a\\b", "", ".hidden"]
    safe = [safe_file_name(n) for n in names]
    assert len(set(safe)) == len(safe)
    assert all(s and "/" not in s and "\\" not in s and not s.startswith(".") for s in safe), safe


SLASHED = """import torch.nn as nn


class Net(nn.Module):
    def __init__(self, escape):
        super().__init__()
        self.body = nn.ModuleDict({"stem/conv": nn.Conv2d(3, 8, 3, padding=1), "bn": nn.BatchNorm2d(8)})
        self.add_module(escape, nn.Conv2d(8, 8, 3, padding=1))
        self.escape = escape
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))

    def forward(self, x):
        x = self.body["bn"](self.body["stem/conv"](x)).relu()
        return self.head(getattr(self, self.escape)(x).relu())


def make():
    return Net(ESCAPE)
"""


def test_profile_keeps_plots_of_groups_named_like_paths_in_its_folder(tmp_path, capsys, monkeypatch):
    fake_device(monkeypatch)
    monkeypatch.chdir(tmp_path)
    escape = str(tmp_path / "ESCAPED")
    if "." in escape:
        pytest.skip("module names cannot hold '.'")
    Path("f.py").write_text(SLASHED.replace("ESCAPE)", f"{escape!r})"))
    code, _, err = cli(capsys, "profile", "--model", "f.py:make", "--input-shape", "3x8x8", "--device", "fake-test",
                       "--out", "prof", "--lut", "l.sqlite")  # fmt: skip
    assert code == 0, err
    assert not Path(escape + ".png").exists() and not Path(escape).exists()
    assert sorted(p.parent for p in Path("prof").rglob("*.png")) and all(
        p.parent == Path("prof") for p in Path("prof").rglob("*")
    ), list(Path("prof").rglob("*"))
    groups = json.loads(Path("prof/stairs.json").read_text())["groups"]
    assert any("stem/conv" in g for g in groups) and escape in groups  # the JSON keeps the names


# -- 4, 5: an output written as a folder, a log file that is an output ----------------------------------------------
@pytest.mark.parametrize("out", ["newdir/", "w.onnx/"])
def test_an_output_ending_in_a_separator_is_refused(files, capsys, out):  # noqa: F811
    Path("w.onnx").write_bytes(b"keep")
    user_error(capsys, "export", "--model", "resnet20", "--weights", "w.th", "-o", out, absent=["newdir"],
               message=f"-o '{out}' ends in a path separator", roots=[files])  # fmt: skip
    assert Path("w.onnx").read_bytes() == b"keep"


def test_an_atomic_write_to_a_folder_name_is_refused(tmp_path):
    from trtprune.errors import TrtpruneError
    from trtprune.fsutil import write_text

    with pytest.raises(TrtpruneError, match="ends in a path separator"):
        write_text(f"{tmp_path}/x/", "text")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "argv, message",
    [(["export", "--log-file", "e.onnx", "--model", "resnet20", "--weights", "w.th", "-o", "e.onnx"],
      "--log-file 'e.onnx' is the same file as -o 'e.onnx'"),
     (["measure", "m.onnx", "--json-file", "./r.json", "--log-file", "r.json"],
      "--log-file 'r.json' is the same file as --json-file './r.json'")],
)  # fmt: skip
def test_a_log_file_that_is_an_output_is_refused(files, capsys, argv, message):  # noqa: F811
    user_error(capsys, *argv, message=message, absent=["e.onnx", "r.json"])


# -- 6, 7: report given no folder or a file; profile --out a file ---------------------------------------------------
def test_report_of_a_missing_folder_says_it_does_not_exist(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    user_error(capsys, "report", "nowhere", message="run directory 'nowhere' does not exist", absent=["nowhere"])


def test_report_of_a_file_says_to_give_the_folder(copy, capsys):
    run = copy / "runs" / RUN
    err = user_error(capsys, "report", run / "config.json", message=f"'{run / 'config.json'}' is a file, not a run")
    assert f"trtprune report {run}" in err


@pytest.mark.parametrize("out", ["a.th", "a.th/sub"])
def test_profile_out_a_file_writes_nothing(files, capsys, out):  # noqa: F811
    Path("a.th").write_bytes(b"keep")
    user_error(capsys, "profile", "--model", "resnet20", "--out", out, "--lut", "new.sqlite",
               message=f"--out '{out}' is not a folder: 'a.th' is a file", absent=["new.sqlite"])  # fmt: skip
    assert Path("a.th").read_bytes() == b"keep"
