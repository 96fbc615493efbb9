"""INT8 Q/DQ quantization: TensorRT's symmetric form, fidelity to fp32, calibration images, clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from trtprune.deploy.export import onnx_from_torch, run_onnx
from trtprune.deploy.quantize import _Batches, calib_array, calib_images, qdq_from_onnx, qdq_summary
from trtprune.errors import TrtpruneError
from trtprune.sources import datasets as D
from trtprune.sources.models import ModelSpec

SPEC = ModelSpec("tiny", "tests:tiny")  # 3x32x32, ImageNet mean/std
BATCH = 8


class Tiny(nn.Module):
    """Conv-BN-ReLU, a residual block, a strided conv, global pool, linear: the ops of the CIFAR ResNets."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block(x))
        return self.fc(self.down(x).mean((2, 3)))


def _normalised(x_uint8: np.ndarray) -> np.ndarray:
    return D.normalize(D.to_tensor(x_uint8), SPEC.mean, SPEC.std).numpy()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A Tiny net trained briefly on generated images (class = mean colour), exported at batch 8 and 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = Tiny()
        x, y = D.synthetic_cifar10(1024, seed=3)
        xt, yt = torch.from_numpy(_normalised(x)), torch.from_numpy(y)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        model.train()
        for step in range(120):
            idx = torch.randint(0, len(xt), (64,), generator=torch.Generator().manual_seed(step))
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        root = tmp_path_factory.mktemp("int8")
        onnx_from_torch(model, root / "fp32.onnx", SPEC.input_shape, batch=BATCH)
        onnx_from_torch(model, root / "fp32_b1.onnx", SPEC.input_shape, batch=1)
    finally:
        torch.set_num_threads(threads)
    calib = calib_array(D.synthetic_cifar10(256, seed=4)[0], SPEC, 256)
    test_x, test_y = D.synthetic_cifar10(256, seed=5)
    return root, calib, _normalised(test_x), test_y


@pytest.fixture(scope="module")
def qdq(trained):
    root, calib, *_ = trained
    return qdq_from_onnx(root / "fp32.onnx", root / "int8.onnx", calib)


def _logits(path, x: np.ndarray, batch: int = BATCH) -> np.ndarray:
    return np.concatenate([run_onnx(path, x[i : i + batch]) for i in range(0, len(x), batch)])


def _fidelity(fp32: np.ndarray, int8: np.ndarray) -> tuple[float, float]:
    """(argmax agreement, mean cosine similarity of the logits) of int8 vs fp32."""
    agree = float((fp32.argmax(1) == int8.argmax(1)).mean())
    cos = (fp32 * int8).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    return agree, float(cos.mean())


# -- the Q/DQ model ---------------------------------------------------------------------------------
def test_the_int8_model_is_symmetric_int8_qdq_that_tensorrt_accepts(qdq):
    proto = onnx.load(str(qdq))
    onnx.checker.check_model(proto)
    s = qdq_summary(qdq)
    assert s["quantize"] >= 4 and s["dequantize"] >= s["quantize"]
    assert all(z is not None and z.dtype == np.int8 and not z.any() for z in s["zero_points"])  # symmetric
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    for node in (n for n in proto.graph.node if n.op_type in ("Conv", "Gemm")):
        act, weight = (producer.get(i) for i in node.input[:2])
        assert act.op_type == "DequantizeLinear" and weight.op_type == "DequantizeLinear", node.name
        w = inits[weight.input[0]]
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 127  # TensorRT's weight range
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        out_axis = 0 if node.op_type == "Conv" or trans_b else 1
        assert inits[weight.input[1]].size == w.shape[out_axis] > 1  # one scale per output channel
        if len(node.input) > 2 and node.input[2]:
            assert node.input[2] in inits and inits[node.input[2]].dtype == np.float32  # fp32 bias, no INT32 DQ
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [BATCH, 3, 32, 32]


