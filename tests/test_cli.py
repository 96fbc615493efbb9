"""The command line end to end on generated data, and its clear errors."""

import json
import time

import pytest

from tests.small_models import RESNET8
from trtprune.cli import main

WEIGHTS = "weights/resnet20-random.th"
WEIGHTS8 = "weights/resnet8-random.th"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    import torch

    from trtprune.deploy.export import onnx_from_torch

    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    onnx_from_torch(torch.nn.Conv2d(3, 4, 3), path, (3, 8, 8))
    return str(path)


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    work = tmp_path_factory.mktemp("work")
    argv = [
        "run",
        "--data",
        tiny_data,
        "--model",
        "resnet20",
        "--weights",
        tiny_data / WEIGHTS,
        "--budget",
        "none",
        "--ratio",
        "0.5",
        "--round-to",
        "4",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--eval-limit",
        "64",
        "--runs-dir",
        work / "runs",
        "--engines-dir",
        work / "engines",
        "--name",
        "r20",
    ]
    assert main([str(a) for a in argv]) == 0
    return work, argv


def test_run_writes_the_engine_and_a_measured_report(finished_run):
    work, _ = finished_run
    run = work / "runs" / "r20"
    for name in ("config.json", "baseline.onnx", "plan.json", "pruned.pt", "model.pt", "pruned.onnx", "report.md"):
        assert (run / name).is_file(), name
    assert (work / "engines" / "r20.onnx").read_bytes() == (run / "pruned.onnx").read_bytes()  # named after the run
    r = json.loads((run / "report.json").read_text())
    assert r["device"]["engine"] == "onnxruntime" and r["device"]["threads"] == 1 and r["device"]["batch"] == 1
    for role in ("baseline", "pruned"):
        lat = r[role]["latency"]
        assert lat["n"] > 0 and 0 < lat["median_ms"] <= lat["p90_ms"]
        assert 0 <= r[role]["top1"] <= 100
    assert r["pruned"]["macs"] < r["baseline"]["macs"] / 3  # half the channels of every group: ~1/4 MACs
    assert r["pruned"]["params"] < r["baseline"]["params"]
    assert r["speedup"] == pytest.approx(r["baseline"]["latency"]["median_ms"] / r["pruned"]["latency"]["median_ms"])
    assert r["eval"]["images"] == 64 and r["finetune"]["epochs"] == 1 and len(r["finetune"]["records"]) == 1
    assert set(r["method"]["keep_channels"].values()) == {8, 16, 32}
    md = (run / "report.md").read_text()
    assert "Speed-up" in md and "layer3.0.conv1" in md and "channels.png" in md
    assert (run / "channels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_finished_run_resumes_without_redoing_stages(finished_run, capsys, caplog):
    work, argv = finished_run
    before = (work / "runs" / "r20" / "model.pt").stat().st_mtime_ns
    caplog.set_level("INFO")
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0 and "measured side by side" in out
    assert (work / "runs" / "r20" / "model.pt").stat().st_mtime_ns == before
    assert "finetune  | done already" in caplog.text


def test_a_run_directory_with_other_settings_is_refused(finished_run, capsys):
    _, argv = finished_run
    argv = list(argv)
    argv[argv.index("--ratio") + 1] = "0.25"
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and "was made with other settings (ratio)" in err and "--fresh" in err


def test_report_command_remeasures(finished_run, capsys, tiny_data):
    work, _ = finished_run
    before = json.loads((work / "runs" / "r20" / "report.json").read_text())["provenance"]["date"]
    time.sleep(1.1)  # report dates have one-second resolution
    code, out, _ = run_cli(
        capsys, "report", work / "runs" / "r20", "--data", tiny_data, "--engines-dir", work / "engines"
    )
    assert code == 0 and "report.md" in out
    assert json.loads((work / "runs" / "r20" / "report.json").read_text())["provenance"]["date"] > before


def test_fresh_starts_a_run_over_with_new_settings(tiny_data, tmp_path, capsys):
    argv = ["run", "--data", tiny_data, "--model", "resnet20", "--weights", tiny_data / WEIGHTS, "--epochs", "1",
            "--budget", "none", "--round-to", "4", "--train-limit", "64", "--eval-limit", "16", "--runs-dir", tmp_path,
            "--engines-dir", tmp_path / "e", "--name", "x"]  # fmt: skip
    assert run_cli(capsys, *argv, "--ratio", "0.5")[0] == 0
    assert run_cli(capsys, *argv, "--ratio", "0.25")[0] == 2
    assert run_cli(capsys, *argv, "--ratio", "0.25", "--fresh")[0] == 0
    plan = json.loads((tmp_path / "x" / "plan.json").read_text())
    assert plan["meta"]["ratio"] == 0.25 and plan["keep_channels"]["layer1.0.conv1"] == 12


def test_a_run_directory_in_use_is_refused(tmp_path):
    from trtprune.config import RunConfig
    from trtprune.errors import TrtpruneError
    from trtprune.run import Run

    with Run(tmp_path / "r", RunConfig()), pytest.raises(TrtpruneError, match="in use by another trtprune process"):
        Run(tmp_path / "r", RunConfig()).__enter__()
    with Run(tmp_path / "r", RunConfig()):  # released after use
        pass


def test_a_run_resumes_with_compile_toggled_but_not_with_another_recipe(tmp_path):
    import dataclasses

    from trtprune.config import FinetuneConfig, RunConfig
    from trtprune.errors import TrtpruneError
    from trtprune.run import Run

    with Run(tmp_path / "r", RunConfig()):
        pass
    with Run(tmp_path / "r", RunConfig(finetune=FinetuneConfig(compile=True))):  # speed only: same run
        pass
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    saved["finetune"].pop("compile")  # a run directory made before the setting existed
    (tmp_path / "r" / "config.json").write_text(json.dumps(saved))
    with Run(tmp_path / "r", RunConfig()):
        pass
    (tmp_path / "r" / "baseline.onnx").write_bytes(b"made")  # a stage made a file: the settings are the run's
    other = RunConfig(finetune=dataclasses.replace(FinetuneConfig(), lr=0.1))
    with pytest.raises(TrtpruneError, match=r"other settings \(finetune\)"), Run(tmp_path / "r", other):
        pass


def test_stage_commands_chain(tiny_data, tmp_path, capsys):
    w = tiny_data / WEIGHTS
    assert run_cli(capsys, "export", "--model", "resnet20", "--weights", w, "-o", tmp_path / "b.onnx")[0] == 0
    assert (
        run_cli(
            capsys,
            "prune",
            "--model",
            "resnet20",
            "--weights",
            w,
            "--ratio",
            "0.25",
            "--round-to",
            "1",
            "--importance",
            "l1",
            "-o",
            tmp_path / "p.pt",
        )[0]
        == 0
    )
    plan = json.loads((tmp_path / "p.plan.json").read_text())
    assert plan["keep_channels"]["layer1.0.conv1"] == 12
    code, out, _ = run_cli(
        capsys,
        "finetune",
        "--data",
        tiny_data,
        "--model",
        "resnet20",
        "--weights",
        tmp_path / "p.pt",
        "--epochs",
        "1",
        "--train-limit",
        "64",
        "--eval-limit",
        "32",
        "--distill",
        "0.5",
        "--teacher",
        w,
        "-o",
        tmp_path / "f.pt",
    )
    assert code == 0 and "after 1 epochs" in out
    assert (
        run_cli(capsys, "build", "--model", "resnet20", "--weights", tmp_path / "f.pt", "-o", tmp_path / "e.onnx")[0]
        == 0
    )
    code, out, _ = run_cli(
        capsys, "measure", tmp_path / "b.onnx", tmp_path / "e.onnx", "--rounds", "3", "--json-file", tmp_path / "m.json"
    )
    assert code == 0 and "speed-up" in out
    assert set(json.loads((tmp_path / "m.json").read_text())["models"]) == {
        str(tmp_path / "b.onnx"),
        str(tmp_path / "e.onnx"),
    }
    code, out, _ = run_cli(capsys, "eval", "--data", tiny_data, "--model", "resnet20", "--onnx", tmp_path / "e.onnx")
    assert code == 0 and "on 128 test images" in out
    code, out, _ = run_cli(
        capsys, "eval", "--data", tiny_data, "--model", "resnet20", "--weights", tmp_path / "f.pt", "--limit", "32"
    )
    assert code == 0 and "on 32 test images" in out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["eval", "--model", "resnet99"], "unknown model 'resnet99'"),
        (["eval", "--model", "resnet20", "--weights", "nope.pt"], "weights file 'nope.pt' does not exist"),
        (["eval", "--model", "resnet44"], "has no published weights"),
        (["measure", "{onnx}", "--device", "orin"], "device 'orin' needs TensorRT: trtexec was not found"),
        (["measure", "missing.onnx"], "ONNX file 'missing.onnx' does not exist"),
        (
            ["prune", "--model", "resnet20", "--weights", "{w}", "--ratio", "1.5", "-o", "p.pt"],
            "ratio 1.5 is out of range",
        ),
        (["finetune", "--model", "resnet20", "--weights", "{w}", "--epochs", "0", "-o", "f.pt"], "out of range"),
        (["run", "--model", "resnet20", "--weights", "{w}", "--epochs", "0"], "--epochs >= 1"),
        (["measure", "{onnx}", "--rounds", "0"], "rounds=0"),
        (["export", "--model", "resnet20", "--weights", "{w}", "--batch", "0", "-o", "x.onnx"], "not a batch size"),
        (["run", "--model", "resnet20", "--weights", "{w}", "--device", "quantum"], "unknown device 'quantum'"),
        (["report", "."], "is not a run directory"),
        (
            ["prune", "--model", "resnet20", "--weights", "{w}", "--ignore", "layer9", "-o", "p.pt"],
            "--ignore names 'layer9', which is not a module of the model",
        ),
        (["eval", "--model", "resnet20", "--weights", "{w}", "--data", "{empty}"], "no CIFAR-10 test set"),
    ],
)
def test_user_errors_are_one_message_and_exit_2(argv, message, capsys, tiny_data, tmp_path, monkeypatch, small_onnx):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    argv = [a.format(w=tiny_data / WEIGHTS, empty=tmp_path / "empty", onnx=small_onnx) for a in argv]
    if "--data" not in argv and argv[0] in ("eval",):
        argv += ["--data", str(tiny_data)]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and err.startswith(f"trtprune {argv[0]}: error:")


