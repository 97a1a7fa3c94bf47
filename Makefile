# Two entry points: `make demo` (the main job end to end) and `make test`.
# Both create/reuse a local virtualenv in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; on a CUDA machine install your CUDA torch into the venv first.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.ivt-installed

.PHONY: demo test install clean-demo

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ivt demo

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

clean-demo:
	rm -rf data/synthpedes runs/demo
