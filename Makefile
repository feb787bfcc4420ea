# Every target sets itself up: a fresh machine needs only Python 3.11 and pip (and apt-get, as root,
# for the headless Chromium of the end-to-end test).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
SCENARIO ?= scenarios/baseline.yaml

.PHONY: demo test serve lint bench clean browser types

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## make demo: simulate the bundled baseline scenario offline and print the latency summary
demo: $(STAMP)
	$(BIN)/pipesim run $(SCENARIO) --out out/demo --plots out/demo/plots

## make test: the whole test suite (unit, model, notebooks, live server, browser end-to-end)
test: $(STAMP) browser
	$(BIN)/python -m pytest

## make serve: the live mock backend on ws://127.0.0.1:8001/ws with the dashboard on http://127.0.0.1:8001/
serve: $(STAMP)
	$(BIN)/pipesim serve scenarios/frontend_demo.yaml

## make types: regenerate frontend/src/pipesim-protocol.ts from pipesim/protocol.py
types: $(STAMP)
	bash scripts/gen-types.sh

lint: $(STAMP)
	$(BIN)/ruff check pipesim tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

browser:
	@bash scripts/install-browser.sh

clean:
	rm -rf $(VENV) out .pytest_cache
