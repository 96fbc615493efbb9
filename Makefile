# trtprune: `make engine` sets up and runs the main job; `make test` sets up and runs the tests.
PYTHON  ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
DEVICE  ?= cpu
MODEL   ?= resnet56
EPOCHS  ?= 4
METHOD  ?= locp
BUDGET  ?= 0.5x
SEARCH_EPOCHS ?= 3
SEARCH_ARGS ?=
INT8_ARGS ?=
INT8_PLAN_ARGS ?=
IMPORTANCE_ARGS ?=
DETECT_ARGS ?=
ROWS ?= resnet20:cpu:0.5x:locp:30 resnet20:cpu:0.5x:locp-nodepth:30 resnet20:cpu:0.5x:knapsack:30 resnet20:cpu:0.5x:lap:30 resnet20:cpu:0.5x:uniform-r8:30 resnet20:cpu:0.5x:flops-r1:30 resnet20:cpu:0.5x:flops-r8:30 resnet20:cpu:0.5x:flops-r16:30
# PyTorch's CPU wheels: pip prefers 2.13.0+cpu from here over PyPI's CUDA build (several GB)
# (one retry: offline, with the wheel in a local index, each of 5 default retries per package cost seconds)
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_VERSION ?= 2.13.0
# Data and weights: $(TRTPRUNE_DATA) if set; else a local copy beside the checkout (../shared/data);
# else trtprune downloads them into the user cache (~/.cache/trtprune).
TRTPRUNE_DATA ?= $(if $(wildcard ../shared/data/cifar10),$(abspath ../shared/data),)
export TRTPRUNE_DATA

.PHONY: help setup engine test test-fast test-reliability lint format clean bench-profile bench-lut bench-search bench-int8 bench-fleet bench-confirm bench-finetune bench-shapes bench-importance bench-rows bench-int8-stairs bench-detect
.DEFAULT_GOAL := help

help:
	@echo "make engine [DEVICE=cpu MODEL=resnet56 EPOCHS=4 METHOD=locp BUDGET=0.5x]"
	@echo "                                                   set up, search, prune, fine-tune, build, report"
	@echo "make test                                          set up and run the tests"
	@echo "make test-reliability                              bad inputs, kills, untrusted files, property tests"
	@echo "make bench-profile | bench-lut | bench-search      benchmarks (figures in docs/benchmarks.md)"
	@echo "make bench-fleet                                   profiling wall time with 1 and 2 Ray workers"
	@echo "make bench-confirm                                 spread of a whole-network ratio by rounds per run"
	@echo "make bench-finetune [FINETUNE_ARGS=--settings]     seconds per fine-tuning step: eager vs --compile, or per layout/arithmetic"
	@echo "make bench-shapes                                  ResNet-18 / MobileNetV2 at 3x224x224 searched at 0.5x"
	@echo "make bench-int8 [INT8_ARGS=... INT8_PLAN_ARGS=\"--budget 0.24x --epochs 4\"]"
	@echo "                                                   INT8 ResNet-56: dense PTQ, then pruned for cpu-int8 vs fp32-searched"
	@echo "make bench-int8-stairs [MODEL=resnet56]          fp32 and INT8 stairs of every group on this CPU, side by side"
	@echo "make bench-importance [IMPORTANCE_ARGS=--floors 0.1,0.25]  importance criteria (and floors) on the accuracy proxy"
	@echo "make bench-rows [ROWS=\"resnet56:cpu:0.5x:locp:40 ...\"]   accuracy-at-budget rows, each committed when done (resumable)"
	@echo "make bench-detect [DETECT_ARGS=\"--dense-epochs 40 --epochs 10\"]  YOLOv8n pruned at 0.5x on cpu: mAP50-95 by method"
	@echo "make lint | format | clean"

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --retries 1 torch==$(TORCH_VERSION) --extra-index-url $(TORCH_INDEX)
	echo "torch==$(TORCH_VERSION)" > $(VENV)/torch-pin.txt
	$(BIN)/pip install --quiet -e '.[dev,detect,examples]' -c $(VENV)/torch-pin.txt  # the extras keep this torch
	touch $@

setup: $(BIN)/.installed

engine: setup
	$(BIN)/trtprune run --model $(MODEL) --device $(DEVICE) --method $(METHOD) --budget $(BUDGET) \
		--epochs $(EPOCHS) --name $(MODEL)-$(DEVICE)
	$(BIN)/python bench/record_engine.py runs/$(MODEL)-$(DEVICE)/report.json bench/results/engine.json \
		--command "make engine DEVICE=$(DEVICE) MODEL=$(MODEL) EPOCHS=$(EPOCHS) METHOD=$(METHOD) BUDGET=$(BUDGET)"

bench-profile: setup
	$(BIN)/python bench/bench_profile.py --device $(DEVICE)

bench-lut: setup
	$(BIN)/python bench/bench_lut.py --device $(DEVICE)

bench-search: setup
	$(BIN)/python bench/bench_search.py --epochs $(SEARCH_EPOCHS) $(SEARCH_ARGS)

bench-confirm: setup
	$(BIN)/python bench/bench_confirm.py --device $(DEVICE)

bench-finetune: setup
	$(BIN)/python bench/bench_finetune.py $(FINETUNE_ARGS)

bench-fleet: setup
	$(BIN)/python bench/bench_fleet.py

bench-shapes: setup
	$(BIN)/python bench/bench_shapes.py --device $(DEVICE)

bench-rows: setup
	$(BIN)/python bench/bench_rows.py $(ROWS) --commit

bench-detect: setup
	$(BIN)/python bench/bench_detect.py $(DETECT_ARGS) --commit

bench-importance: setup
	$(BIN)/python bench/bench_importance.py --device $(DEVICE) $(IMPORTANCE_ARGS)

bench-int8-stairs: setup
	$(BIN)/python bench/bench_int8_stairs.py --model $(MODEL)

bench-int8: setup
	$(BIN)/python bench/bench_int8.py $(INT8_ARGS)
	$(BIN)/python bench/bench_int8_plans.py $(INT8_PLAN_ARGS)

# one worker per core (pytest-xdist)
PYTEST_PARALLEL = $(BIN)/python -m pytest -q -n auto --dist worksteal

test: setup
	$(PYTEST_PARALLEL)

test-fast: setup
	$(PYTEST_PARALLEL) -m "not slow"

test-reliability: setup
	$(BIN)/python -m pytest -q tests/test_reliability.py tests/test_properties.py tests/mistakes

lint: setup
	$(BIN)/ruff check trtprune tests bench examples
	$(BIN)/ruff format --check trtprune tests bench examples

format: setup
	$(BIN)/ruff format trtprune tests bench examples
	$(BIN)/ruff check --fix trtprune tests bench examples

clean:
	rm -rf runs .pytest_cache .ruff_cache
