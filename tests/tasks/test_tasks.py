"""Tasks: the built-in ones' losses and metrics, the user's own (API callables and task files), and every bad
input of the area as one clear message."""

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import trtprune
from tests.task_files import CLASS_CHANNELS, cells, detector_task, masks
from tests.task_models import TinyDetector, TinyUNet
from trtprune.errors import TrtpruneError
from trtprune.tasks import Classification, Segmentation, get_task, task_data
from trtprune.tasks.segmentation import confusion, miou

HERE = Path(__file__).resolve().parents[1]
TASK_FILE = f"{HERE / 'task_files.py'}"


def test_classification_is_the_default_task():
    task = get_task()
    assert isinstance(task, Classification) and task.metric_key == "top1"
    assert isinstance(get_task("segmentation"), Segmentation)
    with pytest.raises(TrtpruneError, match="returns 2 tensors .* not one row of class scores"):
        task.loss((torch.zeros(2, 10), torch.zeros(2, 4)), torch.zeros(2, dtype=torch.long))


def test_miou_matches_an_independent_computation():
    # torchmetrics 1.9's MeanIoU(num_classes=3, input_format="index") gives 0.5833 on these masks
    pred = torch.tensor([[[0, 1], [2, 2]], [[1, 1], [0, 2]]])
    target = torch.tensor([[[0, 1], [2, 1]], [[1, 1], [0, 0]]])
    m = confusion(pred, target, 3)
    assert m.tolist() == [[2, 0, 1], [0, 3, 1], [0, 0, 1]]  # rows: target class; columns: predicted
    assert miou(m) == pytest.approx(100 * (2 / 3 + 3 / 4 + 1 / 3) / 3) == pytest.approx(58.33, abs=0.01)
    ignored = target.clone()
    ignored[0, 0, 0] = 255  # a pixel of no class counts for none
    assert int(confusion(pred, ignored, 3).sum()) == 7


def test_segmentation_trains_and_scores_a_unet_through_the_api():
    torch.manual_seed(0)
    x, y = masks(96, 0)
    train = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32)
    val = DataLoader(TensorDataset(x[64:], y[64:]), batch_size=32)
    model = TinyUNet(classes=4)
    before = trtprune.evaluate(model, val, task="segmentation")
    records = trtprune.finetune(model, train, val, epochs=3, task="segmentation", lr=0.1, batch_size=32)
    assert set(before) == {"miou", "pixel_accuracy"} and 0 <= before["miou"] <= 100
    assert [set(r) >= {"loss", "miou", "pixel_accuracy"} for r in records] == [True] * 3
    assert records[-1]["loss"] < records[0]["loss"] and records[-1]["miou"] > before["miou"]


def test_segmentation_masks_that_do_not_fit_are_refused():
    task, out = Segmentation(), torch.zeros(2, 4, 8, 8)
    with pytest.raises(TrtpruneError, match=r"targets are \[2, 4, 4\], but the model predicts masks of \[8, 8\]"):
        task.check(out, torch.zeros(2, 4, 4, dtype=torch.long), None)
    with pytest.raises(TrtpruneError, match="masks hold class 7, but the model scores 4 classes"):
        task.check(out, torch.full((2, 8, 8), 7), None)


def test_a_detector_fine_tunes_with_the_users_loss_and_metric_and_distills_per_output():
    torch.manual_seed(0)
    model, teacher = TinyDetector(), TinyDetector()
    before = trtprune.evaluate(model, metric=detector_task.metric)["metric"]
    records = trtprune.finetune(
        model, detector_task.train, epochs=2, loss=detector_task.loss, metric=detector_task.metric,
        teacher=teacher, lr=0.05, batch_size=32,
    )  # fmt: skip
    assert [r["epoch"] for r in records] == [1, 2] and all(0 <= r["metric"] <= 100 for r in records)
    assert records[-1]["metric"] > before  # three classes: a third by chance; the loss teaches the cells
    task = get_task(loss=detector_task.loss)
    same = task.distill(model(torch.zeros(2, 3, 64, 64)), model(torch.zeros(2, 3, 64, 64)), 4.0)
    assert float(same.detach()) == 0.0  # MSE on every output, outputs of unknown meaning


@pytest.mark.parametrize(
    "loss, message",
    [
        (lambda out, y: out[0].mean(1), "returned a tensor of shape .* not one number"),
        (lambda out, y: float(out[0].mean()), "returned float, not a tensor"),
        (lambda out, y: out[0].mean().detach(), "without a gradient"),
    ],
)
def test_a_loss_that_is_not_a_scalar_with_a_gradient_is_refused(loss, message):
    with pytest.raises(TrtpruneError, match=message):
        trtprune.finetune(TinyDetector(), detector_task.train, epochs=1, loss=loss, metric=detector_task.metric)


@pytest.mark.parametrize("value", [None, float("nan"), "high", math.inf])
def test_a_metric_that_is_not_a_finite_number_is_refused(value):
    with pytest.raises(TrtpruneError, match="metric returned .*, not a finite number"):
        trtprune.evaluate(TinyDetector(), metric=lambda m: value)


def test_a_failing_metric_and_targets_that_do_not_fit_are_one_message_each():
    with pytest.raises(TrtpruneError, match="metric failed: ZeroDivisionError"):
        trtprune.evaluate(TinyDetector(), metric=lambda m: 1 / 0)
    x, _ = cells(64, 1)
    boxes = DataLoader(TensorDataset(x, torch.zeros(64, 5)), batch_size=32)  # floats: not cell classes

    def loss(out, y):
        return torch.nn.functional.cross_entropy(out[0][:, CLASS_CHANNELS], y)

    with pytest.raises(TrtpruneError, match="the API's loss failed: RuntimeError: .*targets"):
        trtprune.finetune(TinyDetector(), boxes, epochs=1, loss=loss, metric=detector_task.metric)


def test_task_files_give_the_users_task_and_its_loaders():
    task = get_task(f"{TASK_FILE}:detector_task")
    assert task.metric_name == "cell accuracy (%)" and not task.images_metric
    train, val = task_data(task)
    assert train is detector_task.train or len(train.dataset) == 192
    seg = get_task(f"{TASK_FILE}:segmentation_task")
    assert seg.metric_key == "miou" and seg.images_metric and len(task_data(seg)) == 2
    assert task_data(seg, "my/data") == "my/data"  # --data wins over the task's loaders
    with pytest.raises(TrtpruneError, match="has no object 'nothing'"):
        get_task(f"{TASK_FILE}:nothing")
    with pytest.raises(TrtpruneError, match="unknown task 'detection'"):
        get_task("detection")
    with pytest.raises(TrtpruneError, match="holds neither a loss nor a metric"):
        get_task({"loaders": None})
    with pytest.raises(TrtpruneError, match="metric is a str, not a function"):
        get_task({"loss": detector_task.loss, "metric": "map"})
