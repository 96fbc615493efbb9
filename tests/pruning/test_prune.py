import numpy as np
import pytest
import torch

from trtprune.deploy.export import onnx_from_torch, run_onnx
from trtprune.errors import TrtpruneError
from trtprune.pruning.prune import GroupPruner, replay, uniform_plan
from trtprune.sources.models import BUILTIN, build_model, model_spec
from trtprune.sources.models.shortcut import ChannelPadShortcut

SHAPE = (3, 32, 32)
GROUPS = {
    "resnet20": 12,
    "resnet32": 18,
    "resnet44": 24,
    "resnet56": 30,
    "resnet110": 57,
    "vgg16_bn": 13,
    "mobilenet_v2": 25,
    "resnet18": 12,  # the ImageNet layouts, at 64x64: their groups do not depend on the resolution
    "mobilenet_v2_imagenet": 25,
}
SMALL = {"resnet18": (3, 64, 64), "mobilenet_v2_imagenet": (3, 64, 64)}


def shape(name: str) -> tuple[int, int, int]:
    return SMALL.get(name, SHAPE)


def pruned(name, ratio=0.5, round_to=1, seed=0):
    torch.manual_seed(seed)
    model = build_model(name)
    pruner = GroupPruner(model, shape(name))
    groups = pruner.groups()
    plan = uniform_plan(groups, ratio, round_to)
    pruner.prune_to(plan)
    return model.eval(), pruner, groups, plan


@pytest.mark.parametrize("name", list(BUILTIN))
def test_pruned_model_has_the_planned_channels_and_runs(name):
    model, pruner, groups, plan = pruned(name, 0.5, 1)
    assert len(groups) == GROUPS[name]
    after = {g.name: g.channels for g in pruner.groups()}
    assert after == plan
    assert model(torch.randn(2, *shape(name))).shape == (2, model_spec(name).num_classes)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BUILTIN))
def test_pruned_model_exports_and_matches_onnxruntime(name, tmp_path):
    model, *_ = pruned(name, 0.3, 1)  # odd counts: the general (Gather) form of the shortcut
    onnx_from_torch(model, tmp_path / "m.onnx", shape(name))
    x = torch.randn(1, *shape(name))
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(
        run_onnx(tmp_path / "m.onnx", x.numpy()), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max()
    )


def _randomise_bn(model, gen):
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=gen) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_mean = torch.randn(m.num_features, generator=gen) * 0.1
            m.running_var = torch.rand(m.num_features, generator=gen) + 0.5


@pytest.mark.parametrize("name", list(BUILTIN))
def test_pruning_equals_zeroing_the_removed_channels(name):
    """Removing channels must compute exactly what the dense model computes with them silenced.

    In a copy of the dense model, the BN scale and shift of every removed channel are set to zero, and
    option-A shortcuts emit zeros where a removed channel would carry the previous stage, so the channel
    is 0 after BN, ReLU/ReLU6 and residual adds. The pruned model must match that copy, which checks
    every index mapping of every group.
    """
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model(name)
    _randomise_bn(model, gen)
    silenced = build_model(name)
    silenced.load_state_dict(model.state_dict())
    pruner = GroupPruner(model, shape(name))
    pruner.prune_to(uniform_plan(pruner.groups(), 0.4, 1))
    ref = GroupPruner(silenced, shape(name))
    for module_name, is_out, idxs in pruner.history():
        module = silenced.get_submodule(module_name)
        handler = ref.dg.get_pruner_of_module(module)
        group = ref.dg.get_pruning_group(
            module, handler.prune_out_channels if is_out else handler.prune_in_channels, idxs
        )
        for dep, group_idxs in group:
            target = dep.target.module
            if isinstance(target, torch.nn.BatchNorm2d):
                target.weight.data[group_idxs] = 0.0
                target.bias.data[group_idxs] = 0.0
            elif isinstance(target, ChannelPadShortcut) and ref.dg.is_out_channel_pruning_fn(dep.handler):
                target.gather = [-1 if j in group_idxs else g for j, g in enumerate(target.gather)]
    x = torch.randn(2, *shape(name), generator=gen)
    with torch.no_grad():
        expected, got = silenced.eval()(x), model.eval()(x)
    assert sum(p.numel() for p in model.parameters()) < 0.5 * sum(p.numel() for p in silenced.parameters())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_resnet_groups_follow_the_residual_streams():
    groups = {g.name: g for g in GroupPruner(build_model("resnet20"), SHAPE).groups()}
    stream1 = groups["conv1"]
    assert stream1.producers == ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")
    assert "layer2.0.shortcut" in stream1.consumers and "layer2.0.conv1" in stream1.consumers
    stream2 = groups["layer2.0.conv2"]  # starts after the option-A shortcut: independent of stream 1
    assert stream2.channels == 32 and "layer3.0.shortcut" in stream2.consumers
    assert groups["layer3.0.conv2"].consumers[-1] == "linear"
    assert groups["layer2.1.conv1"].producers == ("layer2.1.conv1",)


