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

CAPTIONER := $(VENV)/bin/captioner
BEST := $(DEMO_RUN)/checkpoints/best.ckpt

# The demo: synthetic data (made once), train with configs/shapes.yaml, test the best
# checkpoint (metrics.json beside it), caption the test images, draw overlays and a gallery.
demo: $(STAMP)
	@test -f $(DEMO_DATA)/annotations/captions_train.json || $(CAPTIONER) data synth --out $(DEMO_DATA)
	$(CAPTIONER) train fit --config configs/shapes.yaml
	$(CAPTIONER) train test --config configs/shapes.yaml --trainer.logger false \
		--trainer.enable_progress_bar false --ckpt_path $(BEST)
	$(CAPTIONER) caption --ckpt $(BEST) $(DEMO_DATA)/test > $(DEMO_RUN)/captions.txt
	@head -n 5 $(DEMO_RUN)/captions.txt
	$(CAPTIONER) attend --ckpt $(BEST) --out $(DEMO_RUN)/attention $$(ls $(DEMO_DATA)/test/*.png | head -n 8)
	$(CAPTIONER) gallery --ckpt $(BEST) --data $(DEMO_DATA) --split test --n 24 --out $(DEMO_RUN)/gallery
	@echo "metrics: $(DEMO_RUN)/checkpoints/metrics.json  overlays: $(DEMO_RUN)/attention/  gallery: $(DEMO_RUN)/gallery/index.html"

bench: $(STAMP)
	$(PY) -m benchmarks

clean:
	rm -rf $(DEMO_RUN) $(DEMO_DATA) lightning_logs
