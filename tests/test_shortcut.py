import pytest
import torch
import torch.nn.functional as F

from trtprune.models.shortcut import ChannelPadShortcut


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
