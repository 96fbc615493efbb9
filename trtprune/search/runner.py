"""One search, end to end: importance scores, the search space on the device, the searcher, the plan."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from ..errors import TrtpruneError
from .plan import Budget, Plan

log = logging.getLogger(__name__)

SCORE_BATCHES = 8  # training batches of 64 whose loss gradient gives the Taylor scores
SCORE_BATCH_SIZE = 64


def score_batches(data: str | None, spec, n: int = SCORE_BATCHES, batch_size: int = SCORE_BATCH_SIZE):
    """The first ``n`` training batches, unshuffled and unaugmented: the same ones every time."""
    import torch

    from .. import data as D
    from ..pipeline import load_split

    x, y = load_split(data, "train", n * batch_size)
    return list(D.batches(D.to_tensor(x), torch.from_numpy(y), batch_size, spec.mean, spec.std))


def channel_scores(model, spec, importance: str, data: str | None, ignore: Iterable[str] = ()):
    """Importance of every channel of every group of ``model`` (see trtprune.importance); modules in
    ``ignore`` keep their outputs, so their groups have none."""
    from ..importance import NEEDS_DATA
    from ..prune import GroupPruner

    batches = score_batches(data, spec) if importance in NEEDS_DATA else None
    return GroupPruner(model, spec.input_shape, ignore).scores(importance, batches)


def search(
    model_name: str,
    weights: str | Path | None,
    device,
    budget: Budget,
    method: str,
    *,
    workdir: Path,
    lut_path: str | Path | None = None,
    importance: str = "taylor",
    data: str | None = None,
    round_to: int = 1,
    protocol: str = "full",
    ignore: Iterable[str] = (),
) -> Plan:
    """Search a plan for ``model_name`` on ``device`` under ``budget``; sub-nets are written to ``workdir``."""
    from ..latency import get_backend
    from ..lut import LUT
    from ..predict import Predictor
    from ..weights import load_model
    from . import get_searcher
    from .space import SearchSpace

    searcher_options = {"round_to": round_to} if method in ("uniform", "flops") else {}
    get_searcher(method, **searcher_options)  # an unknown method fails before any work
    model, spec = load_model(model_name, weights)
    scores = channel_scores(model, spec, importance, data, ignore)
    if method == "flops":
        searcher_options["magnitude"] = channel_scores(model, spec, "l2", data, ignore)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with get_backend(device) as backend, LUT(lut_path) as lut:
        # a user file.py:factory, not its spec name; ``protocol``: see trtprune.profile.PROTOCOLS
        predictor = Predictor(model_name, backend, lut, workdir, protocol, ignore)
        space = SearchSpace.build(predictor, scores)
        result = get_searcher(method, **searcher_options).search(space, budget)
        key = predictor.profiler.key()
    if not result["met"]:
        raise TrtpruneError(
            f"{method} did not reach the budget {budget} as measured: {result['measured_ms']:.3f} ms against a "
            f"baseline of {result['baseline_ms']:.3f} ms ({result['measured_ms'] / result['baseline_ms']:.3f}x)",
            why="the whole network stayed slower than the latency table predicted, round after round",
            fix="ask for a slightly larger budget, or profile again (trtprune profile) on a quieter machine",
        )
    meta = {k: v for k, v in result.items() if k not in ("keep_channels", "predicted_ms", "measured_ms", "baseline_ms")}
    meta.update(
        importance=importance,
        round_to=round_to,
        ignore=list(ignore),
        candidates=space.candidates,
        overhead=predictor.overhead.to_dict(),
    )
    return Plan(
        spec.name,
        device.name,
        method,
        str(budget),
        result["keep_channels"],
        space.full,
        key,
        result["baseline_ms"],
        result["predicted_ms"],
        result["measured_ms"],
        meta,
    )
