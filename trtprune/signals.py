"""Ctrl-C and SIGTERM: how a stopped command ends (one line, exit status 130 or 143).

SIGTERM is raised like Ctrl-C so that temporary files are removed and open transactions rolled back; files
finished before the signal are kept, so re-running resumes.
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED = "interrupted; finished files are kept, re-run to resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C."""


def on_sigterm(signum, frame):
    raise Terminated


def interrupted(command: str, e: KeyboardInterrupt) -> int:
    """Print the one line of a stopped command; its exit status (130 for Ctrl-C, 143 for SIGTERM)."""
    print(f"trtprune {command}: {INTERRUPTED}" if command else f"trtprune: {INTERRUPTED}", file=sys.stderr)
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)
