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
