"""Images from arrays, image folders and user loaders: one interface for training, evaluation and scoring."""

import numpy as np
import pytest
import torch
from torch import nn

from trtprune.errors import TrtpruneError
from trtprune.metrics import accuracy_torch, top1_torch
from trtprune.sources.datasets import synthetic_cifar10
from trtprune.sources.images import ArrayImages, FolderImages, LoaderImages, as_images, open_images

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def write_folder(root, classes: int, per_class: int, sizes=((48, 40), (64, 64), (30, 70)), seed: int = 0):
    """root/train and root/val, ``classes`` class folders of PNGs of varying sizes (W, H)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                w, h = sizes[(c + i) % len(sizes)]
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.png")
    (root / "train" / "class00" / "notes.txt").write_text("not an image: skipped")
    return root


def test_an_image_folder_of_any_size_and_class_count_is_read_lazily_at_the_input_size(tmp_path):
    write_folder(tmp_path, classes=11, per_class=3)
    train = open_images(str(tmp_path), "train", (3, 24, 20))
    val = open_images(str(tmp_path), "test", (3, 24, 20))  # "test" is the val/ folder
    assert isinstance(train, FolderImages) and train.num_classes == 11 and len(train) == 33 and len(val) == 33
    assert sorted(np.bincount(train.y).tolist()) == [3] * 11
    assert train.y[:11].tolist() != sorted(train.y[:11].tolist())  # a fixed random order, not class by class
    xs, ys = zip(*train.batches(8, MEAN, STD))
    assert [tuple(x.shape) for x in xs] == [(8, 3, 24, 20)] * 4 + [(1, 3, 24, 20)]
    assert torch.cat(ys).tolist() == train.y.tolist() and xs[0].dtype == torch.float32


def test_augmentation_depends_on_the_seed_and_the_image_not_on_the_workers(tmp_path):
    write_folder(tmp_path, classes=2, per_class=4)
    folder = open_images(str(tmp_path), "train", (3, 16, 16))
    runs = []
    for workers in (0, 2, 0):
        folder.workers = workers
        runs.append(list(folder.batches(4, MEAN, STD, shuffle=True, augment=True, seed=7)))
    for a, b in zip(runs[0], runs[1]):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    other = list(folder.batches(4, MEAN, STD, shuffle=True, augment=True, seed=8))
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(runs[0], other))
    plain = torch.cat([x for x, _ in folder.batches(4, MEAN, STD)])
    assert torch.equal(plain, torch.cat([x for x, _ in folder.batches(4, MEAN, STD)]))  # evaluation: no randomness


def test_images_at_the_input_size_are_evaluated_whole_as_the_arrays_are(tmp_path):
    from PIL import Image

    x, y = synthetic_cifar10(12)
    for split in ("train", "val"):
        for i, (img, label) in enumerate(zip(x, y)):
            d = (
                tmp_path
                / split
                / ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")[label]
            )
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:03d}.png")
    folder = open_images(str(tmp_path), "test", (3, 32, 32))
    assert folder.num_classes == 10  # CIFAR-10's names keep their standard labels
    fx, fy = zip(*folder.batches(5, MEAN, STD))
    order = [int(f.stem) for f in folder.files]
    ax, ay = zip(*ArrayImages(x[order], y[order]).batches(5, MEAN, STD))
    assert torch.equal(torch.cat(fx), torch.cat(ax)) and torch.equal(torch.cat(fy), torch.cat(ay))


def test_take_select_and_limit_keep_the_labels_with_their_images():
    x, y = synthetic_cifar10(20)
    images = ArrayImages(x, y)
    assert len(images.take(5, 9)) == 4 and (images.take(5, 9).y == y[5:9]).all()
    assert (images.select([3, 1]).y == y[[3, 1]]).all() and len(images.limit(0)) == 20 and len(images.limit(7)) == 7


def test_a_user_loader_is_used_as_given_and_can_be_sliced():
    x = torch.randn(10, 3, 8, 8)
    y = torch.arange(10) % 3
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    images = as_images(loader, num_classes=3)
    assert isinstance(images, LoaderImages) and len(images) == 10 and images.num_classes == 3
    got = torch.cat([xb for xb, _ in images.batches(999, MEAN, STD)])
    assert torch.equal(got, x)  # no normalisation added: the loader's tensors are the model's inputs
    part = images.take(3, 7)
    assert len(part) == 4 and torch.cat([yb for _, yb in part.batches(1, MEAN, STD)]).tolist() == y[3:7].tolist()


def test_a_loader_that_yields_no_pairs_is_a_clear_error():
    with pytest.raises(TrtpruneError, match="not \\(inputs, targets\\) batches"):
        list(as_images([torch.zeros(2, 3, 4, 4)]).batches(2, MEAN, STD))


def test_user_loaders_from_a_file(tmp_path):
    f = tmp_path / "data.py"
    f.write_text(
        "import sys, torch\n"
        "ARGV = list(sys.argv)\n"
        "def loaders():\n"
        "    ds = torch.utils.data.TensorDataset(torch.zeros(6, 3, 8, 8), torch.arange(6) % 2)\n"
        "    return torch.utils.data.DataLoader(ds, batch_size=4), torch.utils.data.DataLoader(ds, batch_size=3)\n"
        "def broken():\n"
        "    raise ValueError('no such folder /x')\n"
        "def exits():\n"
        "    sys.exit(3)\n"
    )
    train = open_images(f"{f}:loaders", "train")
    val = open_images(f"{f}:loaders", "test", limit=4)
    assert len(train) == 6 and len(val) == 4
    import sys

    assert [str(f)] == sys.modules["trtprune_user_data_data"].ARGV  # the file does not see trtprune's argv
    with pytest.raises(TrtpruneError, match="failed: ValueError: no such folder"):
        open_images(f"{f}:broken", "train")
    with pytest.raises(TrtpruneError, match="failed: SystemExit: 3"):
        open_images(f"{f}:exits", "train")
    with pytest.raises(TrtpruneError, match="has no function 'nothing'"):
        open_images(f"{f}:nothing", "train")
    with pytest.raises(TrtpruneError, match="does not exist"):
        open_images(f"{tmp_path / 'missing.py'}:loaders", "train")


def test_top5_where_there_are_more_than_ten_classes_and_a_head_too_small_is_refused():
    torch.manual_seed(0)
    x = torch.randn(40, 4)
    y = torch.arange(40) % 12
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    acc = accuracy_torch(nn.Linear(4, 12), as_images(loader, 12), MEAN, STD)
    assert set(acc) == {"top1", "top5"} and 0 <= acc["top1"] <= acc["top5"] <= 100
    assert acc["top5"] > acc["top1"] or acc["top1"] == 100
    with pytest.raises(TrtpruneError, match="gives 10 class scores per image, but the dataset has 12 classes"):
        top1_torch(nn.Linear(4, 10), as_images(loader, 12), MEAN, STD)
    ten = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y % 10), batch_size=16)
    assert set(accuracy_torch(nn.Linear(4, 10), as_images(ten, 10), MEAN, STD)) == {"top1"}
