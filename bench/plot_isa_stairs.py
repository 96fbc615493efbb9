"""One channel group's measured latency curve from two bench-profile records (e.g. an AVX-512 and an AVX2
host), with each record's exhaustive stair edges marked: where the stairs of one CPU are and the other's
are not.

    python bench/plot_isa_stairs.py bench/results/profile.json bench/results/profile_avx2.json \
        --group layer3.3.conv1 --out bench/results/profile_isa.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trtprune.plots import _pyplot, _save


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("records", type=Path, nargs="+", help="bench/results/profile*.json files")
    ap.add_argument("--group", default="layer3.3.conv1")
    ap.add_argument("--out", type=Path, default=Path("bench/results/profile_isa.png"))
    a = ap.parse_args(argv)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
    for path, color in zip(a.records, ("#1f5fa8", "#c0392b", "#1a8f3c", "#7d3c98")):
        rec = json.loads(path.read_text())
        g = rec["per_group"][a.group]
        lat = [x * 1000 for x in g["latency_exhaustive"]]
        counts = range(1, len(lat) + 1)
        label = f"{rec['device'].get('isa', '?')} ({rec['date'][:10]}, {path.name})"
        ax.plot(counts, lat, "-", lw=1, color=color, label=label)
        edges = [c for c in g["edges_exhaustive"] if c > 8]
        ax.plot(edges, [lat[c - 1] for c in edges], "^", ms=6, color=color, label=f"edges > 8: {edges}")
    ax.set_xlabel(f"channels of {a.group}")
    ax.set_ylabel("latency (us, layers of the group)")
    ax.set_title(f"ResNet-56 {a.group}, ONNX Runtime CPU, 1 thread, batch 1: one sweep per record", fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
