# The two commands of the README:  make run  (the local stack)  and  make test  (everything CI runs).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint unit e2e bench clean

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

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
