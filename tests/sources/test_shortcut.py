import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from trtprune.sources.models.shortcut import ChannelPadShortcut


def option_a(x, planes):
    """The published lambda: subsample and pad planes // 4 zero channels on each side."""
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))


def test_matches_the_published_option_a():
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(ChannelPadShortcut(16, 32)(x), option_a(x, 32))


def test_removing_inputs_zeroes_their_outputs_and_renumbers_the_rest():
    x = torch.randn(1, 16, 4, 4)
    sc = ChannelPadShortcut(16, 32)
    full = sc(x)
    sc.remove_inputs([0, 5])
    kept = [c for c in range(16) if c not in (0, 5)]
    y = sc(x[:, kept])
    assert y.shape == (1, 32, 2, 2)
    assert sc.in_channels == 14 and sc.out_channels == 32
    assert torch.equal(y[:, 8], torch.zeros_like(y[:, 8])) and torch.equal(y[:, 13], torch.zeros_like(y[:, 13]))
    others = [j for j in range(32) if j not in (8, 13)]
    assert torch.equal(y[:, others], full[:, others])


def test_removing_outputs_drops_them_and_keeps_inputs():
    x = torch.randn(1, 16, 4, 4)
    sc = ChannelPadShortcut(16, 32)
    full = sc(x)
    sc.remove_outputs([0, 9, 31])
    y = sc(x)
    assert sc.in_channels == 16 and sc.out_channels == 29
    assert torch.equal(y, full[:, [j for j in range(32) if j not in (0, 9, 31)]])


def test_no_state_in_the_state_dict():
    assert ChannelPadShortcut(16, 32).state_dict() == {}


def test_rejects_fewer_outputs_than_inputs():
    with pytest.raises(ValueError):
        ChannelPadShortcut(32, 16)


@st.composite
def removal_sequences(draw):
    """A shortcut size and a sequence of removals of inputs or outputs, each leaving at least one."""
    n_in = draw(st.integers(1, 12))
    n_out = n_in + 2 * draw(st.integers(0, 6))
    steps, cur_in, cur_out = [], n_in, n_out
    for _ in range(draw(st.integers(0, 5))):
        side = draw(st.sampled_from(["in", "out"]))
        size = cur_in if side == "in" else cur_out
        if size < 2:
            continue
        idxs = draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=size - 1, unique=True))
        steps.append((side, idxs))
        cur_in, cur_out = (cur_in - len(idxs), cur_out) if side == "in" else (cur_in, cur_out - len(idxs))
    return n_in, n_out, steps


@settings(max_examples=200, deadline=None)
@given(removal_sequences())
def test_any_sequence_of_removals_equals_silencing_and_selecting(case):
    n_in, n_out, steps = case
    sc = ChannelPadShortcut(n_in, n_out)
    alive_in, alive_out = list(range(n_in)), list(range(n_out))  # original indices still present
    for side, idxs in steps:
        if side == "in":
            sc.remove_inputs(idxs)
            alive_in = [c for k, c in enumerate(alive_in) if k not in idxs]
        else:
            sc.remove_outputs(idxs)
            alive_out = [c for k, c in enumerate(alive_out) if k not in idxs]
    x = torch.randn(1, n_in, 4, 4)
    silenced = torch.zeros_like(x)
    silenced[:, alive_in] = x[:, alive_in]
    expected = option_a_general(silenced, n_out)[:, alive_out]
    assert torch.equal(sc(x[:, alive_in]), expected)
    assert sc.in_channels == len(alive_in) and sc.out_channels == len(alive_out)


def option_a_general(x, out_channels):
    lo = (out_channels - x.shape[1]) // 2
    return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, lo, out_channels - x.shape[1] - lo))
