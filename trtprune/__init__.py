"""trtprune: prune CNNs onto the latency stairs of the inference engine they will run on.

The Python API (:mod:`trtprune.api`) works on live objects; ``trtprune <command>`` is the same stages from a
shell.
"""

__version__ = "0.1.0"

from trtprune import api  # noqa: E402 - the version first: the command line reads it without the API
from trtprune.api import *  # noqa: E402, F403 - the stages: trtprune.search(...), trtprune.prune(...), ...

__all__ = ["__version__", *api.__all__]
