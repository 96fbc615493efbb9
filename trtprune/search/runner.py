"""One search, end to end: importance scores, the search space on the device, the searcher, the plan."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.profiling.lut import LUT
from trtprune.profiling.predict import Predictor
from trtprune.pruning.importance import needs_data
from trtprune.pruning.prune import GroupPruner, check_round_to
from trtprune.search import get_searcher
from trtprune.search.plan import Budget, Plan
from trtprune.search.space import SearchSpace
from trtprune.sources.images import Images, open_images
from trtprune.sources.models import ModelSpec
from trtprune.sources.weights import load_model

log = logging.getLogger(__name__)

SCORE_BATCHES = 8  # training batches of 64 whose loss gradient gives the Taylor scores
SCORE_BATCH_SIZE = 64


def score_batches(data, spec, n: int = SCORE_BATCHES, batch_size: int = SCORE_BATCH_SIZE):
    """The first ``n`` training batches, unshuffled and unaugmented: the same ones every time. ``data``: a
    dataset name for :func:`open_images`, or the training Images themselves."""
    train = data if isinstance(data, Images) else open_images(data, "train", spec.input_shape)
    return list(train.limit(n * batch_size).batches(batch_size, spec.mean, spec.std))


def channel_scores(model, spec, importance: str, data: str | None, ignore: Iterable[str] = ()):
    """Importance of every channel of every group of ``model`` (see trtprune.pruning.importance); modules in
    ``ignore`` keep their outputs, so their groups have none."""

    batches = score_batches(data, spec) if needs_data(importance) else None
    return GroupPruner(model, spec.input_shape, ignore).scores(importance, batches)


def search(
    model_name: str | ModelSpec,
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
    """Search a plan for ``model_name`` (a name or a spec) on ``device`` under ``budget``; sub-nets are written to
    ``workdir``."""

    searcher_options = {"round_to": round_to} if method in ("uniform", "flops") else {}
    get_searcher(method, **searcher_options)  # an unknown method fails before any work
    model, spec = load_model(model_name, weights)
    if searcher_options:  # uniform and flops round to a multiple: one larger than every group prunes nothing
        check_round_to(GroupPruner(model, spec.input_shape, ignore).groups(), round_to)
    scores = channel_scores(model, spec, importance, data, ignore)
    if method == "flops":
        searcher_options["magnitude"] = channel_scores(model, spec, "l2", data, ignore)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with get_backend(device) as backend, LUT(lut_path) as lut:
        # a user file.py:factory, not its spec name; ``protocol``: see trtprune.profiling.profile.PROTOCOLS
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
