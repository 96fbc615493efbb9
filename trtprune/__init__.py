"""trtprune: prune CNNs onto the latency stairs of the inference engine they will run on.

The Python API (:mod:`trtprune.api`) works on live objects; ``trtprune <command>`` is the same stages from a
shell.
"""

__version__ = "0.1.0"

from trtprune.api import (  # noqa: E402 - the version first: the command line reads it without the API
    Budget,
    Device,
    Engine,
    Plan,
    build,
    device,
    evaluate,
    export,
    finetune,
    groups,
    measure,
    profile,
    prune,
    scores,
    search,
)

__all__ = [
    "Budget",
    "Device",
    "Engine",
    "Plan",
    "__version__",
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
]
