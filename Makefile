# Two entry points: `make demo` (install, train on synthetic shapes, caption, overlays)
# and `make test`. Both create .venv and install everything they need on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/shapes
DEMO_RUN := runs/demo

.PHONY: install test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch/torchvision are pinned to the releases this machine holds on disk; pip would
# otherwise reach for a newer multi-GB build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The gallery test drives a real headless browser; install Debian's chromium when we can.
test: $(STAMP)
	@command -v chromium >/dev/null || { command -v apt-get >/dev/null && \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }; } || \
		echo "warning: chromium could not be installed; the gallery browser tests will be skipped"
	$(PY) -m pytest -q --durations=10

demo: $(STAMP)
	$(PY) -m captioner.demo --data $(DEMO_DATA) --run $(DEMO_RUN)

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(DEMO_RUN) $(DEMO_DATA) lightning_logs
