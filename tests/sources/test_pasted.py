"""The pasted-objects detection set: deterministic, boxes inside the canvas, masks that agree with the boxes."""

import torch

from trtprune.sources.datasets import synthetic_cifar10
from trtprune.sources.pasted import MAX_HIDDEN, OBJECTS, PastedObjects, _hidden


def test_canvases_are_deterministic_and_boxes_masks_and_labels_agree():
    x, y = synthetic_cifar10(50, 1)
    a, b = PastedObjects(x, y, 20, 96, seed=3), PastedObjects(x, y, 20, 96, seed=3)
    for i in range(20):
        (img, t), (img2, t2) = a[i], b[i]
        assert torch.equal(img, img2) and torch.equal(t["boxes"], t2["boxes"])
        assert img.shape == (3, 96, 96) and float(img.min()) >= 0 and float(img.max()) <= 1
        boxes, labels, mask = t["boxes"], t["labels"], t["mask"]
        assert OBJECTS[0] <= len(boxes) <= OBJECTS[1] and len(labels) == len(boxes)
        assert float(boxes.min()) >= 0 and float(boxes.max()) <= 96
        x0, y0, x1, y1 = (int(v) for v in boxes[-1])  # the last pasted object is whole on top
        assert torch.equal(mask[y0:y1, x0:x1], torch.full((y1 - y0, x1 - x0), int(labels[-1])))
        for k, earlier in enumerate(boxes[:-1].tolist()):
            assert all(_hidden(earlier, later) <= MAX_HIDDEN + 1e-6 for later in boxes[k + 1 :].tolist())
    assert not torch.equal(PastedObjects(x, y, 2, 96, seed=4)[0][0], a[0][0])  # another seed, another set
