# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-instructions bench-tools prometheus clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The monitoring tests need Debian's prometheus (promtool and the server).
prometheus:
	@command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || \
	  { echo "installing Debian's prometheus for the monitoring tests"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq prometheus >/dev/null; }

demo: $(STAMP)
	$(PY) -m examples.gateway.demo

test: $(STAMP) prometheus
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check instrument adapters tests examples benchmarks
	$(VENV)/bin/mypy

# make bench: every benchmark, with wrk and valgrind from Debian, uvloop/httptools (the bench
# extra) and the LLM-layer peers in their own venv; writes benchmarks/RESULTS.md.
PEERS       := .venv-peers
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

# OpenLIT and OpenLLMetry pin OpenTelemetry packages the dev extra cannot share
$(PEERS)/.installed: pyproject.toml benchmarks/peers-constraints.txt
	test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	$(PEERS)/bin/python -m pip install --quiet --upgrade pip
	$(PEERS)/bin/python -m pip install --quiet -e '.[openai]' openlit traceloop-sdk \
	  -c benchmarks/peers-constraints.txt
	touch $(PEERS)/.installed

bench-tools:
	@command -v wrk >/dev/null 2>&1 && command -v valgrind >/dev/null 2>&1 || \
	  { echo "installing Debian's wrk and valgrind for the benchmarks"; \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq wrk valgrind >/dev/null; }

bench: $(BENCH_STAMP) $(PEERS)/.installed bench-tools
	$(PY) -m benchmarks.run --results benchmarks/RESULTS.md

bench-instructions: $(STAMP) bench-tools
	$(PY) -m benchmarks.instructions

clean:
	rm -rf $(VENV) $(PEERS) build dist *.egg-info
