"""Turn the report of `make engine` into bench/results/engine.json (keys of shared BENCHMARKS.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from trtprune.fsutil import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("report", help="runs/<name>/report.json")
    ap.add_argument("output", help="bench/results/engine.json")
    ap.add_argument("--command", required=True, help="the make command that produced the report")
    a = ap.parse_args()
    r = json.loads(Path(a.report).read_text())
    prov = r["provenance"]
    write_json(
        a.output,
        {
            "command": a.command,
            "date": prov["date"],
            "commit": prov["commit"],
            "machine": prov["machine"],
            "versions": prov["versions"],
            "model": r["model"],
            "device": r["device"],
            "method": {k: v for k, v in r["method"].items() if k not in ("keep_channels", "channels")},
            "keep_channels": r["method"]["keep_channels"],
            "baseline_ms": r["baseline"]["latency"]["median_ms"],
            "pruned_ms": r["pruned"]["latency"]["median_ms"],
            "baseline_p90_ms": r["baseline"]["latency"]["p90_ms"],
            "pruned_p90_ms": r["pruned"]["latency"]["p90_ms"],
            "latency_n": [r["baseline"]["latency"]["n"], r["pruned"]["latency"]["n"]],
            "speedup": r["speedup"],
            "baseline_top1": r["baseline"]["top1"],
            "pruned_top1": r["pruned"]["top1"],
            "test_images": r["eval"]["images"],
            "epochs": r["finetune"]["epochs"],
            "finetune": r["finetune"],
            "baseline_macs": r["baseline"]["macs"],
            "pruned_macs": r["pruned"]["macs"],
            "baseline_params": r["baseline"]["params"],
            "pruned_params": r["pruned"]["params"],
        },
    )
    print(f"wrote {a.output}")


if __name__ == "__main__":
    main()
