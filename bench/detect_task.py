"""The detection benchmark's task file (make bench-detect): examples/yolo_task.py at 3x128x128, 8,000 training
canvases made from CIFAR-10's training photos and 1,000 validation canvases from its test photos (objects of
26-64 pixels, about CIFAR's own size), batches of 32. ``--task bench/detect_task.py:task``, ``--model
bench/detect_task.py:yolov8n``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import yolo_task  # noqa: E402

SIZE, TRAIN_IMAGES, VAL_IMAGES, BATCH = 128, 8000, 1000, 32
task = yolo_task.YoloTask(size=SIZE, n_train=TRAIN_IMAGES, n_val=VAL_IMAGES, batch=BATCH)
yolov8n = yolo_task.yolov8n