def test_int8_outputs_follow_fp32_and_a_wrong_calibration_is_caught(trained, qdq, tmp_path):
    root, calib, test_x, test_y = trained
    fp32 = _logits(root / "fp32.onnx", test_x)
    int8 = _logits(qdq, test_x)
    assert (fp32.argmax(1) == test_y).mean() > 0.6  # the net learned something: argmax is meaningful
    agree, cos = _fidelity(fp32, int8)
    assert agree >= 0.95 and cos >= 0.99, (agree, cos)
    assert abs((int8.argmax(1) == test_y).mean() - (fp32.argmax(1) == test_y).mean()) <= 0.03
    # the same check fails for a model whose ranges were measured on images 50x too faint
    bad = qdq_from_onnx(root / "fp32.onnx", tmp_path / "bad.onnx", calib * 0.02)
    bad_agree, bad_cos = _fidelity(fp32, _logits(bad, test_x))
    assert bad_agree < 0.95 or bad_cos < 0.99, (bad_agree, bad_cos)


def _activation_scales(path) -> dict[str, float]:
    proto = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    return {n.input[0]: float(inits[n.input[1]]) for n in proto.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_entropy_and_percentile_clip_ranges_and_stay_faithful(trained, qdq, tmp_path, monkeypatch, method):
    from trtprune.deploy import quantize as Q

    monkeypatch.setattr(Q, "ENTROPY_BINS", 512)  # a coarser histogram: the KL search is slow pure Python
    root, calib, test_x, _ = trained
    out = qdq_from_onnx(root / "fp32.onnx", tmp_path / f"{method}.onnx", calib, method=method)
    assert all(not z.any() for z in qdq_summary(out)["zero_points"])
    minmax, clipped = _activation_scales(qdq), _activation_scales(out)
    assert clipped.keys() == minmax.keys()
    assert all(clipped[k] <= minmax[k] * (1 + 1e-6) for k in minmax)  # a threshold never exceeds the max
    assert sum(clipped[k] < 0.98 * minmax[k] for k in minmax) >= len(minmax) // 3  # and it really clips
    agree, cos = _fidelity(_logits(root / "fp32.onnx", test_x), _logits(out, test_x))
    assert agree >= 0.9 and cos >= 0.98, (method, agree, cos)


def test_minmax_scales_do_not_depend_on_the_export_batch(trained, qdq, tmp_path):
    root, calib, *_ = trained
    b1 = qdq_from_onnx(root / "fp32_b1.onnx", tmp_path / "b1.onnx", calib[:37])  # 37 batches of 1
    b8 = qdq_from_onnx(root / "fp32.onnx", tmp_path / "b8.onnx", calib[:37])  # 5 batches of 8, the last refilled

    def scales(p):
        return np.sort(np.concatenate([np.ravel(s) for s in qdq_summary(p)["scales"]]))

    # equal up to fp32 rounding: ONNX Runtime sums in another order at another batch size
    np.testing.assert_allclose(scales(b1), scales(b8), rtol=1e-5)


def test_a_partial_last_batch_is_filled_from_the_start():
    images = np.arange(5, dtype=np.float32).reshape(5, 1, 1, 1)
    reader = _Batches(images, "input", 4)
    assert len(reader) == 2
    got = [b["input"].ravel().tolist() for b in iter(reader.get_next, None)]
    assert got == [[0, 1, 2, 3], [4, 0, 1, 2]]
    reader.rewind()
    assert reader.get_next()["input"].shape == (4, 1, 1, 1)


# -- errors, and nothing half-written ---------------------------------------------------------------
def _assert_nothing_at(out):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]  # no temp file left


def test_an_empty_calibration_set_is_a_clear_error(trained, tmp_path):
    root, *_ = trained
    out = tmp_path / "int8.onnx"
    with pytest.raises(TrtpruneError, match="calibration set is empty"):
        qdq_from_onnx(root / "fp32.onnx", out, np.empty((0, 3, 32, 32), np.float32))
    _assert_nothing_at(out)


