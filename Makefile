# Two commands on a fresh machine: `make book` and `make test`.
# The environment is pinned by constraints.txt; VENV may point to a shared, hash-keyed location
# (.ci/run does this so that CI runs reuse one environment per lock file).
PYTHON ?= python3
VENV ?= .venv
PROFILE ?= offline
PY := $(VENV)/bin/python
LOCK_HASH := $(shell sha256sum constraints.txt | cut -c1-12)
STAMP := $(VENV)/.pure-env-$(LOCK_HASH)
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: book test env bench bench-scale bench-gpu models family clean clean-cache screenshots axe

## book: execute every notebook on $(PROFILE) (only those that changed) and build the HTML book;
## BOOK_JOBS notebooks at once (default auto: 2 on two or more cores)
book: $(STAMP)
	$(PY) -m pure_utils.book build --profile $(PROFILE)

## test: run the test suite, one worker per core (TEST_WORKERS=1 runs it in one process); the
## tests go out in the order tests/conftest.py gives them, the long ones first
TEST_WORKERS ?= auto
test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

## env: create the virtual environment with the pinned packages and the Jupyter kernel
env: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r constraints.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	$(PY) -m ipykernel install --sys-prefix --name pure-utils --display-name "Python (pure-utils)"
	rm -f $(VENV)/.pure-env-*
	touch $@

## bench: the engine against a naive per-neuron pipeline (prints ratios)
bench: $(STAMP)
	$(PY) -m pure_utils.perf

## bench-scale: every stage of the paper profile on this machine's CPU at a reduced size (48
## images, 8 neurons x 6 references; heatmaps, embeddings and Eq. 5 stop after 60 s each and are
## extrapolated; about 5 minutes on 2 cores), with the fp32-bf16 comparison and the memory check
## at 4x the images; the table goes to _build/bench/cpu.json and .md
bench-scale: $(STAMP)
	$(PY) -m pure_utils.perf --scale paper --stage-cap 60 --compare-precision bf16 --memory-check --out _build/bench/cpu.json

## bench-gpu: the paper's sizes on one GPU (50,000 images, 2048 neurons x 100 references; each
## neuron-chunked stage stops after 50 s and is extrapolated; sized for about 8 minutes on an
## H100, an estimate until it is timed there). Runs
## with plain $(PYTHON), no virtual environment: it needs torch, timm, transformers, scikit-learn,
## safetensors, numpy, scipy, pandas and zennit. A smaller run: make bench-gpu GPU_IMAGES=5000;
## the table elsewhere: make bench-gpu GPU_OUT=/some/folder/gpu.json
GPU_IMAGES ?= 50000
GPU_OUT ?= _build/bench/gpu.json
bench-gpu:
	$(PYTHON) -m pure_utils.perf --scale paper --device cuda --images $(GPU_IMAGES) --stage-cap 50 --compare-precision bf16 --compare-neurons 256 --memory-check --out $(GPU_OUT)

## models: train the three shipped models of the controlled benchmark again, the two ResNets and the
## ConvNeXt of "PURE beyond ResNets" (the commands of their cards; about 10 minutes each on 2 CPU cores)
models: $(STAMP)
	$(PY) -m pure_utils.shapes.train --model synthetic_resnet_bottleneck --epochs 6 --max-steps 785 --threads 1 --out data/models
	$(PY) -m pure_utils.shapes.train --model synthetic_resnet_basic --epochs 10 --out data/models
	$(PY) -m pure_utils.shapes.train --model synthetic_convnext --epochs 15 --threads 1 --out data/models

## family: train the model family of the chapter "When do circuits beat activations?" (9 models,
## about 8 minutes each on one CPU core, two at a time)
family: $(STAMP)
	$(PY) -m pure_utils.shapes.train --model family --jobs 2 --out data/models

clean:
	rm -rf _build book/executed

clean-cache:
	rm -rf .cache/pure

## screenshots: render every page of the built book in headless Chromium (1280 and 390 px, light and dark) and check it,
## axe-core's WCAG 2 A and AA rules included (installed first by `make axe`; nothing is downloaded during the check)
screenshots: $(STAMP) axe
	$(PY) -m pure_utils.book screenshots

## axe: install axe-core (the pinned AXE_VERSION) from npm into .cache/axe, skipped when that version is there
AXE_VERSION := 4.14.1
axe:
	@grep -qs '"version": "$(AXE_VERSION)"' .cache/axe/node_modules/axe-core/package.json \
		|| npm install --no-save --no-audit --no-fund --prefix .cache/axe axe-core@$(AXE_VERSION)
