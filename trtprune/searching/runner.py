"""One search, end to end: importance scores, the search space on the device, the searcher, the plan."""

from __future__ import annotations

import copy
import logging
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from torch import nn

from trtprune.deploy.export import onnx_from_torch
from trtprune.errors import TrtpruneError
from trtprune.latency import get_backend
from trtprune.profiling.lut import LUT, check_lut_path
from trtprune.profiling.predict import Predictor, device_form, export_timed
from trtprune.pruning.blocks import remove_blocks
from trtprune.pruning.importance import needs_data
from trtprune.pruning.prune import GroupPruner, check_round_to
from trtprune.searching import get_searcher
from trtprune.searching.depth import Depth, DepthSearch
from trtprune.searching.plan import Budget, Plan
from trtprune.searching.space import SearchSpace
from trtprune.sources.images import Images, open_images
from trtprune.sources.models import ModelSpec
from trtprune.sources.weights import load_model
from trtprune.training.proxy import adaptive_bn_metric

log = logging.getLogger(__name__)

RANKED = ("locp", "knapsack", "lap")  # searchers whose plans follow the cost: variants of it can be ranked
DEPTH_FIRST = ("locp", "knapsack", "lap")  # the latency-aware searchers remove blocks first; baselines do not
PROXY_REWARD = ("lap",)  # its reward is accuracy (the proxy) where the search has training images
DEPTH_RETRIES = 2  # channel searches again when blocks and channels together measure over the budget, or far under
SCORE_BATCHES = 8  # training batches of 64 whose loss gradient gives the Taylor scores
SCORE_BATCH_SIZE = 64


def score_batches(data, spec, n: int = SCORE_BATCHES, batch_size: int = SCORE_BATCH_SIZE):
    """The first ``n`` training batches, unshuffled and unaugmented: the same ones every time. ``data``: a
    dataset name for :func:`open_images`, or the training Images themselves."""
    train = data if isinstance(data, Images) else open_images(data, "train", spec.input_shape)
    return list(train.limit(n * batch_size).batches(batch_size, spec.mean, spec.std))


def channel_scores(model, spec, importance: str, data, ignore: Iterable[str] = (), task=None):
    """Importance of every channel of every group of ``model`` (see trtprune.pruning.importance), data-driven
    criteria through the ``task``'s loss (None: cross-entropy); modules in ``ignore`` keep their outputs, so their
    groups have none."""

    batches = score_batches(data, spec) if needs_data(importance) else None
    return GroupPruner(model, spec.input_shape, ignore).scores(importance, batches, task.loss if task else None)


def prune_with_data(
    model: nn.Module, spec, plan: Plan, importance: str, data, ignore: Iterable[str] = (), task=None
) -> None:
    """Prune ``model`` in place to ``plan``, dropping the channels least important by ``importance`` on the
    dataset ``data`` (the first training batches): the prune stage of the command line and of ``trtprune run``
    (the API's :func:`trtprune.prune` on loaders). The history is left in ``model.trtprune_history``. ``ignore``:
    by default the modules the plan was searched with kept whole."""
    ignore = tuple(ignore) or tuple(plan.meta.get("ignore", ()))
    removed = remove_blocks(model, plan.remove_blocks, spec.input_shape)
    pruner = GroupPruner(model, spec.input_shape, ignore)
    pruner.check_plan(plan.keep_channels, complete=True)  # before the data is read
    scores = channel_scores(model, spec, importance, data, ignore, task)
    pruner.prune_to(plan.keep_channels, scores=scores, complete=True)
    model.trtprune_history = getattr(model, "trtprune_history", []) + removed + pruner.history()