@pytest.mark.parametrize(
    "shape, match",
    [((4, 3, 16, 16), r"\(4, 3, 16, 16\) do not fit"), ((4, 32, 32, 3), "NHWC to NCHW"), ((3, 32, 32), "do not fit")],
)
def test_images_of_the_wrong_shape_are_a_clear_error(trained, tmp_path, shape, match):
    root, *_ = trained
    out = tmp_path / "int8.onnx"
    with pytest.raises(TrtpruneError, match=match) as e:
        qdq_from_onnx(root / "fp32.onnx", out, np.zeros(shape, np.float32))
    assert "[8, 3, 32, 32]" in e.value.why
    _assert_nothing_at(out)


def test_unnormalised_or_non_array_calibration_is_a_clear_error(trained, tmp_path):
    root, *_ = trained
    with pytest.raises(TrtpruneError, match="dtype uint8") as e:
        qdq_from_onnx(root / "fp32.onnx", tmp_path / "q.onnx", np.zeros((8, 3, 32, 32), np.uint8))
    assert "calib_images" in e.value.fix
    with pytest.raises(TrtpruneError, match="not a numpy array"):
        qdq_from_onnx(root / "fp32.onnx", tmp_path / "q.onnx", [[0.0]])
    with pytest.raises(TrtpruneError, match="NaN"):
        qdq_from_onnx(root / "fp32.onnx", tmp_path / "q.onnx", np.full((8, 3, 32, 32), np.nan, np.float32))
    with pytest.raises(TrtpruneError, match="unknown calibration method 'kl'"):
        qdq_from_onnx(root / "fp32.onnx", tmp_path / "q.onnx", np.zeros((8, 3, 32, 32), np.float32), method="kl")
    _assert_nothing_at(tmp_path / "q.onnx")


def test_a_model_that_is_not_fp32_onnx_is_a_clear_error(trained, qdq, tmp_path):
    root, calib, *_ = trained
    with pytest.raises(TrtpruneError, match="not an fp32 ONNX model: it holds .*QuantizeLinear"):
        qdq_from_onnx(qdq, tmp_path / "twice.onnx", calib)
    half = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"])],
            "half",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT16, [8, 3, 32, 32])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT16, [8, 3, 32, 32])],
        ),
        opset_imports=[onnx.helper.make_opsetid("", 17)],
    )
    onnx.save(half, tmp_path / "half.onnx")
    with pytest.raises(TrtpruneError, match="not an fp32 ONNX model: input 'x' is FLOAT16"):
        qdq_from_onnx(tmp_path / "half.onnx", tmp_path / "q.onnx", calib)
    (tmp_path / "text.onnx").write_text("not onnx")
    with pytest.raises(TrtpruneError, match="not a valid ONNX model"):
        qdq_from_onnx(tmp_path / "text.onnx", tmp_path / "q.onnx", calib)
    with pytest.raises(TrtpruneError, match="would overwrite its fp32 source"):
        qdq_from_onnx(root / "fp32.onnx", root / "fp32.onnx", calib)
    _assert_nothing_at(tmp_path / "twice.onnx")
    _assert_nothing_at(tmp_path / "q.onnx")


def test_a_failure_while_quantizing_leaves_the_previous_output_untouched(trained, tmp_path, monkeypatch):
    import onnxruntime.quantization as Q

    root, calib, *_ = trained
    out = tmp_path / "int8.onnx"
    out.write_bytes(b"previous")

    def half_written(model_input, model_output, *args, **kwargs):
        with open(model_output, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("calibration ran out of memory")

    monkeypatch.setattr(Q, "quantize_static", half_written)
    with pytest.raises(TrtpruneError, match="quantizing .* failed: RuntimeError: calibration ran out of memory"):
        qdq_from_onnx(root / "fp32.onnx", out, calib)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["int8.onnx"]


# -- calibration images -----------------------------------------------------------------------------
def test_calibration_images_from_an_image_folder_are_spread_over_classes(tmp_path):
    from PIL import Image

    x, _ = D.synthetic_cifar10(6, seed=7)
    for i, img in enumerate(x):
        folder = tmp_path / "calib" / ("airplane" if i < 3 else "truck")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i}.png")
    got = calib_images(tmp_path / "calib", SPEC, 2)
    assert got.dtype == np.float32 and got.shape == (2, 3, 32, 32)
    np.testing.assert_allclose(got, _normalised(x[[0, 3]]), atol=1e-6)  # one of each class, normalised as training
    assert calib_images(tmp_path / "calib", "resnet20", 100).shape == (6, 3, 32, 32)  # fewer than asked: all


