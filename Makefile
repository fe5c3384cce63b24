# replisynth: `make run` runs the demo pipeline, `make test` the fast tests (unit tests and a
# small end-to-end demo), `make test-all` every test. All build .venv/ (Python 3.11, exact pins
# from requirements.lock) when it is missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CORES ?= 2
# `make rebuild`: the bundle the outside side starts from (the demo's after `make extract`)
BUNDLE ?= results/card1995/bundle

.PHONY: run test test-slow test-slurm slurm-up slurm-down test-all lint extract rebuild clean lock demo-data

# Every job is a new interpreter: compiled modules spare each one compiling the package again
# where the environment sets PYTHONDONTWRITEBYTECODE (Python then reads .pyc files but never
# writes them). Only modules whose source changed are compiled again.
COMPILE := $(BIN)/python -m compileall -q src

run: $(VENV)/.installed
	$(COMPILE)
	$(BIN)/snakemake --cores $(CORES)

# Secure side only: manifest -> releases -> bundle (results/<name>/bundle).
extract: $(VENV)/.installed
	$(COMPILE)
	$(BIN)/snakemake --cores $(CORES) extract

# Outside side only: synthesize, pin, verify and report from a bundle alone.
rebuild: $(VENV)/.installed
	@test -f $(BUNDLE)/manifest.json || { echo "make rebuild: no bundle at $(BUNDLE) (run make extract, or pass BUNDLE=DIR)"; exit 2; }
	$(COMPILE)
	$(BIN)/snakemake --cores $(CORES) --config bundle=$(BUNDLE)

# Fast tier: unit tests and a small end-to-end demo (not the tests marked slow or slurm), one
# pytest-xdist worker per logical core (TEST_WORKERS=0: one process); a test file stays on one worker.
TEST_WORKERS ?= logical
test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The end-to-end suites marked slow (workflow variants, resume, profiles, panels).
test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow

# The demo on a real single-node Slurm cluster (needs root; installs slurm-wlm and munge with
# apt, starts the daemons, stops the ones it started). Skips without root or apt unless
# REPLISYNTH_REQUIRE_SLURM=1 (as in .ci/run).
test-slurm: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs -m slurm

slurm-up:
	bash ci/slurm/up.sh

slurm-down:
	bash ci/slurm/down.sh

# Every test: fast, slow and Slurm (Slurm skips without root and apt unless REPLISYNTH_REQUIRE_SLURM=1).
test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs -m ""

lint: $(VENV)/.installed
	$(BIN)/ruff check src scripts tests benchmarks data
	$(BIN)/ruff format --check src scripts tests benchmarks data
	$(BIN)/mypy
	$(BIN)/snakemake --lint

$(VENV)/.installed: requirements.lock pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; install Python 3.11 or run: make PYTHON=python3"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	$(COMPILE)
	touch $@

# Regenerate the lock from the direct dependencies (needs network to PyPI).
lock:
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install --quiet -e '.[dev,workflow,slurm]'
	.lockvenv/bin/pip freeze --exclude-editable | sort -f > requirements.lock
	rm -rf .lockvenv

# Rebuild the embedded demo .dta from linearmodels' copy of Card (1995).
demo-data: $(VENV)/.installed
	$(BIN)/python data/make_card_dta.py data/card.dta

clean:
	rm -rf results .snakemake
