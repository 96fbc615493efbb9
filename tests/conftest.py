"""Shared fixtures: small generated data for most tests, the real shared data where it is present."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from trtprune.cpus import usable_cpus
from trtprune.sources.datasets import synthetic_cifar10

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
ENV_DATA = os.environ.get("TRTPRUNE_DATA")  # read before the autouse fixture below hides it

# `make test` runs one pytest-xdist worker per core: each worker's torch keeps to its share of the cores, and so
# do the processes it starts, instead of every worker spinning one thread per core on all of them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _SHARE = max(1, usable_cpus() // _WORKERS)
    torch.set_num_threads(_SHARE)
    os.environ.setdefault("OMP_NUM_THREADS", str(_SHARE))


def _shared_data() -> Path | None:
    for candidate in (ENV_DATA, SHARED):
        if candidate and (Path(candidate) / "cifar10" / "cifar10_test.npz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The shared real CIFAR-10 and weights; tests that need them skip, saying so, when absent."""
    root = _shared_data()
    if root is None:
        pytest.skip("real data absent: set TRTPRUNE_DATA to a folder with cifar10/ and weights/ (../shared/data)")
    return root


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """No test reads the developer's data or writes the real user cache by accident."""
    monkeypatch.delenv("TRTPRUNE_DATA", raising=False)
    monkeypatch.setenv("TRTPRUNE_CACHE", str(tmp_path_factory.mktemp("cache")))


def write_npz_dataset(root: Path, n_train: int = 256, n_test: int = 128) -> Path:
    (root / "cifar10").mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        x, y = synthetic_cifar10(n, seed)
        np.savez(root / "cifar10" / f"cifar10_{split}.npz", x=x, y=y.astype(np.uint8))
    return root


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A data root in the shared layout with generated images and random ResNet-20 and ResNet-8 weights."""
    from trtprune.sources.models import build_model

    root = write_npz_dataset(tmp_path_factory.mktemp("data"))
    (root / "weights").mkdir()
    torch.manual_seed(0)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in build_model("resnet20").state_dict().items()}},
        root / "weights" / "resnet20-random.th",
    )
    from .small_models import resnet8

    torch.save({"state_dict": resnet8().state_dict()}, root / "weights" / "resnet8-random.th")
    return root


def make_pruned_r20():
    """ResNet-20 (random, seed 0) with every group pruned by half, multiples of 4; and its pruning history."""
    import torch

    from trtprune.pruning.prune import GroupPruner, uniform_plan
    from trtprune.sources.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet20")
    pruner = GroupPruner(model, (3, 32, 32))
    pruner.prune_to(uniform_plan(pruner.groups(), 0.5, 4))
    return model, pruner.history()


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of the CLI run in this process; argparse's exits included."""
    from trtprune.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
