"""make bench-finetune: wall time of a fine-tuning step, eager and with --compile (torch.compile); with
``--settings``, the step time of every memory layout and arithmetic this host offers.

``--settings``: the same pruned ResNet-56 and teacher at batch 128, each setting (NCHW / channels-last, fp32 /
bf16 autocast where native) timed for ``--rounds`` steps interleaved round by round (as trtprune's fine-tuning
does on its first batch to pick one, with 3 rounds). One row per host under ``settings`` in
bench/results/finetune.json, kept across runs and machines (a host's row is replaced by its newer one).

ResNet-56 (published weights) pruned uniformly (37 % of every group, about as many channels as the 0.5x
plans keep), fine-tuned as bench-search does it (batch 128, distillation 0.5 from the unpruned model, the
machine's default arithmetic) for 2 short epochs on the first ``--images`` training images: 50 full batches
and one ragged last batch, as a whole epoch has. Epoch 1 includes torch.compile's compilations (one per
batch shape); epoch 2 is the steady state. Figures: seconds per step in epoch 2, the compile overhead
(epoch 1 minus epoch 2), the epoch count after which --compile has paid for itself on a full epoch of
CIFAR-10, and how far the two runs' losses agree. Writes bench/results/finetune.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import replace
from pathlib import Path

from trtprune.config import FinetuneConfig
from trtprune.fsutil import write_json
from trtprune.log import setup
from trtprune.provenance import provenance
from trtprune.pruning.prune import GroupPruner, uniform_plan
from trtprune.sources.datasets import load_split
from trtprune.sources.images import as_images
from trtprune.sources.weights import load_model, resolve_weights
from trtprune.training.finetune import autocast_dtype, finetune

FULL_EPOCH_STEPS = 391  # CIFAR-10's 50,000 training images in batches of 128


def one_run(cfg: FinetuneConfig, weights, train, work: Path) -> dict:
    model, spec = load_model("resnet56", weights)
    pruner = GroupPruner(model, spec.input_shape)
    pruner.prune_to(uniform_plan(pruner.groups(), 0.37))
    teacher, _ = load_model("resnet56", weights)
    records = finetune(
        model,
        train,
        None,
        spec.mean,
        spec.std,
        cfg,
        checkpoint=work / f"compile{int(cfg.compile)}.pt",
        base_model=spec.name,
        history=pruner.history(),
        teacher=teacher,
        resume=False,
    )
    steps = -(-cfg.train_limit // cfg.batch_size)
    first, steady = (r["train_s"] for r in records)
    return {
        "compile": cfg.compile,
        "epoch_s": [first, steady],
        "step_s": steady / steps,
        "first_epoch_extra_s": first - steady,
        "loss": [r["loss"] for r in records],
    }


def settings_row(weights, train, rounds: int) -> dict:
    import torch

    from trtprune.training import speed

    model, spec = load_model("resnet56", weights)
    pruner = GroupPruner(model, spec.input_shape)
    pruner.prune_to(uniform_plan(pruner.groups(), 0.37))
    teacher, _ = load_model("resnet56", weights)
    teacher.eval()
    images = as_images(train)
    x, y = next(iter(images.batches(128, spec.mean, spec.std, shuffle=True, augment=True, seed=0)))
    native = autocast_dtype("auto") is not None
    best, ms = speed.fastest_setting(model, teacher, x, y, speed.candidates(native), torch.device("cpu"), rounds)
    p = provenance("make bench-finetune FINETUNE_ARGS=--settings")
    return {
        "host": p["machine"]["cpu"],
        "isa": p["machine"]["isa"],
        "threads": torch.get_num_threads(),
        "batch": 128,
        "rounds": rounds,
        "ms_per_step": ms,
        "fastest": best.name,
        "commit": p["commit"],
        "date": p["date"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=6480, help="images per epoch (default 6480: 50 batches + 80)")
    ap.add_argument("--data")
    ap.add_argument("--out", type=Path, default=Path("bench/results/finetune.json"))
    ap.add_argument("--settings", action="store_true", help="time every layout and arithmetic instead")
    ap.add_argument("--rounds", type=int, default=10, help="timed steps per setting with --settings (default 10)")
    a = ap.parse_args(argv)
    setup(0)
    if a.settings:  # rows under "settings" in the same file as the eager / compile record
        out = a.out
        row = settings_row(resolve_weights("resnet56", None, a.data), load_split(a.data, "train"), a.rounds)
        record = json.loads(out.read_text()) if out.is_file() else {}
        rows = record.get("settings", [])
        rows = [r for r in rows if (r["host"], r["isa"]) != (row["host"], row["isa"])] + [row]
        write_json(out, {**record, "settings": rows})
        print(", ".join(f"{n} {v:.0f} ms" for n, v in row["ms_per_step"].items()) + f" per step: {row['fastest']}")
        print(f"wrote {out}")
        return 0
    weights = resolve_weights("resnet56", None, a.data)
    train = load_split(a.data, "train")
    cfg = FinetuneConfig(epochs=2, distill=0.5, train_limit=a.images)
    with tempfile.TemporaryDirectory() as tmp:
        eager = one_run(cfg, weights, train, Path(tmp))
        comp = one_run(replace(cfg, compile=True), weights, train, Path(tmp))
    saved = eager["step_s"] - comp["step_s"]
    result = {
        **provenance("make bench-finetune"),
        "arithmetic": "bf16 autocast" if autocast_dtype(cfg.precision) else "fp32",
        "images_per_epoch": a.images,
        "runs": [eager, comp],
        "speedup": eager["step_s"] / comp["step_s"],
        "break_even_full_epochs": comp["first_epoch_extra_s"] / (saved * FULL_EPOCH_STEPS) if saved > 0 else None,
        "max_loss_rel_diff": max(abs(e - c) / e for e, c in zip(eager["loss"], comp["loss"])),
    }
    write_json(a.out, result)
    print(
        f"eager {eager['step_s']:.3f} s/step, compiled {comp['step_s']:.3f} s/step ({result['speedup']:.2f}x), "
        f"compile overhead {comp['first_epoch_extra_s']:.0f} s; losses agree to {result['max_loss_rel_diff']:.1e}"
    )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