def test_an_image_of_another_size_is_a_clear_error(tmp_path):
    from PIL import Image

    (tmp_path / "calib").mkdir()
    Image.new("RGB", (32, 32)).save(tmp_path / "calib" / "a.png")
    Image.new("RGB", (64, 48)).save(tmp_path / "calib" / "b.jpg")
    with pytest.raises(TrtpruneError, match=r"'.*b\.jpg' is 64x48 \(WxH\), not 32x32") as e:
        calib_images(tmp_path / "calib", SPEC, 10)
    assert "does not resize" in e.value.why


def test_calibration_images_from_npy_and_npz(tmp_path):
    x, _ = D.synthetic_cifar10(10, seed=8)
    np.save(tmp_path / "c.npy", x)
    np.savez(tmp_path / "c.npz", x=x, y=np.zeros(10))
    np.savez(tmp_path / "only.npz", images=x)
    (tmp_path / "calib").mkdir()
    np.save(tmp_path / "calib" / "images.npy", x)
    want = _normalised(x[[0, 2, 4, 6, 8]])
    for source in ("c.npy", "c.npz", "only.npz", "calib"):
        np.testing.assert_allclose(calib_images(tmp_path / source, SPEC, 5), want, atol=1e-6, err_msg=source)


@pytest.mark.parametrize(
    "array, match",
    [
        (np.zeros((4, 3, 32, 32), np.uint8), "looks like NCHW"),
        (np.zeros((4, 32, 32, 3), np.float32), "not normalised floats"),
        (np.zeros((4, 16, 16, 3), np.uint8), r"expected uint8 \(N, 32, 32, 3\)"),
        (np.zeros((0, 32, 32, 3), np.uint8), "holds no images"),
    ],
)
def test_calibration_arrays_of_the_wrong_layout_are_clear_errors(tmp_path, array, match):
    np.save(tmp_path / "c.npy", array)
    with pytest.raises(TrtpruneError, match=match):
        calib_images(tmp_path / "c.npy", SPEC, 4)


def test_calibration_sources_that_are_not_usable_are_clear_errors(tmp_path):
    with pytest.raises(TrtpruneError, match="does not exist"):
        calib_images(tmp_path / "absent", SPEC, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrtpruneError, match="holds no images"):
        calib_images(tmp_path / "empty", SPEC, 4)
    np.savez(tmp_path / "two.npz", a=np.zeros(1), b=np.zeros(1))
    with pytest.raises(TrtpruneError, match="none of them named 'x'"):
        calib_images(tmp_path / "two.npz", SPEC, 4)
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(TrtpruneError, match="is a .md file"):
        calib_images(tmp_path / "notes.md", SPEC, 4)
    (tmp_path / "notes.txt").write_text("# a list with no images\n")
    with pytest.raises(TrtpruneError, match="names no images"):
        calib_images(tmp_path / "notes.txt", SPEC, 4)
    with pytest.raises(TrtpruneError, match="at least 1"):
        calib_images(tmp_path / "empty", SPEC, 0)


def test_the_ort_target_makes_onnx_runtimes_cpu_form(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 4)
    ).eval()
    onnx_from_torch(net, tmp_path / "f.onnx", (3, 8, 8), 2)
    calib = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    out = qdq_from_onnx(tmp_path / "f.onnx", tmp_path / "o.onnx", calib, target="ort")
    zps = [z for z in qdq_summary(out)["zero_points"] if z is not None]
    assert any(z.dtype == np.uint8 for z in zps)  # activations: uint8 with zero points
    assert onnx.load(str(out)).graph.node
    with pytest.raises(TrtpruneError, match="unknown INT8 target"):
        qdq_from_onnx(tmp_path / "f.onnx", tmp_path / "x.onnx", calib, target="tflite")
    assert not (tmp_path / "x.onnx").exists()
