# vitlab: `make demo` trains the main job; `make test` runs the test suite. Both are idempotent.
# Users with other hardware: `make demo TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q

.PHONY: demo test install dev lint clean oracle timm-golden

demo: $(VENV)/.runtime
	@echo "make demo: 100 epochs of vit_micro_patch2_8 on digits; expected ~3-4 minutes on 2 CPU cores (200 s measured)"
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

# timm and open_clip as live oracles: a venv outside the clone (fresh clones reuse it), keyed by its
# requirements' hash.
ORACLE_REQ := tests/oracle-requirements.txt
ORACLE_VENV ?= $(HOME)/.cache/vitlab/oracle-venv-$(shell sha256sum $(ORACLE_REQ) | cut -c1-12)
ORACLE_PY := $(ORACLE_VENV)/bin/python
ORACLE_TESTS := tests/convert/test_timm_oracle.py tests/convert/test_timm.py tests/models/test_timm_convnets.py \
	tests/models/test_swin.py tests/bench/test_throughput.py tests/convert/test_openai_clip_rn_oracle.py

$(ORACLE_VENV)/.ready: $(ORACLE_REQ)
	$(PYTHON) -m venv $(ORACLE_VENV)
	$(ORACLE_PY) -m pip install -q torch==2.14.1 torchvision==0.29.1   # first, so nothing else picks a torch
	$(ORACLE_PY) -m pip install -q -r $(ORACLE_REQ)
	touch $@

# vitlab itself (this clone, editable; its pure-python dependencies where missing), then the timm and open_clip tests.
oracle: $(ORACLE_VENV)/.ready
	$(ORACLE_PY) -m pip install -q -e .
	VITLAB_ORACLE=1 HF_HUB_OFFLINE=1 $(ORACLE_PY) -m pytest -q -k "timm or Timm or open_clip" $(ORACLE_TESTS)

timm-golden: $(ORACLE_VENV)/.ready
	$(ORACLE_PY) -m pip install -q -e .
	$(ORACLE_PY) tests/fixtures/make_timm_golden.py

clean:
	rm -rf $(VENV) runs