def test_the_shortcut_sees_both_sides_of_a_pruned_residual():
    model, *_ = pruned("resnet20", 0.3, 1)
    sc = model.layer2[0].shortcut
    assert sc.in_channels == model.layer1[2].conv2.out_channels
    assert sc.out_channels == model.layer2[0].conv2.out_channels


def test_pruning_removes_the_least_important_channels():
    torch.manual_seed(0)
    model = build_model("resnet20")
    with torch.no_grad():
        model.layer1[0].conv1.weight[[3, 7]] *= 1e-3  # make two filters negligible
    pruner = GroupPruner(model, SHAPE)
    pruner.prune_to({"layer1.0.conv1": 14}, "l1")
    assert pruner.history() == [["layer1.0.conv1", True, [3, 7]]]


def test_a_classifier_that_is_not_registered_last_is_still_kept():
    class SqueezeLast(torch.nn.Module):  # the classifier is registered first, an SE-style linear last
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(16, 10)
            self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(16)
            self.gate = torch.nn.Linear(16, 16)

        def forward(self, x):
            y = torch.relu(self.bn(self.conv(x)))
            pooled = y.mean((2, 3))
            y = y * torch.sigmoid(self.gate(pooled))[:, :, None, None]
            return self.fc(y.mean((2, 3)))

    model = SqueezeLast()
    pruner = GroupPruner(model, SHAPE)
    pruner.prune_to({g.name: g.channels // 2 for g in pruner.groups()})
    assert model(torch.randn(1, *SHAPE)).shape == (1, 10) and model.fc.out_features == 10


def test_history_replays_to_the_same_model():
    model, pruner, *_ = pruned("resnet56", 0.3, 1, seed=1)
    rebuilt = replay(build_model("resnet56"), SHAPE, pruner.history())
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, *SHAPE)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))


@pytest.mark.parametrize(
    "ratio,round_to,expected",
    [
        (0.5, 1, {"a": 8, "b": 32, "c": 12}),
        (0.3, 8, {"a": 8, "b": 48, "c": 16}),
        (0.0, 1, {"a": 16, "b": 64, "c": 24}),
        (0.9, 16, {"a": 16, "b": 16, "c": 16}),
    ],
)
def test_uniform_plan(ratio, round_to, expected):
    from trtprune.pruning.prune import ChannelGroup

    groups = [ChannelGroup(n, c, (n,), ()) for n, c in (("a", 16), ("b", 64), ("c", 24))]
    assert uniform_plan(groups, ratio, round_to) == expected


@pytest.mark.parametrize(
    "plan,message",
    [
        ({"nope": 3}, "does not have: nope"),
        ({"layer1.0.conv1": 0}, "keeps 0 channels"),
        ({"layer1.0.conv1": 17}, "keeps 17 channels"),
    ],
)
def test_bad_plans_are_clear_errors(plan, message):
    pruner = GroupPruner(build_model("resnet20"), SHAPE)
    with pytest.raises(TrtpruneError, match=message):
        pruner.prune_to(plan)


@pytest.mark.parametrize("ratio,round_to", [(1.0, 1), (-0.1, 1), (0.5, 0)])
def test_bad_uniform_settings(ratio, round_to):
    with pytest.raises(TrtpruneError):
        uniform_plan([], ratio, round_to)