def test_corrupt_onnx_to_measure(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"\x00" * 100)
    code, _, err = run_cli(capsys, "measure", tmp_path / "bad.onnx")
    assert code == 2 and "not a valid ONNX model" in err


@pytest.mark.parametrize("command", ["finetune", "build"])
def test_commands_that_need_weights_say_so(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--model", "resnet20", "-o", "x"])
    assert e.value.code == 2 and "--weights" in capsys.readouterr().err


def test_every_subcommand_has_help(capsys):
    for cmd in ("list", "groups", "export", "measure", "eval", "prune", "finetune", "build", "report", "run"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        assert "usage: trtprune" in capsys.readouterr().out


def test_list_and_groups(capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "resnet56 (pretrained)" in out and "cpu-b32" in out
    code, out, _ = run_cli(capsys, "groups", "--model", "resnet20")
    assert code == 0 and "12 prunable groups" in out


@pytest.fixture
def fake_device(monkeypatch):
    from trtprune.latency import devices

    monkeypatch.setitem(devices.DEVICES, "fake-test", devices.Device("fake-test", "fake"))
    return "fake-test"


def test_search_then_prune_to_the_plan(tiny_data, tmp_path, capsys, fake_device):
    w = tiny_data / WEIGHTS8
    code, out, err = run_cli(
        capsys,
        "search",
        "--data",
        tiny_data,
        "--model",
        RESNET8,
        "--weights",
        w,
        "--device",
        fake_device,
        "--budget",
        "0.6x",
        "--lut",
        tmp_path / "l.sqlite",
        "-o",
        tmp_path / "plan.json",
    )
    assert code == 0, err
    assert "locp for 0.6x" in out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert plan["measured_ms"] <= 0.6 * plan["baseline_ms"] * 1.01 and plan["meta"]["importance"] == "fisher"
    code, out, _ = run_cli(
        capsys,
        "prune",
        "--data",
        tiny_data,
        "--model",
        RESNET8,
        "--weights",
        w,
        "--plan",
        tmp_path / "plan.json",
        "--importance",
        "taylor",
        "-o",
        tmp_path / "p.pt",
    )
    assert code == 0 and "pruned to" in out
    from trtprune.pruning.prune import GroupPruner
    from trtprune.sources.weights import load_model

    model, _ = load_model(RESNET8, tmp_path / "p.pt")
    assert {g.name: g.channels for g in GroupPruner(model, (3, 32, 32)).groups()} == plan["keep_channels"]
    code, _, err = run_cli(
        capsys,
        "search",
        "--data",
        tiny_data,
        "--model",
        RESNET8,
        "--weights",
        w,
        "--device",
        fake_device,
        "--budget",
        "0.01x",
        "--lut",
        tmp_path / "l.sqlite",
        "-o",
        tmp_path / "x.json",
    )
    assert code == 2 and "smallest latency reachable" in err and not (tmp_path / "x.json").exists()


def test_run_with_a_latency_search(tiny_data, tmp_path, capsys, fake_device):
    code, out, err = run_cli(
        capsys,
        "run",
        "--data",
        tiny_data,
        "--model",
        RESNET8,
        "--weights",
        tiny_data / WEIGHTS8,
        "--device",
        fake_device,
        "--method",
        "knapsack",
        "--budget",
        "0.5x",
        "--epochs",
        "1",
        "--train-limit",
        "64",
        "--eval-limit",
        "16",
        "--lut",
        tmp_path / "l.sqlite",
        "--runs-dir",
        tmp_path,
        "--engines-dir",
        tmp_path / "e",
        "--name",
        "k",
    )
    assert code == 0, err
    report = json.loads((tmp_path / "k" / "report.json").read_text())
    assert report["method"]["method"] == "knapsack" and report["method"]["budget"] == "0.5x"
    assert report["pruned"]["latency"]["median_ms"] <= 0.5 * report["baseline"]["latency"]["median_ms"] * 1.01
    md = (tmp_path / "k" / "report.md").read_text()
    assert "knapsack search for a budget of 0.5x" in md
    assert report["budget"]["met"] and "**Budget 0.5x: met**" in md
    # depth before width: ResNet-8's one removable block (layer1.0) goes first, then the channels close the gap
    assert report["method"]["remove_blocks"] == report["method"]["meta"]["depth"]["removed"] == ["layer1.0"]
    assert "Blocks removed whole before the channels: 1 of 1 (layer1.0)" in md
    assert "layer1.0.conv1" not in report["method"]["keep_channels"]
    from trtprune.report import markdown

    slower = markdown({**report, "budget": {**report["budget"], "ratio": 0.61, "met": False}})
    assert "**Budget 0.5x: not met** (" in slower and "0.610x of the baseline" in slower


def test_quantize_from_the_training_set_or_a_calib_folder(capsys, tiny_data, tmp_path):
    import numpy as np

    small_onnx = tmp_path / "r20.onnx"
    w = tiny_data / WEIGHTS
    assert run_cli(capsys, "export", "--model", "resnet20", "--weights", w, "-o", small_onnx)[0] == 0

    code, out, err = run_cli(
        capsys, "quantize", "--model", "resnet20", "--data", tiny_data, small_onnx, "-n", "8", "-o", tmp_path / "a.onnx"
    )
    assert code == 0 and "INT8 Q/DQ for tensorrt" in out and (tmp_path / "a.onnx").is_file(), err
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3), dtype=np.uint8))
    code, out, err = run_cli(
        capsys,
        "quantize",
        "--model",
        "resnet20",
        small_onnx,
        "--calib",
        tmp_path / "calib.npy",
        "--target",
        "ort",
        "-o",
        tmp_path / "b.onnx",
    )
    assert code == 0 and "for ort" in out, err
    code, _, err = run_cli(
        capsys, "quantize", "--model", "resnet20", small_onnx, "--calib", tmp_path / "none", "-o", tmp_path / "c.onnx"
    )
    assert code == 2 and not (tmp_path / "c.onnx").exists() and "Traceback" not in err


