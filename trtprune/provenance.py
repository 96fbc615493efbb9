"""Where a number came from: date, commit, machine, versions. Attached to every report and benchmark."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from trtprune.latency.ort import cpu_info

PACKAGES = ("torch", "onnxruntime", "onnx", "onnxslim", "torch-pruning", "numpy", "trtprune")


def git_commit(cwd: str | Path | None = None) -> str:
    """HEAD of the repository at ``cwd`` (``+dirty`` if it has uncommitted changes), or 'unknown'."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if head.returncode:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:

    model, isa = cpu_info()
    return {
        "cpu": model,
        "isa": isa,
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }


def versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


def provenance(command: str | None = None) -> dict:
    return {
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "machine": machine(),
        "versions": versions(),
    }
