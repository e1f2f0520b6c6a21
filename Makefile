# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-instructions prometheus clean

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

bench: $(STAMP)
	$(PY) -m benchmarks.run

bench-instructions: $(STAMP)
	command -v valgrind >/dev/null || (apt-get update && apt-get install -y valgrind)
	$(PY) -m benchmarks.instructions

clean:
	rm -rf $(VENV) build dist *.egg-info