def test_dynamic_importance_follows_the_training_window_and_adjusted_cosine_redundancy():
    import numpy as np

    from trtprune.pruning.importance import adjusted_cosine_redundancy
    from trtprune.sources.datasets import synthetic_cifar10, to_tensor

    # redundancy: a duplicated filter scores 1, orthogonal (after centring) filters score low
    f = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])
    r = adjusted_cosine_redundancy(f)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(1.0) and (r[2:] < 0.5).all()

    torch.manual_seed(0)
    model = build_model("resnet20")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = synthetic_cifar10(64, 3)
    xb = to_tensor(x).float() / 255
    batches = [(xb[i : i + 32], torch.from_numpy(y[i : i + 32]).long()) for i in (0, 32)]
    pruner = GroupPruner(model, (3, 32, 32))
    with pytest.raises(TrtpruneError, match="needs training data"):
        pruner.scores("dynamic")
    scores = pruner.scores("dynamic", batches)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # the window left no trace
    assert set(scores) == {g.name for g in pruner.groups()}
    assert all(
        len(s) == g.channels and np.isfinite(s).all() and (s >= 0).all()
        for g, s in zip(pruner.groups(), (scores[g.name] for g in pruner.groups()))
    )
    assert any(s.std() > 0 for s in scores.values())
    again = GroupPruner(model, (3, 32, 32)).scores("dynamic", batches)
    assert all(np.allclose(scores[k], again[k]) for k in scores)  # deterministic for the same batches
    l1 = pruner.scores("l1")
    assert any(np.argsort(scores[k]).tolist() != np.argsort(l1[k]).tolist() for k in scores)  # not magnitude


def test_fisher_importance_is_the_squared_gradient_of_a_channel_mask():
    """Per batch, the sum of w * dL/dw over the readers' input slices of a channel is dL/dm for a mask m on
    the channel at every layer that reads it; the score is B/2 times the batches' mean of its square."""
    import torch.nn.functional as F

    from trtprune.sources.datasets import synthetic_cifar10, to_tensor

    torch.manual_seed(0)
    model = build_model("resnet20").eval()
    x, y = synthetic_cifar10(96, 3)
    xb = to_tensor(x).float() / 255
    batches = [(xb[i : i + 32], torch.from_numpy(y[i : i + 32]).long()) for i in (0, 32, 64)]
    pruner = GroupPruner(model, SHAPE)
    with pytest.raises(TrtpruneError, match="needs training data"):
        pruner.scores("fisher")
    scores = pruner.scores("fisher", batches)
    assert set(scores) == {g.name for g in pruner.groups()} and all((s >= 0).all() for s in scores.values())
    modules = dict(model.named_modules())
    for name, readers, width in (
        ("layer2.1.conv1", ["layer2.1.conv2"], 32),  # inside a block
        ("layer3.0.conv2", ["layer3.1.conv1", "layer3.2.conv1", "linear"], 64),  # a residual stream
    ):
        squares = []
        for xi, yi in batches:
            mask = torch.ones(width, requires_grad=True)

            def masked(module, inp, mask=mask):
                return (inp[0] * (mask if inp[0].dim() == 2 else mask[:, None, None]),)

            hooks = [modules[r].register_forward_pre_hook(masked) for r in readers]
            (grad,) = torch.autograd.grad(F.cross_entropy(model(xi), yi), mask)
            for h in hooks:
                h.remove()
            squares.append(grad.double() ** 2)
        expected = (torch.stack(squares).mean(0) * 32 / 2).numpy()
        np.testing.assert_allclose(scores[name], expected, rtol=1e-3, atol=1e-9)


def test_data_driven_scores_skip_frozen_layers():
    """ultralytics' DFL conv has fixed weights (requires_grad False): fisher, taylor and dynamic score around it."""
    import torch
    from torch import nn

    from trtprune.pruning.prune import GroupPruner

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 1))
    model[2].weight.requires_grad_(False)
    batches = [(torch.randn(4, 3, 8, 8), torch.randn(4, 4, 4, 4)) for _ in range(2)]
    pruner = GroupPruner(model, (3, 8, 8))
    for criterion in ("fisher", "taylor", "dynamic"):
        scores = pruner.scores(criterion, batches, loss=lambda out, y: ((out - y) ** 2).mean())
        assert set(scores) == {"0", "2"} and all(len(v) == 8 for v in scores.values())