# -- the interface: --version, global options, -q, --log-file, --json, exit statuses -----------------------------
def test_version_and_global_options_before_the_subcommand(capsys, tmp_path):
    from trtprune import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"trtprune {__version__}"
    code, out, err = run_cli(capsys, "--json", "-q", "list")  # options before the command ...
    assert code == 0 and json.loads(out)["methods"][0] == "locp" and "models:" in err
    code, out, _ = run_cli(capsys, "list", "--json")  # ... or after it
    assert code == 0 and "fake" not in json.loads(out)["backends"] and "ort" in json.loads(out)["backends"]


def test_list_shows_the_users_devices_and_not_the_test_only_backend(capsys, tmp_path, monkeypatch):
    (tmp_path / "devices.toml").write_text('[devices.edge-box]\nbackend = "ort"\nthreads = 2\nbatch = 4\n')
    monkeypatch.setenv("TRTPRUNE_DEVICES", str(tmp_path / "devices.toml"))
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "edge-box (" in out and ", yours)" in out and "fake" not in out.split("backends:")[1]


def test_quiet_hides_info_and_log_file_keeps_everything(capsys, tmp_path, small_onnx):
    log = tmp_path / "trtprune.log"
    code, out, err = run_cli(capsys, "-q", "--log-file", log, "measure", small_onnx, "--rounds", "2")
    assert code == 0 and "median" in out
    assert " ms median " not in err  # the per-model INFO line is not on stderr with -q ...
    assert " ms median " in log.read_text()  # ... but is in the log file, dated
    assert log.read_text()[:4].isdigit()
    code, _, err = run_cli(capsys, "measure", small_onnx, "--rounds", "2")
    assert code == 0 and " ms median " in err


