import pytest
import torch

from trtprune.errors import TrtpruneError
from trtprune.sources.models import build_model
from trtprune.sources.weights import load_model, save_pruned


@pytest.fixture
def sd():
    torch.manual_seed(0)
    return build_model("resnet20").state_dict()


def test_plain_and_wrapped_state_dicts_load(tmp_path, sd):
    torch.save(sd, tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "best_prec1": 1.0}, tmp_path / "wrapped.th")
    for f in ("plain.pt", "wrapped.th"):
        model, _ = load_model("resnet20", tmp_path / f)
        assert torch.equal(model.conv1.weight, sd["conv1.weight"])


def test_num_batches_tracked_may_be_absent(tmp_path, sd):
    torch.save({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, tmp_path / "w.pt")
    load_model("resnet20", tmp_path / "w.pt")


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda d: d.pop("layer1.0.conv1.weight"), "1 missing: layer1.0.conv1.weight"),
        (lambda d: d.__setitem__("extra.weight", torch.zeros(1)), "1 unexpected: extra.weight"),
        (lambda d: d.__setitem__("linear.bias", torch.zeros(7)), r"linear.bias \(7,\) vs \(10,\)"),
    ],
)
def test_weights_that_do_not_fit_are_a_clear_error(tmp_path, sd, change, message):
    change(sd)
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(TrtpruneError, match="do not fit the model") as e:
        load_model("resnet20", tmp_path / "w.pt")
    assert e.value.why and __import__("re").search(message, e.value.why)


def test_weights_of_another_architecture(tmp_path):
    torch.save(build_model("resnet32").state_dict(), tmp_path / "r32.pt")
    with pytest.raises(TrtpruneError, match="do not fit"):
        load_model("resnet20", tmp_path / "r32.pt")


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(TrtpruneError, match="does not exist"):
        load_model("resnet20", tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")  # text: said to be text (issue 30)
    with pytest.raises(TrtpruneError, match="junk.pt' is a text file, not a PyTorch checkpoint"):
        load_model("resnet20", tmp_path / "junk.pt")
    (tmp_path / "junk.pt").write_bytes(bytes(range(7, 256)))
    with pytest.raises(TrtpruneError, match="cannot read weights file"):
        load_model("resnet20", tmp_path / "junk.pt")


def test_a_pickled_whole_model_is_refused(tmp_path):
    torch.save(build_model("resnet20"), tmp_path / "whole.pt")  # needs unpickling code: refused
    with pytest.raises(TrtpruneError, match="weights_only"):
        load_model("resnet20", tmp_path / "whole.pt")


def test_pruned_checkpoint_must_name_its_base_model(tmp_path):
    save_pruned(tmp_path / "p.pt", build_model("resnet20"), "resnet20", [])
    load_model("resnet20", tmp_path / "p.pt")
    with pytest.raises(TrtpruneError, match="pruned from 'resnet20'"):
        load_model("resnet32", tmp_path / "p.pt")