def search(
    model_name: str | ModelSpec,
    weights: str | Path | None,
    device,
    budget: Budget,
    method: str,
    *,
    workdir: Path,
    lut_path: str | Path | None = None,
    importance: str = "fisher",
    data: str | None = None,
    round_to: int = 1,
    protocol: str = "full",
    ignore: Iterable[str] = (),
    min_fraction: float = 0.1,
    ranked: Sequence[tuple[str, float]] = (),
    stairs_from: str = "layers",
    remove_depth: bool = True,
    task=None,
    module: nn.Module | None = None,
    proxy: bool = True,
) -> Plan:
    """Search a plan for the model ``model_name`` (a name or a spec) with ``weights``, its channels scored on the
    dataset ``data``: the command line's door onto :func:`search_module`. ``ranked``: (importance, floor) variants
    whose plans are ranked with the search's own by the accuracy proxy on the training images. With ``remove_depth``
    (latency-aware methods), residual blocks are removed first (:mod:`trtprune.searching.depth`) while the network
    stays above the budget, and the channels of the shallower network close the rest. ``task``
    (:mod:`trtprune.tasks`; None: classification) gives the loss of the data-driven importance criteria and the
    metric of the accuracy proxy. ``module``: a live model to search (the API's), described by ``model_name`` (then
    a ModelSpec) instead of loaded; ``proxy=False``: no training images to score plans by (lap ranks by importance)."""
    get_searcher(method, **_options(method, round_to))  # an unknown method fails before any work
    check_lut_path(lut_path)
    t0 = time.perf_counter()
    model, spec = (module, model_name) if module is not None else load_model(model_name, weights)
    vs_fp32 = None
    if budget.ms is not None:
        check_below_dense(model, spec.input_shape, device, budget, Path(workdir) / "dense")
    if budget.fraction is not None and device.int8_form == "ort":
        budget, vs_fp32 = int8_budget(budget, model, spec.input_shape, device, Path(workdir) / "int8")
    dense, depth, asked = model, None, budget
    if remove_depth and method in DEPTH_FIRST:
        model = copy.deepcopy(dense)
        with get_backend(device) as backend:
            found = DepthSearch(dense, spec.input_shape, backend, Path(workdir) / "depth", ignore)
            if found.blocks:  # the training images are opened only for a model with blocks to score
                train = open_images(data, "train", spec.input_shape)
                depth = found.search(budget, train, spec.mean, spec.std, task)
            else:
                depth = Depth()
        remove_blocks(model, depth.removed)
        if depth.removed:
            log.info(
                "depth    | %d of %d blocks removed: %.3fx measured; channels close the rest",
                len(depth.removed),
                len(depth.drop),
                depth.measured_ms / depth.baseline_ms,
            )
        budget = depth.channel_budget(budget)
    variants, rank = [], None
    if ranked:
        scores_of = {importance: None}
        for criterion, _ in ranked:
            if criterion not in scores_of:
                scores_of[criterion] = channel_scores(model, spec, criterion, data, ignore, task)
        variants = [
            (f"{c}, floor {f:g}", scores_of[c], f, c) for c, f in ranked if (c, f) != (importance, min_fraction)
        ]
    if proxy and (ranked or method in PROXY_REWARD):
        rank = proxy_ranker(model, spec, open_images(data, "train", spec.input_shape), ignore, task)
    scores = channel_scores(model, spec, importance, data, ignore, task)

    def channels(b: Budget) -> Plan:
        return search_module(
            model,
            spec.input_shape,
            device,
            b,
            method,
            scores=scores,
            name=spec.name,
            workdir=workdir,
            lut_path=lut_path,
            importance=importance,
            round_to=round_to,
            protocol=protocol,
            ignore=ignore,
            min_fraction=min_fraction,
            variants=variants,
            rank=rank,
            stairs_from=stairs_from,
        )

    plan = channels(budget)
    if depth is not None and depth.removed:
        plan = _with_depth(plan, dense, model, spec, device, asked, depth, Path(workdir))
        plan = _settle(
            plan,
            budget,
            asked,
            lambda b: _with_depth(channels(b), dense, model, spec, device, asked, depth, Path(workdir)),
        )
    if vs_fp32 is not None:
        plan.meta["budget_vs_fp32"] = vs_fp32
    plan.meta["wall_s"] = time.perf_counter() - t0  # the whole search; search_s is the channel searcher's last loop
    return plan


def check_below_dense(model: nn.Module, input_shape, device, budget: Budget, workdir: Path) -> None:
    """A budget in milliseconds must be below the unpruned model's latency, measured here before any work (a budget
    above it would search and confirm a plan that keeps every channel)."""
    workdir.mkdir(parents=True, exist_ok=True)
    with get_backend(device) as backend:
        dense_ms = backend.measure(export_timed(model, workdir / "dense.onnx", input_shape, backend)).median_ms
    if budget.ms >= dense_ms:
        raise TrtpruneError(
            f"the budget {budget} is not below the unpruned model's latency ({dense_ms:.3f} ms, measured on "
            f"{device.name})",
            why="the unpruned model already meets it: a plan would keep every channel",
            fix=f"ask for less than {dense_ms:.3f} ms (e.g. --budget-ms {dense_ms / 2:.3g}), or a fraction of the "
            "baseline (--budget 0.5x)",
        )


