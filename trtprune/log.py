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


def setup(verbose: int = 0) -> None:
    """INFO for trtprune (DEBUG with -vv); third-party chatter only with -vv."""
    logger = logging.getLogger("trtprune")
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)-22s | %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
    for noisy in ("onnxscript", "onnx_ir", "torch", "torch.onnx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose > 1 else logging.ERROR)


def progress(iterable=None, **kwargs):
    """tqdm that hides itself when stderr is not a terminal, and in processes of rank > 0 (torch.distributed)."""
    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", None if os.environ.get("RANK", "0") in ("", "0") else True)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
