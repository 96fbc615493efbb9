"""trtprune: prune CNNs onto the latency stairs of the inference engine they will run on.

The Python API (:mod:`trtprune.api`) works on live objects: ``trtprune.search(model, ...)``,
``trtprune.prune(...)`` and the other stages; ``trtprune <command>`` is the same stages from a shell.
"""

__version__ = "0.1.0"

# The API is loaded on first use (PEP 562), not here: `python -m trtprune` imports this package before its
# __main__ can take the working directory off sys.path, and the API's imports (numpy, torch) would then pick
# up a stray numpy.py lying there.
_API = (
    "Budget",
    "Device",
    "Engine",
    "Plan",
    "build",
    "device",
    "evaluate",
    "export",
    "finetune",
    "groups",
    "measure",
    "profile",
    "prune",
    "scores",
    "search",
    "task",
)
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module("trtprune.api"), name)
    raise AttributeError(f"module 'trtprune' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(__all__)
