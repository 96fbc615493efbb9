"""The YOLO example's task file (examples/yolo_task.py) at test size: generated photos instead of CIFAR-10, 16
training and 8 validation canvases of 320 x 320 (``--task tests/yolo_files.py:task``)."""

import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import yolo_task  # noqa: E402

from trtprune.sources.datasets import synthetic_cifar10  # noqa: E402

task = yolo_task.YoloTask(synthetic_cifar10(64, 1), synthetic_cifar10(32, 2), n_train=16, n_val=8, batch=8)
yolov8n = yolo_task.yolov8n