def test_measure_json_prints_the_result_alone_on_stdout(capsys, small_onnx):
    code, out, err = run_cli(capsys, "measure", small_onnx, "--rounds", "2", "--json")
    result = json.loads(out)
    assert code == 0 and result["models"][str(small_onnx)]["n"] > 0 and "speed-up" in err


def test_a_missed_budget_and_a_top1_drop_have_their_own_exit_status(capsys):
    from trtprune.commands import verdict
    from trtprune.errors import BUDGET_MISSED, TOP1_GATE

    def report(met: bool, top1: float) -> dict:
        return {
            "budget": {"budget": "0.5x", "met": met, "ratio": 0.48 if met else 0.61, "target_ms": 1.0},
            "baseline": {"top1": 93.0},
            "pruned": {"top1": top1},
        }

    assert verdict(report(True, 92.5), None) == 0
    assert verdict(report(True, 92.5), 1.0) == 0
    assert verdict(report(False, 92.5), 1.0) == BUDGET_MISSED == 3
    assert "misses its budget 0.5x: 0.610x" in capsys.readouterr().err
    assert verdict(report(True, 91.0), 1.0) == TOP1_GATE == 4
    assert "top-1 dropped 2.00 points" in capsys.readouterr().err
    assert verdict(report(False, 91.0), 1.0) == BUDGET_MISSED | TOP1_GATE == 7
    assert verdict({**report(True, 91.0), "budget": None}, None) == 0  # a uniform run has no budget


