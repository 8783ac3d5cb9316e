# The two commands of the README:  make run  (the local stack)  and  make test  (everything CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint unit e2e bench inference-perf clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/epp up

lint: $(STAMP)
	$(BIN)/ruff check epp tests loadtest
	$(BIN)/ruff format --check epp tests loadtest
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -m "not bench" -q

bench: $(STAMP)
	$(BIN)/pytest -m bench -s -q

# inference-perf (its own Python >= 3.12 venv, made once) against ours and a peer; see docs/benchmarks.md
inference-perf: $(STAMP)
	$(BIN)/python -m loadtest.perf

clean:
	rm -rf $(VENV) .venv-inference-perf .mypy_cache .ruff_cache .pytest_cache
