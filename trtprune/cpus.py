"""The CPUs this process may run on (its affinity mask on Linux, else every CPU of the machine)."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
