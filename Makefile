# replisynth: `make run` runs the demo pipeline, `make test` runs the tests.
# Both build .venv/ (Python 3.11, exact pins from requirements.lock) when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2

.PHONY: run test test-slurm slurm-up slurm-down test-all lint extract rebuild clean lock demo-data

run: $(VENV)/.installed
	$(BIN)/snakemake --cores $(CORES)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

# The demo on a real single-node Slurm cluster (needs root; installs slurm-wlm and munge with
# apt, starts the daemons, stops the ones it started). Skips without root or apt unless
# REPLISYNTH_REQUIRE_SLURM=1 (as in .ci/run).
test-slurm: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs -m slurm

slurm-up:
	bash ci/slurm/up.sh

slurm-down:
	bash ci/slurm/down.sh

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m ""

lint: $(VENV)/.installed
	$(BIN)/ruff check src scripts tests benchmarks
	$(BIN)/snakemake --lint

$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; install Python 3.11 or run: make PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	touch $@

# Regenerate the lock from the direct dependencies (needs network to PyPI).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet -e '.[dev,slurm]'
	.lockvenv/bin/pip freeze --exclude-editable | sort -f > requirements.lock
	rm -rf .lockvenv

# Rebuild the embedded demo .dta from linearmodels' copy of Card (1995).
demo-data: $(VENV)/.installed
	$(BIN)/python data/make_card_dta.py data/card.dta

clean:
	rm -rf results .snakemake
