from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from trtprune.deploy.export import onnx_from_torch, read_onnx
from trtprune.errors import TrtpruneError
from trtprune.sources.models import build_model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "r20.onnx"
    return onnx_from_torch(build_model("resnet20"), path, (3, 32, 32), batch=4)


def test_export_is_static_checked_and_close_to_torch(exported):
    proto = read_onnx(exported.path)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [4, 3, 32, 32]
    assert exported.max_abs_diff < 1e-4
    ops = {n.op_type for n in proto.graph.node}
    assert "BatchNormalization" not in ops and "Pad" in ops  # BN folded; option-A shortcut is a Pad


def test_a_truncated_onnx_is_a_clear_error(exported, tmp_path):
    raw = exported.path.read_bytes()
    (tmp_path / "cut.onnx").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(TrtpruneError, match="not a valid ONNX model"):
        read_onnx(tmp_path / "cut.onnx")
    (tmp_path / "text.onnx").write_text("hello")
    with pytest.raises(TrtpruneError, match="not a valid ONNX model"):
        read_onnx(tmp_path / "text.onnx")
    with pytest.raises(TrtpruneError, match="does not exist"):
        read_onnx(tmp_path / "absent.onnx")


def test_a_dynamic_batch_is_refused(exported, tmp_path):
    proto = onnx.load(str(exported.path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    onnx.save(proto, tmp_path / "dyn.onnx")
    with pytest.raises(TrtpruneError, match="dynamic shape") as e:
        read_onnx(tmp_path / "dyn.onnx")
    assert "--batch" in e.value.fix


def test_an_unexportable_model_is_a_clear_error(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            return x * 2 if x.sum() > 0 else x

    with pytest.raises(TrtpruneError, match="exporting the model to ONNX failed: TorchExportError"):
        onnx_from_torch(DataDependent(), tmp_path / "m.onnx", (3, 4, 4))
    assert not (tmp_path / "m.onnx").exists()


def test_a_wrong_export_is_not_written(tmp_path, monkeypatch):
    from trtprune.deploy import export as E

    class Wrong:  # ONNX Runtime computing something else: logits of ones
        def get_inputs(self):
            return [SimpleNamespace(name="input")]

        def get_outputs(self):
            return [SimpleNamespace(name="logits")]

        def run(self, names, feed):
            return [np.ones((1, 10), np.float32)]

    monkeypatch.setattr(E, "ort_session", lambda path, threads: Wrong())
    torch.manual_seed(0)
    with pytest.raises(TrtpruneError, match="differs from torch"):
        onnx_from_torch(build_model("resnet20"), tmp_path / "m.onnx", (3, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_each_export_gets_its_own_copy_of_the_once_built_registry(exported, tmp_path):
    from torch.onnx._internal.exporter._registration import ONNXRegistry

    assert ONNXRegistry.from_torchlib.__func__.trtprune_once  # the fixture's export installed it
    first, second = ONNXRegistry.from_torchlib(), ONNXRegistry.from_torchlib()
    assert first is not second and first.functions.keys() == second.functions.keys()
    op = next(iter(first.functions))
    first.functions[op].clear()
    first.functions.pop(op)
    assert second.functions[op] and op in ONNXRegistry.from_torchlib().functions
    torch.manual_seed(0)
    model = build_model("resnet20")
    again = onnx_from_torch(model, tmp_path / "again.onnx", (3, 32, 32), batch=4)
    assert again.nodes == exported.nodes and again.max_abs_diff < 1e-4


def test_parity_accepts_float32_rounding_the_model_amplifies_and_nothing_more(tmp_path, monkeypatch):
    """Off torch by more than the plain tolerance, ONNX Runtime passes when it is as close to the float64 result
    as torch's float32 is (YOLOv8n's pixel boxes: 0.2 px off), and fails when it is farther."""
    from trtprune.deploy import export as E

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Flatten()).eval()
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        t32, t64 = model(x), model.double()(x.double()).float()
        model.float()
    error = float((t32 - t64).abs().max())
    assert error > 0

    class Session:
        def __init__(self, out):
            self.out = out

        def get_inputs(self):
            return [SimpleNamespace(name="input")]

        def get_outputs(self):
            return [SimpleNamespace(name="logits")]

        def run(self, names, feed):
            return [self.out]

    near = (t64.double() + 3 * (t32.double() - t64.double())).float().numpy()  # 3x torch's own rounding
    monkeypatch.setattr(E, "ort_session", lambda path, threads: Session(near))
    assert E._parity("m.onnx", x, [("logits", t32)], 0.0, 0.0, model) > 0
    far = (t64 + 50 * error * torch.sign(torch.randn_like(t64))).numpy()  # well beyond it
    monkeypatch.setattr(E, "ort_session", lambda path, threads: Session(far))
    with pytest.raises(TrtpruneError, match="farther from the float64 result than torch's float32 is"):
        E._parity("m.onnx", x, [("logits", t32)], 0.0, 0.0, model)
    with pytest.raises(TrtpruneError, match="differs from torch"):  # no model to compute float64 with
        E._parity("m.onnx", x, [("logits", t32)], 0.0, 0.0, None)