def int8_budget(budget: Budget, dense: nn.Module, input_shape, device, workdir: Path) -> tuple[Budget, dict]:
    """On an int8 ONNX Runtime device a fractional budget is stated against the fp32 dense model (what the user
    runs today): ``0.25x`` is a quarter of its latency. The search works against the INT8 dense model, so the
    budget becomes ``0.25 / r`` of it, with ``r`` the INT8 dense / fp32 dense latency measured in one interleaved
    run here. Returns that budget and the facts of the conversion."""
    workdir.mkdir(parents=True, exist_ok=True)
    with get_backend(device) as backend:
        fp32 = onnx_from_torch(dense, workdir / "dense-fp32.onnx", tuple(input_shape), device.batch).path
        int8 = Path(shutil.copyfile(fp32, workdir / "dense-int8.onnx"))  # one export; its Q/DQ form beside it
        device_form(int8, backend)
        t_fp32, t_int8 = backend.compare([fp32, int8], rounds=backend.deciding_rounds)
    ratio = t_int8.median_ms / t_fp32.median_ms
    fraction = round(budget.fraction / ratio, 4)
    log.info(
        "int8     | INT8 dense %.3f ms = %.3fx of fp32 dense %.3f ms (one run): %s of fp32 is %.3fx of INT8 dense",
        t_int8.median_ms,
        ratio,
        t_fp32.median_ms,
        budget,
        fraction,
    )
    if fraction >= 1:
        raise TrtpruneError(
            f"the budget {budget} of the fp32 model is met by INT8 alone: the INT8 dense model measured "
            f"{ratio:.3f}x of the fp32 one here",
            why="on an int8 device a budget is a fraction of the fp32 dense model's latency; there is nothing to prune",
            fix=f"quantize without pruning (trtprune quantize --target ort), or ask for less than {ratio:.2f}x",
        )
    facts = {
        "budget": str(budget),
        "fp32_dense_ms": t_fp32.median_ms,
        "int8_dense_ms": t_int8.median_ms,
        "int8_vs_fp32": ratio,
        "searched": f"{fraction:g}x",
    }
    return Budget(fraction=fraction), facts


def _settle(plan: Plan, budget: Budget, asked: Budget, again) -> Plan:
    """Blocks and channels together, measured whole in one run, drift from the channel search's own runs by a few
    percent. Over the budget: the channels again under a budget tightened by the measured excess. More than
    ``Budget.BAND`` under it: again under one loosened by the measured slack (latency the budget allowed, given
    back as channels), and the looser plan kept only if it still meets the budget. At most ``DEPTH_RETRIES``
    more searches; ``again(channel_budget)`` searches and measures one."""
    for retry in range(1, DEPTH_RETRIES + 1):
        ratio = plan.measured_ms / asked.target_ms(plan.baseline_ms)
        met = plan.meta["met"]
        if met and ratio >= 1 - Budget.BAND:
            break
        fraction = round(budget.fraction / ratio, 4)
        if fraction >= 1:  # the shallower network whole would meet it: the depth search stopped above the budget
            break
        budget = Budget(fraction=fraction)
        log.info(
            "depth    | %.1f %% %s budget as measured: channels again for %s",
            abs(100 * ratio - 100),
            "under the" if met else "over",
            budget,
        )
        candidate = again(budget)
        if met and not candidate.meta["met"]:
            log.info("depth    | the looser channels measured over the budget: the plan before is kept")
            plan.meta["retries"] = retry
            break
        plan = candidate
        plan.meta["retries"] = retry
    return plan


def _with_depth(plan: Plan, dense, shallow, spec, device, budget: Budget, depth: Depth, workdir: Path) -> Plan:
    """``plan`` (searched on the network without the removed blocks, under what the removals left of the budget)
    stated against the dense network: both measured whole in one interleaved run."""
    pruned = copy.deepcopy(shallow)  # latency does not depend on the weights: l1 picks the channels
    GroupPruner(pruned, spec.input_shape).prune_to(plan.keep_channels)
    with get_backend(device) as backend:
        base, sub = _measure_pair(backend, dense, pruned, spec.input_shape, workdir / "depth")
    plan.meta["depth"] = depth.to_dict()
    plan.meta["channel_budget"] = plan.budget
    plan.budget = str(budget)
    plan.meta["met"] = budget.met(sub, base)
    plan.remove_blocks = list(depth.removed)
    plan.baseline_ms, plan.measured_ms = base, sub
    log.info("depth    | blocks and channels together: %.3f of %.3f ms measured (%.3fx)", sub, base, sub / base)
    return plan


def _measure_pair(backend, dense: nn.Module, pruned: nn.Module, input_shape, workdir: Path) -> tuple[float, float]:
    paths = [
        export_timed(m, workdir / f"{tag}.onnx", input_shape, backend)
        for tag, m in (("final-dense", dense), ("final", pruned))
    ]
    base, sub = backend.compare(paths, rounds=backend.deciding_rounds)
    return base.median_ms, sub.median_ms