def _cifar_or_synthetic(n: int):
    """n real CIFAR-10 test images when the shared data is there, else generated ones (the test says which)."""
    from tests.conftest import _shared_data
    from trtprune.sources.datasets import load_cifar10, synthetic_cifar10

    root = _shared_data()
    if root is None:
        return synthetic_cifar10(n, seed=5), "generated"
    x, y = load_cifar10(root, "test")
    return (x[:n], y[:n]), "CIFAR-10"


def test_a_run_on_an_image_folder_at_64x64_with_a_user_model(tmp_path, capsys):
    """A user's MobileNetV2-style network at 3x64x64 on an image folder (CIFAR-10 images resized to 64x64): one
    epoch of trtprune run, uniform pruning, measured on ONNX Runtime; the input shape is honoured everywhere."""
    import onnx
    import torch
    from PIL import Image

    from trtprune.sources.datasets import CLASSES

    (x, y), _ = _cifar_or_synthetic(240)
    for i, (img, label) in enumerate(zip(x, y)):
        d = tmp_path / "data" / ("train" if i < 192 else "val") / CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).resize((64, 64), Image.BILINEAR).save(d / f"{i:04d}.png")
    (tmp_path / "net.py").write_text(
        "from trtprune.sources.models.imagenet import MobileNetV2\n"
        "def make():\n"
        "    return MobileNetV2(num_classes=10, last_channels=256)\n"
    )
    torch.manual_seed(0)
    from trtprune.sources.models.imagenet import MobileNetV2

    torch.save(MobileNetV2(num_classes=10, last_channels=256).state_dict(), tmp_path / "w.pt")
    code, out, err = run_cli(
        capsys,
        "run",
        "--data",
        tmp_path / "data",
        "--model",
        f"{tmp_path / 'net.py'}:make",
        "--weights",
        tmp_path / "w.pt",
        "--input-shape",
        "3x64x64",
        "--budget",
        "none",
        "--ratio",
        "0.5",
        "--importance",
        "l1",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--runs-dir",
        tmp_path / "runs",
        "--engines-dir",
        tmp_path / "engines",
        "--name",
        "mbv2-64",
    )
    assert code == 0, err
    r = json.loads((tmp_path / "runs" / "mbv2-64" / "report.json").read_text())
    assert r["input_shape"] == [3, 64, 64] and r["eval"]["images"] == 48 and len(r["finetune"]["records"]) == 1
    assert r["pruned"]["macs"] < r["baseline"]["macs"] / 2 and r["speedup"] > 0 and 0 <= r["pruned"]["top1"] <= 100
    assert json.loads((tmp_path / "runs" / "mbv2-64" / "config.json").read_text())["input_shape"] == "3x64x64"
    engine = onnx.load(str(tmp_path / "engines" / "mbv2-64.onnx"))
    assert [d.dim_value for d in engine.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 64]
    assert "3x64x64 images" in (tmp_path / "runs" / "mbv2-64" / "report.md").read_text()
