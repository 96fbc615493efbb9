"""Logging set-up and progress bars (shown on a terminal, silent in logs and CI)."""

from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now (it may be replaced after set-up, e.g. by pytest)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


_FORMAT = "%(asctime)s %(name)-22s | %(message)s"
_QUIET = False  # -q: warnings only, and no progress bars


def setup(verbose: int = 0, quiet: bool = False, log_file: str | None = None) -> None:
    """On stderr: INFO for trtprune (DEBUG with -vv, WARNING with -q); third-party chatter only with -vv.
    ``log_file``: every trtprune record (DEBUG included) is also appended there, with the date."""
    global _QUIET
    _QUIET = quiet
    logger = logging.getLogger("trtprune")
    stderr_level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    handler = next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)
    if handler is None:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    handler.setLevel(stderr_level)
    for h in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(h)
        h.close()
    if log_file:
        to_file = logging.FileHandler(log_file, encoding="utf-8")
        to_file.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        to_file.setLevel(logging.DEBUG)
        logger.addHandler(to_file)
    logger.setLevel(logging.DEBUG if log_file or verbose > 1 else stderr_level)
    for noisy in ("onnxscript", "onnx_ir", "torch", "torch.onnx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.ERROR)


def progress(iterable=None, **kwargs):
    """tqdm that hides itself when stderr is not a terminal, and in processes of rank > 0 (torch.distributed)."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", None if os.environ.get("RANK", "0") in ("", "0") and not _QUIET else True)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
