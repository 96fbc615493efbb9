import numpy as np
import onnx
import pytest
import torch

from trtprune.deploy.export import onnx_from_torch, run_onnx
from trtprune.profiling.layers import Signature, layers_of, micro_model
from trtprune.sources.models import build_model


@pytest.fixture(scope="module")
def r20_layers(tmp_path_factory):
    path = tmp_path_factory.mktemp("l") / "r20.onnx"
    onnx_from_torch(build_model("resnet20"), path, (3, 32, 32))
    return layers_of(onnx.load(str(path)))


def test_resnet_layers_and_their_fused_followers(r20_layers):
    convs = {n: layer for n, layer in r20_layers.items() if layer.signature.op == "conv"}
    assert len(convs) == 19 and r20_layers["linear"].signature.op == "gemm"
    c1, c2 = r20_layers["layer1.0.conv1"], r20_layers["layer1.0.conv2"]
    assert (c1.cin, c1.cout, c1.signature.act, c1.signature.residual) == (16, 16, "relu", False)
    assert (c2.signature.act, c2.signature.residual) == ("relu", True)  # conv2 -> add -> relu
    down = r20_layers["layer2.0.conv1"].signature
    assert down.stride == (2, 2) and down.hw == (32, 32) and down.out_hw() == (16, 16)
    assert r20_layers["layer3.2.conv1"].signature.hw == (8, 8)
    # identical shapes share a signature: the LUT measures them once
    assert r20_layers["layer1.1.conv1"].signature == c1.signature
    assert r20_layers["layer1.1.conv2"].signature == c2.signature != c1.signature


def test_mobilenet_depthwise_and_relu6(tmp_path):
    onnx_from_torch(build_model("mobilenet_v2"), tmp_path / "m.onnx", (3, 32, 32))
    layers = layers_of(onnx.load(str(tmp_path / "m.onnx")))
    dw = layers["features.2.conv.1.0"]
    assert dw.signature.depthwise and dw.cin == dw.cout == 96 and dw.signature.act == "relu6"
    project = layers["features.3.conv.2"]  # 1x1 projection + residual add, no activation
    assert project.signature.residual and project.signature.act == "none"


@pytest.mark.parametrize(
    "sig,cin,cout",
    [
        (Signature("conv", (3, 3), (1, 1), (1, 1, 1, 1), hw=(8, 8), act="relu"), 5, 7),
        (Signature("conv", (3, 3), (2, 2), (1, 1, 1, 1), hw=(8, 8), residual=True, act="relu", batch=2), 4, 8),
        (Signature("conv", (3, 3), (1, 1), (1, 1, 1, 1), hw=(8, 8), depthwise=True, act="relu6"), 6, 6),
        (Signature("gemm", batch=3), 16, 10),
    ],
)
def test_micro_models_compute_what_torch_computes(sig, cin, cout, tmp_path):
    raw = micro_model(sig, cin, cout)
    proto = onnx.load_from_string(raw)
    onnx.checker.check_model(proto)
    weights = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    (tmp_path / "m.onnx").write_bytes(raw)
    if sig.op == "gemm":
        x = np.random.default_rng(0).standard_normal((sig.batch, cin)).astype(np.float32)
        expected = x @ weights["w"].T
    else:
        x = np.random.default_rng(0).standard_normal((sig.batch, cin, *sig.hw)).astype(np.float32)
        y = torch.nn.functional.conv2d(
            torch.from_numpy(x),
            torch.from_numpy(weights["w"].copy()),
            stride=sig.stride,
            padding=sig.pads[:2],
            groups=cin if sig.depthwise else 1,
        )
        expected = y.clamp(0, 6 if sig.act == "relu6" else None).numpy() if sig.act != "none" else y.numpy()
        assert expected.shape[2:] == sig.out_hw()
    if sig.residual:
        return  # two inputs; checked by shape above
    np.testing.assert_allclose(run_onnx(tmp_path / "m.onnx", x), expected, rtol=1e-4, atol=1e-4)


def test_signature_keys_are_distinct_and_stable():
    a = Signature("conv", (3, 3), hw=(32, 32), act="relu")
    assert a.key() == "conv|k3x3|s1x1|p0x0x0x0|d1x1|g1|hw32x32|b1|fp32|nores|relu"
    assert (
        len(
            {
                a.key(),
                Signature("conv", (3, 3), hw=(32, 32)).key(),
                Signature("conv", (1, 1), hw=(32, 32)).key(),
                Signature("conv", (3, 3), hw=(32, 32), act="relu", batch=32).key(),
            }
        )
        == 4
    )
