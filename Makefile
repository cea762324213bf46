# Two entry points: `make demo` (install, train on synthetic shapes, caption, overlays)
# and `make test`. Both create .venv and install everything they need on a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/shapes
DEMO_RUN := runs/demo

.PHONY: install test lint demo notebook bench gpu-check clean system-deps

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

# What the package needs outside Python, from Debian when apt-get is there: a headless Java
# runtime for the COCO metrics (PTB tokenizer, METEOR), and chromium with its driver for the
# browser tests of the gallery and the service page.
system-deps:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
		{ command -v apt-get >/dev/null && apt-get update -qq && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		echo "warning: could not install$$missing; the tests that need them will be skipped"; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP) system-deps
	$(PY) -m pytest -q --durations=10

CAPTIONER := $(VENV)/bin/captioner
BEST := $(DEMO_RUN)/checkpoints/best.ckpt

# The demo: synthetic data (made once), train with configs/shapes.yaml, test the best
# checkpoint (metrics.json beside it), caption the test images, draw overlays and a gallery.
demo: $(STAMP) system-deps
	@test -f $(DEMO_DATA)/annotations/captions_train.json || $(CAPTIONER) data synth --out $(DEMO_DATA)
	$(CAPTIONER) train fit --config configs/shapes.yaml
	$(CAPTIONER) train test --config configs/shapes.yaml --trainer.logger false \
		--trainer.enable_progress_bar false --ckpt_path $(BEST)
	$(CAPTIONER) caption --ckpt $(BEST) $(DEMO_DATA)/test > $(DEMO_RUN)/captions.txt
	@head -n 5 $(DEMO_RUN)/captions.txt
	$(CAPTIONER) attend --ckpt $(BEST) --out $(DEMO_RUN)/attention $$(ls $(DEMO_DATA)/test/*.png | head -n 8)
	$(CAPTIONER) gallery --ckpt $(BEST) --data $(DEMO_DATA) --split test --n 24 --out $(DEMO_RUN)/gallery
	@echo "metrics: $(DEMO_RUN)/checkpoints/metrics.json  overlays: $(DEMO_RUN)/attention/  gallery: $(DEMO_RUN)/gallery/index.html"

# The walkthrough (notebooks/walkthrough.ipynb, stored without outputs) from a fresh kernel; the
# executed copy, with outputs and figures, goes to runs/walkthrough.ipynb, its files to runs/walkthrough/.
notebook: $(STAMP)
	@mkdir -p runs
	$(PY) -c "import nbclient, nbformat; nb = nbformat.read('notebooks/walkthrough.ipynb', as_version=4); \
		nbclient.NotebookClient(nb, timeout=1200, kernel_name='python3').execute(); \
		nbformat.write(nb, 'runs/walkthrough.ipynb')"
	@echo "executed notebook: runs/walkthrough.ipynb"

bench: $(STAMP)
	$(PY) -m benchmarks

# On a machine with CUDA: the tests marked `gpu` (bf16-mixed and 16-mixed, compile, TF32, predict,
# two-GPU DDP when two exist) and the benchmarks on cuda, mixed-precision rows included, in one JSON.
gpu-check: $(STAMP)
	$(PY) -m benchmarks.gpu_check --out runs/gpu_check.json

clean:
	rm -rf $(DEMO_RUN) $(DEMO_DATA) lightning_logs runs/walkthrough runs/walkthrough.ipynb
