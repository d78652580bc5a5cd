# mlff_calc: install / demo / test.  `make test` on a fresh clone installs everything it needs.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

install: $(STAMP)

# Re-install when the package metadata or the pins change.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	$(PIP) install -c constraints.txt -e ".[all,dev]"
	touch $(STAMP)

# Short MD run with a (random-weight, for now) student and the benchmark table.
demo: install
	$(PY) -m mlff_calc.demo

# The default test run: everything but tests marked slow.
test: install
	$(PY) -m pytest -m "not slow" -q

test-all: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/bench_speed.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
