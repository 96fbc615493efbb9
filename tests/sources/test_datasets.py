import io
import pickle
import tarfile

import numpy as np
import pytest
import torch

from tests.conftest import write_npz_dataset
from trtprune.errors import TrtpruneError
from trtprune.sources import datasets as D


def _batch_bytes(x, y):
    """A CIFAR python batch as the official files store it (protocol 2, uint8 rows of 3072)."""
    rows = x.transpose(0, 3, 1, 2).reshape(len(x), -1)
    return pickle.dumps(
        {b"batch_label": b"x", b"labels": [int(v) for v in y], b"data": rows, b"filenames": [b"f"] * len(x)}, protocol=2
    )


def write_official(root, n=20):
    """The same images as the official folder and the official tarball."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    splits = {}
    for k, (split, names) in enumerate(D._BATCHES.items()):
        xs, ys = [], []
        for i, name in enumerate(names):
            x, y = D.synthetic_cifar10(n, seed=10 * k + i)
            (folder / name).write_bytes(_batch_bytes(x, y))
            xs.append(x)
            ys.append(y)
        splits[split] = (np.concatenate(xs), np.concatenate(ys))
    with tarfile.open(root / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return splits


@pytest.mark.parametrize("split", ["train", "test"])
def test_official_folder_and_tarball_read_the_same_images(tmp_path, split):
    expected = write_official(tmp_path / "both")
    tar_only = tmp_path / "tar"
    tar_only.mkdir()
    (tmp_path / "both" / "cifar-10-python.tar.gz").rename(tar_only / "cifar-10-python.tar.gz")
    for root in (tmp_path / "both", tar_only):
        x, y = D.load_cifar10(root, split)
        np.testing.assert_array_equal(x, expected[split][0])
        np.testing.assert_array_equal(y, expected[split][1])
    assert len(x) == (100 if split == "train" else 20)


def test_npz_layout(tmp_path):
    write_npz_dataset(tmp_path, 64, 32)
    x, y = D.load_cifar10(tmp_path, "test")
    assert x.shape == (32, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64


def test_image_folder_with_cifar_class_names(tmp_path):
    from PIL import Image

    x, y = D.synthetic_cifar10(12, 3)
    for i, (img, label) in enumerate(zip(x, y)):
        d = tmp_path / "test" / D.CLASSES[label]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    gx, gy = D.load_cifar10(tmp_path, "test")
    order = np.lexsort((np.arange(12), y))  # read class by class; labels by CIFAR name, not folder order
    assert sorted(gy.tolist()) == sorted(y.tolist())
    assert {tuple(img.ravel()[:5]) for img in gx} == {tuple(img.ravel()[:5]) for img in x[order]}


def test_image_folder_labels_agree_between_splits(tmp_path):
    from PIL import Image

    img = np.zeros((32, 32, 3), np.uint8)
    for split, classes in (("train", ("cats", "dogs", "eels")), ("test", ("cats", "eels"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.fromarray(img).save(tmp_path / split / c / "0.png")
    assert D.load_cifar10(tmp_path, "train")[1].tolist() == [0, 1, 2]
    assert D.load_cifar10(tmp_path, "test")[1].tolist() == [0, 2]  # "eels" is 2 in both splits


def test_a_tampered_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("raise SystemExit(99)",))  # not print: Ray replaces it once a test started Ray

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(TrtpruneError, match="not a valid CIFAR-10 python batch.*refusing to load builtins.exec"):
        D.load_cifar10(tmp_path, "test")


def test_truncated_tarball(tmp_path):
    write_official(tmp_path / "src")
    raw = (tmp_path / "src" / "cifar-10-python.tar.gz").read_bytes()
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(TrtpruneError, match="cannot read tarball"):
        D.load_cifar10(tmp_path, "train")


def test_absent_data_says_where_it_looked(tmp_path):
    with pytest.raises(TrtpruneError, match="no CIFAR-10 test set") as e:
        D.load_cifar10(tmp_path, "test")
    assert "cifar10_test.npz" in e.value.why and "cifar-10-python.tar.gz" in e.value.why
    with pytest.raises(TrtpruneError, match="does not exist"):
        D.load_cifar10(tmp_path / "nope", "test")


@pytest.mark.parametrize(
    "x,y,message",
    [
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.uint8), "dtype float32"),
        (np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.uint8), r"shape \(4, 3, 32, 32\)"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(3, np.uint8), "labels .* shape"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.array([0, 1, 2, 10]), "not integers in 0..9"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.array([0.0, 1, 2, 3]), "not integers in 0..9"),
    ],
)
def test_wrong_shapes_dtypes_and_labels(tmp_path, x, y, message):
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / "cifar10" / "cifar10_test.npz", x=x, y=y)
    with pytest.raises(TrtpruneError, match=message):
        D.load_cifar10(tmp_path, "test")


def test_augmentation_crops_and_flips_within_the_padded_image():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.int64).reshape(2, 3, 32, 32).to(torch.uint8)
    gen = torch.Generator().manual_seed(0)
    out = D.augment(x, gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    outs = [D.augment(x, torch.Generator().manual_seed(s)) for s in range(20)]
    assert any(not torch.equal(o, x) for o in outs)
    # With padding 0 the only changes are flips
    flipped_or_same = D.augment(x, torch.Generator().manual_seed(1), pad=0)
    for i in range(2):
        assert torch.equal(flipped_or_same[i], x[i]) or torch.equal(flipped_or_same[i], x[i].flip(2))


def test_batches_normalise_and_cover_every_image_once():
    x, y = D.synthetic_cifar10(50)
    xt, yt = D.to_tensor(x), torch.from_numpy(y)
    seen = []
    for xb, yb in D.batches(xt, yt, 16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), shuffle=True, seed=1):
        assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 32, 32)
        assert xb.min() >= -2.0 - 1e-6 and xb.max() <= 2.0 + 1e-6
        seen += yb.tolist()
    assert sorted(seen) == sorted(y.tolist())


def test_unpickler_allows_numpy_arrays_only():
    arr = np.arange(3, dtype=np.uint8)
    assert (D._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arr)), encoding="bytes").load() == arr).all()
