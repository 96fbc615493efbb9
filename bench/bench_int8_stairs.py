"""make bench-int8-stairs: the latency stairs of every channel group on `cpu` (fp32) and `cpu-int8` (ONNX Runtime's
Q/DQ INT8 form), measured on this CPU, side by side.

Both devices are profiled exhaustively (every channel count of every group) with ``trtprune profile``, into one
latency table where each device's points sit under its own key (``...|fp32`` and ``...|int8``). For each group
the benchmark records the stair edges of both (the counts worth keeping), whether they differ, and the INT8
speed-up over fp32 at each count; ``int8_stairs.png`` plots the fp32 and INT8 curves of one group per stage
with their edges marked. Writes ``bench/results/int8_stairs.json``.

    python bench/bench_int8_stairs.py --model resnet56 [--groups layer1.0.conv1,layer2.1.conv1,layer3.1.conv1]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from trtprune.cli import main as trtprune
from trtprune.fsutil import write_json
from trtprune.log import setup
from trtprune.plots import _pyplot, _save
from trtprune.provenance import provenance

DEVICES = ("cpu", "cpu-int8")


def profile(model: str, device: str, lut: Path, out: Path) -> dict:
    """``trtprune profile --method exhaustive`` of ``model`` on ``device``: its stairs.json."""
    argv = ["profile", "--model", model, "--device", device, "--method", "exhaustive", "--lut", str(lut)]
    code = trtprune([*argv, "--out", str(out), "--no-plots", "-q"])
    if code:
        raise SystemExit(f"trtprune profile on {device} failed with status {code}")
    return json.loads((out / "stairs.json").read_text())


def compare(fp32: dict, int8: dict) -> dict:
    """Per group: both devices' edges, whether they differ, and the INT8 speed-up over fp32 by count."""
    out = {}
    for name, g in fp32["groups"].items():
        q = int8["groups"][name]
        speedup = {c: g["latency_ms"][c] / q["latency_ms"][c] for c in g["latency_ms"] if c in q["latency_ms"]}
        out[name] = {
            "channels": g["channels"],
            "edges_fp32": g["edges"],
            "edges_int8": q["edges"],
            "differ": g["edges"] != q["edges"],
            "only_fp32": sorted(set(g["edges"]) - set(q["edges"])),
            "only_int8": sorted(set(q["edges"]) - set(g["edges"])),
            "int8_speedup_min": min(speedup.values()),
            "int8_speedup_max": max(speedup.values()),
            "latency_ms_fp32": g["latency_ms"],
            "latency_ms_int8": q["latency_ms"],
        }
    return out


def plot(groups: dict, names: list[str], model: str, out: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), layout="constrained", squeeze=False)
    for ax, name in zip(axes[0], names):
        g = groups[name]
        for key, edges, color, label in (
            ("latency_ms_fp32", g["edges_fp32"], "#1f5fa8", "fp32"),
            ("latency_ms_int8", g["edges_int8"], "#c0392b", "INT8 (Q/DQ)"),
        ):
            counts = sorted(int(c) for c in g[key])
            us = [g[key][str(c)] * 1000 for c in counts]
            ax.plot(counts, us, color=color, lw=1.2, label=label)
            ax.scatter(edges, [g[key][str(c)] * 1000 for c in edges], color=color, s=14, zorder=3)
        ax.set_title(f"{name} ({g['channels']} ch)", fontsize=9)
        ax.set_xlabel("channels kept")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("group latency (µs, measured)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"{model}: fp32 and INT8 stairs on this CPU (ONNX Runtime, 1 thread); dots: stair edges", fontsize=10)
    _save(fig, out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="resnet56")
    ap.add_argument("--groups", default="layer1.0.conv1,layer2.1.conv1,layer3.1.conv1", help="groups to plot")
    ap.add_argument("--work", type=Path, default=Path("bench/work/int8_stairs"))
    ap.add_argument("--out", type=Path, default=Path("bench/results/int8_stairs.json"))
    a = ap.parse_args(argv)
    setup(0)
    lut = a.work / "lut.sqlite"
    t0 = time.perf_counter()
    found = {d: profile(a.model, d, lut, a.work / d) for d in DEVICES}
    groups = compare(found["cpu"], found["cpu-int8"])
    names = [n for n in a.groups.split(",") if n in groups]
    png = a.out.with_suffix(".png")
    plot(groups, names, a.model, png)
    differ = [n for n, g in groups.items() if g["differ"]]
    record = {
        **provenance(f"make bench-int8-stairs (bench/bench_int8_stairs.py --model {a.model})"),
        "model": a.model,
        "devices": {d: found[d]["device"] for d in DEVICES},
        "lut_keys": {d: found[d]["lut_key"] for d in DEVICES},
        "method": "exhaustive",
        "wall_s": time.perf_counter() - t0,
        "groups_with_different_edges": differ,
        "verdict": (
            f"the stairs differ between fp32 and INT8 in {len(differ)} of {len(groups)} groups"
            if differ
            else "the stairs of fp32 and INT8 have the same edges in every group on this CPU"
        ),
        "groups": groups,
        "plot": str(png),
    }
    write_json(a.out, record)
    print(record["verdict"])
    for n in names:
        g = groups[n]
        print(
            f"{n}: fp32 edges {g['edges_fp32']}, INT8 edges {g['edges_int8']}, INT8 speed-up "
            f"{g['int8_speedup_min']:.2f}-{g['int8_speedup_max']:.2f}x"
        )
    print(f"wrote {a.out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
