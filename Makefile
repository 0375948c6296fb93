# hyperlatent: the two set-up commands are `make demo` and `make test` (see README.md).
# Every target creates/updates the virtual environment first, so a fresh clone needs nothing else.
#
# TORCH_SPEC picks the PyTorch build. The default is the small CPU wheel; for CUDA, e.g.
#   make demo TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS     ?= dev,ray,pyod,faiss
BIN        := $(VENV)/bin
STAMP      := $(VENV)/.installed

.PHONY: install demo test test-slow test-all check-sync bench gpu-check clean-nbs export docs check-outputs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-install when the package metadata or the torch choice changes.
$(STAMP): $(BIN)/python settings.ini setup.py pyproject.toml
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	@echo "$(TORCH_SPEC) [$(EXTRAS)]" > $(STAMP)

install: $(STAMP)

# The main job: the flagship anomaly-detection experiment (digits, CPU, a few minutes), executed by papermill
# into runs/demo/ (metrics.json, results table, ROC curves, histograms, verdict); then its summary table.
# Pass other parameters with DEMO_ARGS, e.g. make demo DEMO_ARGS="-p dataset fashion_mnist -p device cuda".
DEMO_NB   ?= nbs/experiments/anomaly_detection.ipynb
DEMO_ARGS ?=
demo: install
	mkdir -p runs/demo
	$(BIN)/papermill $(DEMO_NB) runs/demo/$(notdir $(DEMO_NB)) -k python3 \
		-p output_dir $(CURDIR)/runs/demo -p data_root $(CURDIR)/data $(DEMO_ARGS)
	@cat runs/demo/summary.txt

# Notebooks and modules in sync, notebooks clean: a failure here means "re-export / re-clean and commit".
check-sync: install
	$(BIN)/python tools/check_sync.py

test: install check-sync check-outputs
	$(BIN)/nbdev_test --path nbs --skip_folder_re '^(experiments|[_.])' --n_workers 2
	$(BIN)/python -m pytest tests -q -m "not slow"

# Only what `make test` skips: notebooks run with their `#| slow` cells, and pytest's slow tests (CI runs both).
test-slow: install
	$(BIN)/nbdev_test --path nbs --skip_folder_re '^(experiments|[_.])' --flags slow --n_workers 2
	$(BIN)/python -m pytest tests -q -m slow

# Everything, including cells flagged `#| slow` and tests marked slow.
test-all: install check-sync
	$(BIN)/nbdev_test --path nbs --skip_folder_re '^(experiments|[_.])' --flags slow --n_workers 2
	$(BIN)/python -m pytest tests -q

bench: install
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# CUDA paths (fit with AMP, kNN CUDA vs CPU, objective steps/s, sweep GPU pinning) in < 3 min; a table of numbers.
# Exits 2 without a CUDA device; GPU_CHECK_ARGS=--allow-cpu runs the same checks on the CPU at small sizes.
GPU_CHECK_ARGS ?=
gpu-check: install
	$(BIN)/python bench/gpu_check.py $(GPU_CHECK_ARGS)

export: install
	$(BIN)/nbdev_export
clean-nbs: install
	$(BIN)/nbdev_clean

# Offline HTML docs (no Quarto): every notebook's saved outputs -> _site/index.html, plus an API page.
docs: install
	$(BIN)/python tools/build_docs.py

# Module notebooks keep their figures (< 1 MB each), experiment notebooks keep no outputs.
# Refresh the module notebooks' outputs with: $(BIN)/python tools/execute_nbs.py [nbs/XX.ipynb ...]
check-outputs: install
	$(BIN)/python tools/check_outputs.py
