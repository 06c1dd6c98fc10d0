# The README's two set-up commands. Both work on a fresh clone with only Python 3.11.
#   make demo   run the whole stack on the embedded broker, a scripted demo, a summary
#   make test   the whole test suite (what CI runs)

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo test up bench clean

$(BIN)/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/paycore demo

up: $(STAMP)
	$(BIN)/paycore up

bench: $(STAMP)
	$(BIN)/paycore bench $(BENCH_ARGS)

test: $(STAMP)
	@bash scripts/install-system-deps.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .paycore .pytest_cache .hypothesis
