"""The `trtprune` program's first instant: Ctrl-C and SIGTERM are handled before the command line imports
torch, onnx and ONNX Runtime, which take seconds on a loaded machine.

A signal that lands during those imports is held until they end, then stops the program with the same one
line and status as one that lands later (nothing has been written yet). It cannot be raised where it lands:
an exception raised inside torch's C++ module initialisation aborts the process (``std::terminate``, status
134), and without a handler SIGTERM killed the program without a word.
"""

from __future__ import annotations

import signal
import sys
import threading

INTERRUPTED = "interrupted; finished files are kept, re-run to resume"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that temporary files are removed and open transactions rolled back."""


def on_sigterm(signum, frame):
    raise Terminated


def interrupted(command: str, e: KeyboardInterrupt) -> int:
    """Print the one line of a stopped command; its exit status (130 for Ctrl-C, 143 for SIGTERM)."""
    print(f"trtprune {command}: {INTERRUPTED}" if command else f"trtprune: {INTERRUPTED}", file=sys.stderr)
    return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    held: list[int] = []
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_int = signal.signal(signal.SIGINT, lambda signum, frame: held.append(signum))
        signal.signal(signal.SIGTERM, lambda signum, frame: held.append(signum))
    try:
        from trtprune.cli import main as cli_main
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, on_sigterm)
    if held:
        args = sys.argv[1:] if argv is None else argv
        command = args[0] if args and not args[0].startswith("-") else ""
        return interrupted(command, Terminated() if held[0] == signal.SIGTERM else KeyboardInterrupt())
    return cli_main(argv)
