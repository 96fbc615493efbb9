"""What NVIDIA hardware a TensorRT latency belongs to: the part of a latency-table key that tells devices apart.

``nvidia-smi`` cannot: on JetPack 6 it names every Orin "Orin (nvgpu)" (AGX, NX and Nano alike), and on any
machine it ignores ``CUDA_VISIBLE_DEVICES``. A Jetson is told apart by

* its board, from the device tree (``/proc/device-tree/model``: "NVIDIA Jetson AGX Orin Developer Kit",
  "NVIDIA Jetson Orin NX Engineering Reference Developer Kit", ...);
* its L4T release (``/etc/nv_tegra_release``: ``# R36 (release), REVISION: 4.0, ...`` -> ``L4T R36.4.0``), which
  fixes the CUDA, cuDNN and driver under TensorRT;
* its power mode (``nvpmodel -q``: ``NV Power Mode: MAXN`` then the mode's number), which caps clocks and
  cores: a 15 W Orin NX is a different device from a 25 W one;
* whether the GPU clock is locked (``jetson_clocks`` sets the GPU devfreq ``min_freq`` to ``max_freq``):
  unlocked clocks scale with load, and latencies measured that way differ.

A discrete GPU is named by ``nvidia-smi -i <first entry of CUDA_VISIBLE_DEVICES>`` (index or UUID; index 0
when unset), i.e. the GPU the CUDA programs here will use (with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, which
NVIDIA recommends for this reason; CUDA's default order is fastest-first). Every probe runs through the
runner, so it reads the device over SSH as well as here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

DEVICE_TREE_MODEL = "/proc/device-tree/model"
L4T_RELEASE = "/etc/nv_tegra_release"
DEVFREQ = "/sys/class/devfreq"
# devfreq nodes of Jetson GPUs: Nano 57000000.gpu, TX2 17000000.gp10b, Xavier 17000000.gv11b,
# Orin 17000000.ga10b (JetPack 5) / 17000000.gpu (JetPack 6)
_GPU_DEVFREQ = ("*.gpu", "*gv11b", "*gp10b", "*ga10b")


def _out(run: Callable, argv: list[str]) -> str | None:
    try:
        r = run(argv)
    except Exception:  # a probe that cannot run says nothing (TrtpruneError: not installed, timeout)
        return None
    return r.output.replace("\x00", "").strip() if r.returncode == 0 else None


def l4t_release(text: str) -> str | None:
    m = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text)
    return f"L4T R{m.group(1)}.{m.group(2)}" if m else None


def power_mode(text: str) -> str | None:
    """``nvpmodel -q`` -> "MAXN (0)"."""
    name = re.search(r"NV Power Mode:\s*(.+)", text)
    number = [ln.strip() for ln in text.splitlines() if ln.strip().isdigit()]
    if not name:
        return None
    return f"{name.group(1).strip()} ({number[-1]})" if number else name.group(1).strip()


def clocks_locked(text: str) -> bool | None:
    """Lines of ``<min_freq> <max_freq>`` of the GPU devfreq nodes: locked when every min equals its max."""
    pairs = [ln.split() for ln in text.splitlines() if len(ln.split()) == 2]
    if not pairs:
        return None
    return all(a == b for a, b in pairs)


def jetson(run: Callable) -> dict | None:
    """The Jetson's identity, or None when this is not a Jetson (no L4T release file)."""
    release = _out(run, ["cat", L4T_RELEASE])
    if release is None:
        return None
    board = _out(run, ["cat", DEVICE_TREE_MODEL]) or "unknown Jetson"
    globs = " ".join(f"{DEVFREQ}/{g}" for g in _GPU_DEVFREQ)
    script = (
        f'for d in {globs}; do [ -r "$d/min_freq" ] && echo "$(cat "$d/min_freq") $(cat "$d/max_freq")"; done; true'
    )
    clocks = _out(run, ["sh", "-c", script])
    return {
        "board": board.splitlines()[0].strip(),
        "l4t": l4t_release(release) or release.splitlines()[0][:60],
        "power_mode": power_mode(_out(run, ["nvpmodel", "-q"]) or "") or "power mode unknown",
        "clocks": {True: "clocks locked", False: "clocks not locked", None: "clocks unknown"}[
            clocks_locked(clocks or "")
        ],
    }


def gpu_name(run: Callable, visible: str | None = None) -> str:
    """The name of the GPU CUDA programs use here (see the module docstring)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    first = (visible or "0").split(",")[0].strip() or "0"
    name = _out(run, ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "-i", first])
    return name.splitlines()[0].strip() if name else "unknown NVIDIA GPU"


def hardware(run: Callable, visible: str | None = None) -> tuple[str, dict]:
    """The key part and the facts: a Jetson's board, L4T, power mode and clocks, or a GPU's name."""
    j = jetson(run)
    if j is not None:
        return " / ".join(j.values()), j
    name = gpu_name(run, visible)
    return name, {"gpu": name}
