# vitlab: `make demo` trains the main job; `make test` runs the test suite. Both are idempotent.
# Users with other hardware: `make demo TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q

.PHONY: demo test install dev lint clean

demo: $(VENV)/.runtime
	$(VENV)/bin/vitlab train --out runs/demo --overwrite

test: $(VENV)/.dev
	$(PY) -m pytest -q

install: $(VENV)/.runtime
dev: $(VENV)/.dev

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check src tests benchmarks

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, pinned, so that the package's plain `torch` requirement is already met and no CUDA build is pulled.
$(VENV)/.runtime: pyproject.toml | $(PY)
	$(PIP) $(TORCH_SPEC)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) -e ".[dev,onnx]"
	touch $@

clean:
	rm -rf $(VENV) runs
