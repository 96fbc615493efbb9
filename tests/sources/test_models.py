import pytest
import torch

from trtprune.errors import TrtpruneError
from trtprune.sources.models import BUILTIN, build_model, model_spec
from trtprune.sources.weights import load_model, read_checkpoint, state_dict_of

PUBLISHED = {"resnet20": "resnet20-12fca82f.th", "resnet32": "resnet32-d509ac18.th", "resnet56": "resnet56-4bfd9763.th"}


@pytest.mark.parametrize("name", list(BUILTIN))
def test_builtin_models_classify_images_of_their_input_shape(name):
    spec = model_spec(name)
    model = build_model(name)
    assert model(torch.randn(2, *spec.input_shape)).shape == (2, spec.num_classes)


@pytest.mark.parametrize(
    "name,params,macs",  # torchvision's ResNet-18 and MobileNetV2 (1.0) have these sizes too
    [("resnet18", 11_689_512, 1_814_073_344), ("mobilenet_v2_imagenet", 3_504_872, 300_774_272)],
)
def test_imagenet_layouts_have_the_published_sizes(name, params, macs):
    from trtprune.metrics import count_macs, count_params

    model = build_model(name)
    assert model_spec(name).input_shape == (3, 224, 224)
    assert (count_params(model), count_macs(model, (3, 224, 224))) == (params, macs)


@pytest.mark.parametrize("name,params", [("resnet20", 269_722), ("resnet32", 464_154), ("resnet56", 853_018)])
def test_resnet_sizes_match_the_published_ones(name, params):
    assert sum(p.numel() for p in build_model(name).parameters()) == params


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_published_checkpoints_have_exactly_our_key_layout(real_data, name):
    sd = state_dict_of(read_checkpoint(real_data / "weights" / PUBLISHED[name]))
    ours = {k for k in build_model(name).state_dict() if not k.endswith("num_batches_tracked")}
    assert set(sd) == ours
    load_model(name, real_data / "weights" / PUBLISHED[name])  # strict, no error


def test_user_factory_is_built_from_a_file(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(
        "import torch.nn as nn\ndef tiny():\n    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),"
        " nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))\n"
    )
    model = build_model(f"{f}:tiny")
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(
    "name,message",
    [
        ("resnet57", "unknown model 'resnet57'"),
        ("missing.py:make", "does not exist"),
    ],
)
def test_bad_model_names(name, message):
    with pytest.raises(TrtpruneError, match=message):
        build_model(name)


def test_user_factory_errors(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("def make():\n    return 3\nhelper = 1\n")
    with pytest.raises(TrtpruneError, match="has no function 'nope'") as e:
        build_model(f"{f}:nope")
    assert "make" in e.value.why
    with pytest.raises(TrtpruneError, match="returned int, not a torch.nn.Module"):
        build_model(f"{f}:make")
    (tmp_path / "bad.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(TrtpruneError, match="importing .* failed: RuntimeError: boom"):
        build_model(f"{tmp_path / 'bad.py'}:make")


def test_model_spec_of_a_user_factory():
    assert model_spec("a/b/net.py:make").name == "net.make"
