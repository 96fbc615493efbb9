"""Which channels of a group to remove: importance criteria, by name.

Each criterion maps a Torch-Pruning group (all channels of one group) to one score per channel;
the lowest scores are removed first.

* ``l1``: sum over every conv/linear/BN in the group of the L1 norm of the channel's weights (the
  producers' filters and the consumers' input slices), Torch-Pruning's group magnitude with p=1.
* ``l2``: the same with the L2 norm.
* ``bn``: the absolute BN scale (gamma) of the channel, summed over the group's BNs (Liu et al. 2017).
* ``taylor``: first-order Taylor estimate of the loss change when the channel is removed (Molchanov
  et al. 2019), ``|sum over the channel's weights of w * dL/dw|`` summed over the group, with the
  gradient of the cross-entropy accumulated over a few training batches (eval-mode BN). Unlike the
  magnitudes it is in units of loss, so scores compare across groups: the latency searches use it.

* ``fisher``: the loss increase when the channel is removed, to second order at a minimum (Theis et al.
  2018, "Fisher pruning"; Molchanov et al. 2019's squared Taylor term): ``B/2 * mean over batches of
  (sum over the consumers' input slices of the channel of w * dL/dw)^2``, with ``dL/dw`` the gradient of
  one batch's mean cross-entropy (eval-mode BN, batches of ``B`` images). Masking a channel at every layer
  that reads it removes it, so the inner sum is the mask's gradient; at a pretrained minimum the gradient of
  the whole set is ~0 and ``taylor`` is mostly noise, while the spread of the per-batch gradients (the
  empirical Fisher, ``B`` times their covariance) measures how much the loss curves there. In units of
  loss, like ``taylor``. Depthwise layers are skipped as readers: the layer after them reads the channel.

* ``dynamic``: after LAP (Chen et al., Neural Networks 2022), from how the filters move over a short
  training window (one SGD pass, lr 0.01, momentum 0.9, over the same few batches as ``taylor``; the
  model is restored afterwards). For channel c of a group:

  - change  ``d_c = sum over the group's conv/linear slices of ||W_after[c] - W_before[c]||_2``: a channel
    the loss still moves is one it relies on; one that barely moves contributes little;
  - redundancy ``r_c = mean over the group's producer convs of max_{c' != c} ACS(w_c, w_c')``, with the
    adjusted cosine similarity ``ACS(a, b) = cos(a - m, b - m)`` of the filters after the window,
    ``m`` the layer's mean filter (centring removes what all filters share, as adjusted cosine removes
    a user's mean rating in collaborative filtering);
  - score ``d_c * (1 - max(r_c, 0))``: a moving channel that duplicates another is still cheap to lose.

Sums, not means, over a group's layers: a channel that feeds many layers carries more.
"""

from __future__ import annotations

from trtprune.errors import TrtpruneError

WINDOW_LR = 0.01  # the ``dynamic`` criterion's training window (LAP's short fine-tuning pass)


class Criterion:
    """An importance criterion: ``scorer(model, batches, loss)`` returns ``score(tp_group) -> tensor[channels]``.

    ``needs_data``: it is scored from a few (x, y) training batches (else ``batches`` is None) and the gradient of
    ``loss(outputs, targets)`` on them (the task's loss: cross-entropy for classification).
    ``done(model)`` undoes what scoring left on the model (accumulated gradients).
    """

    needs_data = False

    def scorer(self, model, batches, loss=None):
        raise NotImplementedError

    def done(self, model) -> None:
        pass


class TorchPruningCriterion(Criterion):
    """One of Torch-Pruning's importance classes, by name (looked up only when used)."""

    def __init__(self, cls: str, **kwargs):
        self.cls, self.kwargs = cls, kwargs

    def scorer(self, model, batches, loss=None):
        import torch_pruning as tp

        return getattr(tp.importance, self.cls)(**self.kwargs)


