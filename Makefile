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

# The quickstart: `mlff-calc distill` of GFN2-xTB for ethanol, methylamine and acetaldehyde into runs/demo
# (~8 min on 2 CPU cores): sample, label, train, three on-policy rounds, compare on held-out frames, NVE
# check, harmonic frequencies; prints the summary. Re-running skips finished stages (rm -rf runs/demo to start over).
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
