# The two commands a new user needs: `make demo` (the offline CPU toy grid) and `make test`.
# Each creates .venv on first use (CPU torch first, so pip never pulls CUDA wheels) and is a no-op install after.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: demo test venv lint clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check clo_lib tests bench

demo: $(STAMP)
	$(PY) -m clo_lib.demo

clean-venv:
	rm -rf $(VENV)