class TaylorCriterion(TorchPruningCriterion):
    """Torch-Pruning's group Taylor score on the loss gradient summed over the batches."""

    needs_data = True

    def scorer(self, model, batches, loss=None):
        accumulate_gradients(model, batches, loss)
        return super().scorer(model, batches)

    def done(self, model) -> None:
        model.zero_grad(set_to_none=True)


class FisherCriterion(Criterion):
    needs_data = True

    def scorer(self, model, batches, loss=None):
        from trtprune.outputs import count

        return FisherImportance(model, batch_gradients(model, batches, loss), count(batches[0][0]))


class DynamicCriterion(Criterion):
    needs_data = True

    def scorer(self, model, batches, loss=None):
        return DynamicImportance(model, training_window(model, batches, loss))


_SUM = {"group_reduction": "sum", "normalizer": None}
IMPORTANCE: dict[str, Criterion] = {
    "l1": TorchPruningCriterion("GroupMagnitudeImportance", p=1, **_SUM),
    "l2": TorchPruningCriterion("GroupMagnitudeImportance", p=2, **_SUM),
    "bn": TorchPruningCriterion("BNScaleImportance", **_SUM),
    "taylor": TaylorCriterion("GroupTaylorImportance", multivariable=True, **_SUM),
    "fisher": FisherCriterion(),
    "dynamic": DynamicCriterion(),
}
DEFAULT_IMPORTANCE = "fisher"  # in units of loss, so scores compare across groups: what the searches need
# Chosen by measurement (`make bench-importance`, docs/benchmarks.md): on ResNet-56 at 0.5x its plan scores 41.7 %
# on the adaptive-BN proxy against taylor's 27.5 % and l1's 13.1 %, and fine-tunes to 89.07 % in 2 epochs.


def get_criterion(name: str) -> Criterion:
    if name not in IMPORTANCE:
        raise TrtpruneError(f"unknown importance criterion '{name}'", fix=f"use one of {', '.join(IMPORTANCE)}")
    return IMPORTANCE[name]


def needs_data(name: str) -> bool:
    return get_criterion(name).needs_data


def _loss(loss):
    """The task's loss, or cross-entropy on integer labels (classification)."""
    import torch.nn.functional as F

    return loss or F.cross_entropy


def training_window(model, batches, loss=None) -> dict:
    """Weights before and after one SGD pass over ``batches``; the model is left as it was (BN included)."""
    import copy

    import torch

    loss = _loss(loss)
    saved = copy.deepcopy(model.state_dict())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(model.parameters(), lr=WINDOW_LR, momentum=0.9)
    model.train()
    with torch.enable_grad():
        for xb, yb in batches:
            opt.zero_grad(set_to_none=True)
            loss(model(xb), yb).backward()
            opt.step()
    after = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.load_state_dict(saved)
    model.zero_grad(set_to_none=True)
    model.eval()
    return {"before": before, "after": after}


