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

from trtprune.signals import Terminated, interrupted, on_sigterm


def main(argv: list[str] | None = None) -> int:
    held: list[int] = []

    def hold(signum, frame):
        held.append(signum)

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread:
        previous_int = signal.signal(signal.SIGINT, hold)
        signal.signal(signal.SIGTERM, hold)
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
