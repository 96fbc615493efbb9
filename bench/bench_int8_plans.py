"""make bench-int8 (second part): pruning and INT8 stacked on `cpu-int8`, and a plan searched on INT8 stairs
against one searched on fp32 stairs and then quantized, at the same INT8 latency budget.

Two runs of the whole pipeline (``trtprune run``: search, prune, fine-tune with one recipe, calibrate, deliver)
on this host, each in ``bench/work/int8/<name>`` (an interrupted run resumes there):

* ``int8-aware``: ``--device cpu-int8 --budget B`` - the budget B is a fraction of the fp32 dense model's
  latency; the search measures the INT8 Q/DQ form (ONNX Runtime's uint8/int8 kernels) of every layer and
  network, and the delivered model is that form, calibrated after fine-tuning in fp32.
* ``fp32-then-int8``: the usual way - search on `cpu` (fp32 stairs) for ``B / r``, where ``r`` is the INT8 dense
  / fp32 dense latency ratio the first run measured (the budget the fp32 plan must meet for its INT8 form to
  meet B if INT8 sped every plan up alike), fine-tune alike, then quantize the same way.

Then the fp32 dense model, both INT8 models and both fp32 pruned models are timed in ONE interleaved run on
`cpu-int8`'s engine settings (ONNX Runtime, 1 thread, batch 1), and each INT8 model's top-1 is measured on the
test set. Rows go to ``bench/results/int8.json`` under ``rows`` (read, extended, written back), with
``speedup_vs_fp32_dense`` and ``top1_drop_vs_fp32_pruned``; a row already there is kept.

    python bench/bench_int8_plans.py --budget 0.24x --epochs 4

``--no-depth`` searches channels only in both runs (no residual block removed), where the two kinds of stairs
decide the plans; its runs and rows are named with ``-nodepth``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from trtprune.config import FinetuneConfig, RunConfig
from trtprune.deploy.quantize import calibration, check_int8_kernels, qdq_from_onnx
from trtprune.fsutil import write_json
from trtprune.latency import get_backend
from trtprune.latency.devices import get_device
from trtprune.log import setup
from trtprune.metrics import accuracy_onnx
from trtprune.provenance import provenance
from trtprune.run import Run, run_all
from trtprune.searching.plan import Budget
from trtprune.sources.images import open_images


def run(name: str, cfg: RunConfig, data: str | None, work: Path) -> tuple[Run, dict]:
    with Run(work / name, cfg, data, work / "engines") as r:
        report = run_all(r)
    return r, report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--budget", default="0.24x", help="of the fp32 dense model's latency (default 0.24x)")
    ap.add_argument("--method", default="locp")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--no-depth", action="store_true", help="channels only: no residual block removed")
    ap.add_argument("--data")
    ap.add_argument("--work", type=Path, default=Path("bench/work/int8"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/int8.json"))
    a = ap.parse_args(argv)
    setup(0)
    budget = Budget.parse(a.budget)
    ft = FinetuneConfig(epochs=a.epochs, distill=0.5)
    common = dict(model=a.model, method=a.method, finetune=ft, depth=not a.no_depth)
    tag = "-nodepth" if a.no_depth else ""
    t0 = time.perf_counter()

    aware_run, aware = run(
        f"int8-aware{tag}", RunConfig(device="cpu-int8", budget=str(budget), **common), a.data, a.work
    )
    ratio = aware["method"]["meta"]["budget_vs_fp32"]["int8_vs_fp32"]
    fp32_budget = Budget(fraction=round(budget.fraction / ratio, 4))
    naive_run, naive = run(
        f"fp32-then-int8{tag}", RunConfig(device="cpu", budget=str(fp32_budget), **common), a.data, a.work
    )
    # the fp32 plan's INT8 form: calibrated like the delivered INT8-aware model (512 training images, minmax)
    naive_int8 = naive_run.path("pruned.int8.onnx")
    spec = naive_run.spec
    if not naive_int8.is_file():
        qdq_from_onnx(naive_run.path("pruned.onnx"), naive_int8, calibration(None, a.data, spec), target="ort")
    check_int8_kernels(naive_int8)

    files = {
        "fp32 dense": aware_run.path("baseline.onnx"),
        "int8-aware INT8": aware_run.path("pruned.int8.onnx"),
        "int8-aware fp32": aware_run.path("pruned.onnx"),
        "fp32-then-int8 INT8": naive_int8,
        "fp32-then-int8 fp32": naive_run.path("pruned.onnx"),
    }
    device = get_device("cpu-int8")
    with get_backend(device) as backend:
        timings = dict(zip(files, backend.compare(list(files.values()), rounds=backend.deciding_rounds)))
        info = backend.info()
    test = open_images(a.data, "test", spec.input_shape)
    naive_top1 = accuracy_onnx(naive_int8, test, spec.mean, spec.std, desc="top-1 fp32-then-int8")["top1"]
    top1 = {
        "fp32 dense": aware["baseline"]["top1"],
        "int8-aware INT8": aware["pruned"]["top1"],
        "int8-aware fp32": aware["pruned_fp32"]["top1"],
        "fp32-then-int8 INT8": naive_top1,
        "fp32-then-int8 fp32": naive["pruned"]["top1"],
    }
    dense_ms = timings["fp32 dense"].median_ms
    host = {**provenance()["machine"], "name": platform.node()}
    rows = []
    for name, plan in (("int8-aware", aware["method"]), ("fp32-then-int8", naive["method"])):
        ms, fp32_ms = timings[f"{name} INT8"].median_ms, timings[f"{name} fp32"].median_ms
        rows.append(
            {
                "key": f"{a.model}-cpu-int8-{budget}-{a.method}{tag}-{name}-e{a.epochs}",
                "model": a.model,
                "device": "cpu-int8",
                "method": a.method + tag,
                "searched_on": "int8" if name == "int8-aware" else "fp32",
                "budget": f"{budget} of fp32 dense",
                "searched_budget": plan["budget"],
                "epochs": a.epochs,
                "top1": top1[f"{name} INT8"],
                "top1_fp32_pruned": top1[f"{name} fp32"],
                "top1_fp32_dense": top1["fp32 dense"],
                "top1_drop_vs_fp32_pruned": top1[f"{name} fp32"] - top1[f"{name} INT8"],
                "measured_ms": ms,
                "baseline_ms": dense_ms,
                "fp32_pruned_ms": fp32_ms,
                "speedup_vs_fp32_dense": dense_ms / ms,
                "budget_met": Budget.parse(str(budget)).met(ms, dense_ms),
                "measured_in_one_run": True,
                "remove_blocks": plan.get("remove_blocks", []),
                "keep_channels": plan.get("keep_channels"),
                "host": host,
            }
        )
    record = json.loads(a.out.read_text()) if a.out.is_file() else {}
    keys = {r["key"] for r in rows}
    record["rows"] = [r for r in record.get("rows", []) if r.get("key") not in keys] + rows
    record["rows_run" + tag.replace("-", "_")] = {  # the run of the rows of each kind
        **provenance(
            f"python bench/bench_int8_plans.py --model {a.model} --budget {budget} --epochs {a.epochs} "
            f"--method {a.method}{' --no-depth' if a.no_depth else ''}"
        ),
        "device": info,
        "latency_ms": {k: t.to_dict() for k, t in timings.items()},
        "top1": top1,
        "int8_dense_vs_fp32_dense_in_search": ratio,
        "wall_s": time.perf_counter() - t0,
    }
    write_json(a.out, record)
    print(f"fp32 dense {dense_ms:.3f} ms, top-1 {top1['fp32 dense']:.2f} %")
    for r in rows:
        print(
            f"{r['searched_on']:5s}-searched INT8: {r['measured_ms']:.3f} ms "
            f"({r['speedup_vs_fp32_dense']:.2f}x of fp32 dense), top-1 {r['top1']:.2f} % "
            f"({r['top1_drop_vs_fp32_pruned']:+.2f} points below its fp32 pruned {r['top1_fp32_pruned']:.2f} %)"
        )
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