def adjusted_cosine_redundancy(filters):
    """Per row of ``filters`` (channels x weights): the largest adjusted cosine similarity to another row."""
    import torch

    x = filters - filters.mean(0, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    sim = x @ x.T
    sim.fill_diagonal_(-1.0)
    return sim.max(1).values if len(x) > 1 else torch.zeros(len(x))


class DynamicImportance:
    """The ``dynamic`` criterion for one Torch-Pruning group, given :func:`training_window`'s weights."""

    def __init__(self, model, window: dict):
        self.names = {m: n for n, m in model.named_modules()}
        self.window = window

    def __call__(self, group):
        import torch
        import torch_pruning as tp
        from torch import nn

        outs = (tp.prune_conv_out_channels, tp.prune_linear_out_channels)
        ins = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
        size = len(group[0].root_idxs)
        change, redundancy, producers = torch.zeros(size), torch.zeros(size), torch.zeros(size)
        for i, (dep, idxs) in enumerate(group):
            layer, fn, root = dep.layer, dep.pruning_fn, group[i].root_idxs
            if not isinstance(layer, (nn.Conv2d, nn.Linear)) or fn not in outs + ins or any(r is None for r in root):
                continue
            if fn in ins and isinstance(layer, nn.Conv2d) and layer.groups > 1:
                continue  # depthwise/grouped: scored as producers
            key = f"{self.names[layer]}.weight"
            before, after = self.window["before"][key], self.window["after"][key]
            if fn in ins:
                before, after = before.transpose(0, 1), after.transpose(0, 1)
            rows_b, rows_a = before.flatten(1)[idxs], after.flatten(1)[idxs]
            at = torch.tensor(root, dtype=torch.long)
            change.scatter_add_(0, at, (rows_a - rows_b).norm(dim=1).float())
            if fn in outs:  # redundancy among the layer's own filters, after the window
                red = adjusted_cosine_redundancy(after.flatten(1))[idxs]
                redundancy.scatter_add_(0, at, red.float())
                producers.scatter_add_(0, at, torch.ones(len(at)))
        r = torch.where(producers > 0, redundancy / producers.clamp_min(1), torch.zeros_like(redundancy))
        return change * (1 - r.clamp_min(0))


def batch_gradients(model, batches, loss=None) -> list[dict]:
    """The gradient of each batch's loss (mean cross-entropy by default; BN in eval mode), for every conv and linear
    weight."""
    import torch
    from torch import nn

    loss = _loss(loss)
    weights = {  # frozen layers (ultralytics' DFL conv) have no gradient: they read no channel by the loss
        f"{n}.weight": m.weight
        for n, m in model.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad
    }
    model.eval()
    out = []
    with torch.enable_grad():
        for xb, yb in batches:
            grads = torch.autograd.grad(
                loss(model(xb), yb), list(weights.values()), allow_unused=True, materialize_grads=True
            )
            out.append(dict(zip(weights, grads)))
    return out


class FisherImportance:
    """The ``fisher`` criterion for one Torch-Pruning group, given :func:`batch_gradients` and the batch size."""

    def __init__(self, model, grads: list[dict], batch_size: int):
        self.names = {m: n for n, m in model.named_modules()}
        self.grads, self.batch_size = grads, batch_size

    def __call__(self, group):
        import torch
        import torch_pruning as tp
        from torch import nn

        ins = (tp.prune_conv_in_channels, tp.prune_linear_in_channels)
        mask_grad = torch.zeros(len(self.grads), len(group[0].root_idxs), dtype=torch.float64)
        for i, (dep, idxs) in enumerate(group):
            layer, fn, root = dep.layer, dep.pruning_fn, group[i].root_idxs
            if not isinstance(layer, (nn.Conv2d, nn.Linear)) or fn not in ins or any(r is None for r in root):
                continue
            if isinstance(layer, nn.Conv2d) and layer.groups > 1:
                continue  # depthwise: the layer after it reads the channel
            key, w = f"{self.names[layer]}.weight", layer.weight.detach()
            if key not in self.grads[0]:  # a frozen layer: no gradient of the loss through its weights
                continue
            at = torch.tensor(root, dtype=torch.long)
            for b, g in enumerate(self.grads):
                per_channel = (w * g[key]).transpose(0, 1).flatten(1)[idxs].sum(1)
                mask_grad[b].scatter_add_(0, at, per_channel.double())
        return (mask_grad.pow(2).mean(0) * self.batch_size / 2).float()


def accumulate_gradients(model, batches, loss=None) -> None:
    """Sum the gradient of the loss summed over the images of ``batches`` (each batch's mean loss times its size;
    cross-entropy by default) into ``param.grad`` (BN in eval mode)."""
    import torch

    from trtprune.outputs import count

    loss = _loss(loss)
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for xb, yb in batches:
            (loss(model(xb), yb) * count(xb)).backward()
    for p in model.parameters():  # frozen weights: no gradient, so no first-order change of the loss through them
        if p.grad is None:
            p.grad = torch.zeros_like(p)
