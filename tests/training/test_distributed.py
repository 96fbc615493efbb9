"""Fine-tuning in several processes (torch.distributed, gloo on the CPU) against one process.

Each test that starts processes costs a few seconds (every process imports torch); the runs are small:
a pruned ResNet-20, a few dozen generated images, a few steps.
"""

import copy
import shutil
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.conftest import make_pruned_r20
from trtprune.cli import main
from trtprune.errors import TrtpruneError
from trtprune.sources.datasets import synthetic_cifar10
from trtprune.sources.models import IMAGENET_MEAN, IMAGENET_STD, build_model
from trtprune.sources.weights import read_checkpoint
from trtprune.training import distributed as DI
from trtprune.training.finetune import FinetuneConfig, finetune

WEIGHTS = "weights/resnet20-random.th"


class Float64(nn.Module):
    """The model in float64, fed the float32 batches of the loop: rounding drops out of the comparison."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net.double()

    def forward(self, x):
        return self.net(x.double())


pruned_r20 = make_pruned_r20


def run(nproc, model, train, cfg, ckpt, history, teacher=None):
    """Fine-tune a copy of ``model`` in ``nproc`` processes (1: in this one); the checkpoint written."""
    args = (copy.deepcopy(model), train, None, IMAGENET_MEAN, IMAGENET_STD, cfg)
    kwargs = dict(checkpoint=ckpt, base_model="resnet20", history=history, teacher=teacher)
    records = finetune(*args, **kwargs) if nproc == 1 else DI.launch(finetune, nproc, *args, **kwargs)
    saved = read_checkpoint(ckpt)
    assert saved["records"] == records  # rank 0 returns what it wrote
    return saved


def relative_difference(a: dict, b: dict, start: dict) -> float:
    """|a - b| / |a - start| over all parameters: how far apart two runs ended, relative to how far they went."""
    keys = [k for k, v in start.items() if v.is_floating_point() and "running" not in k]
    flat = lambda sd: torch.cat([sd[k].double().flatten() for k in keys])
    return float((flat(a) - flat(b)).norm() / (flat(a) - flat(start)).norm())


@pytest.fixture(scope="module")
def float64_runs(tmp_path_factory):
    """One epoch of 3 steps in 1 and in 2 processes, in float64, with a teacher and a last batch of 1 image
    (the second process gets none of it)."""
    tmp = tmp_path_factory.mktemp("f64")
    model, history = pruned_r20()
    torch.manual_seed(1)
    teacher = Float64(build_model("resnet20"))
    model = Float64(model)
    train = synthetic_cifar10(33, 1)  # 2 x 16 + 1
    cfg = FinetuneConfig(epochs=1, batch_size=16, lr=0.05, distill=0.5, precision="fp32")
    one = run(1, model, train, cfg, tmp / "one.pt", history, teacher)
    two = run(2, model, train, cfg, tmp / "two.pt", history, teacher)
    return dict(tmp=tmp, model=model, history=history, teacher=teacher, train=train, cfg=cfg, one=one, two=two)


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_in_float64(float64_runs):
    one, two, start = float64_runs["one"], float64_runs["two"], float64_runs["model"].state_dict()
    # measured 1e-13: float64 rounding only; processes normalising with the statistics of their own half of
    # the batch (plain BatchNorm under DDP) end 0.57 apart
    assert relative_difference(one["state_dict"], two["state_dict"], start) < 1e-9
    for k, v in one["state_dict"].items():  # BatchNorm's running statistics too
        assert torch.allclose(v.double(), two["state_dict"][k].double(), rtol=1e-7, atol=1e-9), k
    assert two["step"] == one["step"] == 3
    # the losses are computed in float32 (from float64 logits), over 16 images or 8 + 8
    assert two["records"][0]["loss"] == pytest.approx(one["records"][0]["loss"], rel=1e-6)


@pytest.mark.slow
def test_two_processes_take_the_steps_of_one_in_fp32(tmp_path):
    """The same in float32, 2 steps. Not equal: a process computes its half of the batch with other rounding
    (1e-7), which flips the sign of a few activations next to 0 at the ReLUs; each flip changes the gradient of
    the layers before it by ~1e-4..1e-3, and the training's sensitivity grows that ~6x a step. Measured 0.015 to
    0.036 over 5 data seeds and 1 or 2 threads; per-process BatchNorm statistics instead end 0.58 apart."""
    model, history = pruned_r20()
    train = synthetic_cifar10(64, 1)
    cfg = FinetuneConfig(epochs=1, batch_size=32, lr=0.01, precision="fp32")
    one = run(1, model, train, cfg, tmp_path / "one.pt", history)
    two = run(2, model, train, cfg, tmp_path / "two.pt", history)
    assert relative_difference(one["state_dict"], two["state_dict"], model.state_dict()) < 0.1
    assert two["records"][0]["loss"] == pytest.approx(one["records"][0]["loss"], rel=1e-3)


@pytest.mark.slow
def test_checkpoints_resume_across_process_counts(float64_runs):
    f = float64_runs
    tmp, cfg2 = f["tmp"], FinetuneConfig(**{**f["cfg"].__dict__, "epochs": 2})
    for first, then in (("one", 1), ("two", 1), ("one", 2)):  # epoch 1 in 1 or 2 processes, epoch 2 in 1 or 2
        shutil.copy(tmp / f"{first}.pt", tmp / f"{first}-then-{then}.pt")
    args = (f["model"], f["train"], cfg2)
    reference = run(1, *args, tmp / "one-then-1.pt", f["history"], f["teacher"])
    two_then_one = run(1, *args, tmp / "two-then-1.pt", f["history"], f["teacher"])
    one_then_two = run(2, *args, tmp / "one-then-2.pt", f["history"], f["teacher"])
    start = f["model"].state_dict()
    for other, first in ((two_then_one, f["two"]), (one_then_two, f["one"])):
        assert other["epoch"] == 2 and other["step"] == 6
        assert other["records"][0] == first["records"][0] and other["records"][1]["epoch"] == 2  # kept, not redone
        assert relative_difference(reference["state_dict"], other["state_dict"], start) < 1e-9
        assert other["records"][1]["loss"] == pytest.approx(reference["records"][1]["loss"], rel=1e-6)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--nproc", "0"], "--nproc 0: fine-tuning needs at least 1 process"),
        (["--nproc", "3", "--batch-size", "64"], "--batch-size 64 cannot be split equally into 3 processes"),
    ],
)
def test_a_bad_process_count_is_a_clear_error(argv, message, tiny_data, tmp_path, capsys):
    code = main(
        ["finetune", "--data", str(tiny_data), "--model", "resnet20", "--weights", str(tiny_data / WEIGHTS)]
        + ["-o", str(tmp_path / "f.pt"), *argv]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "f.pt").exists()
    with pytest.raises(TrtpruneError, match="cannot be split equally into 4 processes"):
        DI.check_processes(4, 30)


def test_a_process_group_that_does_not_split_the_batch_is_refused(monkeypatch):
    monkeypatch.setattr(DI, "world", lambda: (0, 3))
    model, history = pruned_r20()
    with pytest.raises(TrtpruneError, match=r"--batch-size 32 cannot be split equally into 3 processes"):
        finetune(
            model,
            synthetic_cifar10(32, 1),
            None,
            IMAGENET_MEAN,
            IMAGENET_STD,
            FinetuneConfig(batch_size=32),
            checkpoint="unused.pt",
            base_model="resnet20",
            history=history,
        )


# -- failures in a process ----------------------------------------------------------------------------
def fail_in_rank_1(error: Exception):
    """Rank 1 fails; rank 0 waits for it in a collective that never completes."""
    if dist.get_rank() == 1:
        raise error
    dist.barrier()
    time.sleep(600)


@pytest.mark.timeout(90)
def test_an_error_in_a_process_reaches_the_parent_without_hanging():
    t0 = time.monotonic()
    with pytest.raises(DI.WorkerError, match=r"(?s)process 1 of 2 failed: ValueError: boom.*in fail_in_rank_1"):
        DI.launch(fail_in_rank_1, 2, ValueError("boom"))
    assert time.monotonic() - t0 < 60
    with pytest.raises(TrtpruneError) as e:  # a user error stays one: what, why and fix
        DI.launch(fail_in_rank_1, 2, TrtpruneError("bad thing", why="because", fix="do this"))
    assert (e.value.what, e.value.why, e.value.fix) == ("bad thing", "because", "do this")


@pytest.mark.timeout(60)
def test_a_process_whose_peers_never_come_gives_up(monkeypatch):
    for k, v in dict(WORLD_SIZE="2", RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(DI._free_port())).items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TRTPRUNE_DIST_TIMEOUT", "2")
    with pytest.raises(TrtpruneError, match=r"process 0 of 2 could not join the process group"), DI.from_env():
        pass
    assert not dist.is_initialized()


@pytest.mark.slow
def test_finetune_command_with_two_processes(tiny_data, tmp_path, capsys):
    common = ["finetune", "--data", str(tiny_data), "--model", "resnet20", "--weights", str(tiny_data / WEIGHTS)]
    common += ["--batch-size", "32", "--train-limit", "64", "--eval-limit", "32", "-o", str(tmp_path / "f.pt")]
    assert main([*common, "--epochs", "1", "--nproc", "2"]) == 0
    assert "after 1 epochs" in capsys.readouterr().out
    assert main([*common, "--epochs", "2", "--resume"]) == 0  # continued in one process
    assert "after 2 epochs" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "f.pt")["step"] == 4