def proxy_ranker(model: nn.Module, spec, train, ignore: Iterable[str] = (), task=None):
    """``rank([(space, plan), ...])`` for :meth:`Searcher.search_ranked`: each plan applied to a copy of ``model``
    (channels chosen by its space's scores), scored by the adaptive-BN proxy: BatchNorm re-estimated on training
    images, then the task's metric (top-1 on held-out training images for classification)."""

    def rank(pairs) -> list[float]:
        out = []
        for space, keep in pairs:
            pruned = copy.deepcopy(model)
            GroupPruner(pruned, spec.input_shape, ignore).prune_to(keep, scores=space.scores)
            out.append(adaptive_bn_metric(pruned, train, spec.mean, spec.std, task))
        return out

    return rank


def _options(method: str, round_to: int) -> dict:
    return {"round_to": round_to} if method in ("uniform", "flops") else {}


def search_module(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    device,
    budget: Budget,
    method: str = "locp",
    *,
    scores: Mapping[str, np.ndarray],
    workdir: str | Path,
    name: str = "model",
    lut_path: str | Path | None = None,
    importance: str = "fisher",
    round_to: int = 1,
    protocol: str = "full",
    ignore: Iterable[str] = (),
    min_fraction: float = 0.1,
    variants: Sequence[tuple[str, Mapping[str, np.ndarray] | None, float | None, str | None]] = (),
    rank=None,
    stairs_from: str = "layers",
) -> Plan:
    """Search per-group channel counts of ``model`` (left as it is) that meet ``budget`` on ``device``, measured
    on the device's engine; ``scores`` are its channels' importance (:meth:`GroupPruner.scores`), the cost the
    searchers minimise. Sub-nets are exported to ``workdir``; the latency table is ``lut_path`` (None: the user
    cache's); every group keeps at least ``min_fraction`` of its channels. With ``variants`` ((label, scores, floor,
    importance) - None keeps the search's own) and ``rank`` (:func:`proxy_ranker`), the plans of the variants are
    ranked by accuracy and the best is measured (:meth:`Searcher.search_ranked`). Raises TrtpruneError when the
    measured latency never meets the budget."""
    options = _options(method, round_to)
    searcher = get_searcher(method, **options)
    if options:  # uniform and flops round to a multiple: one larger than every group prunes nothing
        check_round_to(GroupPruner(model, input_shape, ignore).groups(), round_to)
    if method == "flops":
        searcher = get_searcher(method, **options, magnitude=GroupPruner(model, input_shape, ignore).scores("l2"))
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with get_backend(device) as backend, LUT(lut_path) as lut:
        # ``protocol``: see trtprune.profiling.profile.PROTOCOLS
        predictor = Predictor(model, backend, lut, workdir, protocol, ignore, input_shape=input_shape)
        space = SearchSpace.build(predictor, scores, min_fraction=min_fraction, stairs_from=stairs_from)
        space.label = f"{importance}, floor {min_fraction:g}"
        if rank is not None and method in PROXY_REWARD:
            space.accuracy = lambda keep: rank([(space, keep)])[0]
        if variants and rank is not None and method in RANKED:
            spaces = [space] + [space.variant(label, sc, floor) for label, sc, floor, _ in variants]
            result = searcher.search_ranked(spaces, budget, rank)
            importance = {s.label: imp for s, (*_, imp) in zip(spaces[1:], variants)}.get(
                result.get("chosen"), importance
            ) or importance
        else:
            result = searcher.search(space, budget)
        key, profiler = predictor.profiler.key(), predictor.profiler
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
        input_shape=list(input_shape),
        candidates=space.candidates,
        overhead=predictor.overhead.to_dict(),
        # single-layer points timed on the device for this search (the rest came from the latency table)
        points_measured=profiler.measured,
        points_requested=profiler.requested,
        points_retimed=profiler.retimed,
        min_fraction=min_fraction,
        stairs_from=stairs_from,
    )
    if getattr(searcher, "proxy_scores", None):  # lap scored its best episodes by the accuracy proxy
        meta["proxy_scores"] = searcher.proxy_scores
    return Plan(
        model=name,
        device=device.name,
        method=method,
        budget=str(budget),
        keep_channels=result["keep_channels"],
        channels=space.full,
        lut_key=key,
        baseline_ms=result["baseline_ms"],
        predicted_ms=result["predicted_ms"],
        measured_ms=result["measured_ms"],
        meta=meta,
    )
