# Every target sets itself up: a fresh machine needs only Python 3.11 and pip (and apt-get, as root,
# for the headless Chromium of the end-to-end test). Each target installs only what it needs:
# demo and serve pipesim alone, test/lint/bench also the dev tools, lab also JupyterLab.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
SCENARIO ?= baseline
RUN_STAMP = $(VENV)/.installed-run
DEV_STAMP = $(VENV)/.installed-dev
LAB_STAMP = $(VENV)/.installed-lab
# pytest's worker processes (pytest-xdist): auto is one per CPU
TEST_WORKERS ?= auto
# npm writes node_modules/.package-lock.json on every install: newer than package-lock.json = installed
NPM_STAMPS = frontend/node_modules/.package-lock.json tests/rtvi_e2e/node_modules/.package-lock.json

.PHONY: demo test serve lab notebooks lint bench clean browser npm-packages types wheel-check frontend-test

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(LAB_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[notebooks]'
	touch $@

## make demo: simulate the bundled baseline scenario offline and print the latency summary
demo: $(RUN_STAMP)
	$(BIN)/pipesim run $(SCENARIO) --out out/demo --plots out/demo/plots

## make test: the whole test suite (unit, model, notebooks, live server, browser end-to-end) in parallel
## workers and, meanwhile, the built wheel installed into a clean venv (its output follows pytest's).
## Whatever the tests install is installed here, once, before the workers start: the Python packages, the
## browser and the npm packages side by side (on a fresh machine each mostly waits on the network).
test:
	@$(MAKE) --no-print-directory -j4 $(DEV_STAMP) browser npm-packages
	@bash scripts/wheel-check.sh $(BIN)/python >$(VENV)/wheel-check.log 2>&1 & wheel=$$!; \
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile; tests=$$?; \
	wait $$wheel; checked=$$?; cat $(VENV)/wheel-check.log; \
	[ $$checked = 0 ] || echo "make test: scripts/wheel-check.sh failed (above)"; \
	[ $$tests = 0 ] && [ $$checked = 0 ]

## make wheel-check: build the wheel, install it into a fresh venv, run pipesim from an empty folder
wheel-check: $(DEV_STAMP)
	bash scripts/wheel-check.sh $(BIN)/python

## make serve: the live mock backend on ws://127.0.0.1:8001/ws with the dashboard on http://127.0.0.1:8001/
serve: $(RUN_STAMP)
	$(BIN)/pipesim serve frontend_demo

## make lab: JupyterLab on notebooks/
lab: $(LAB_STAMP)
	$(BIN)/jupyter lab notebooks/

## make notebooks: re-execute every notebook in place (their seeds are fixed), so that they are stored with
## their tables and figures; run it after a change that moves a number or a figure in them
notebooks: $(DEV_STAMP)
	$(BIN)/python scripts/execute_notebooks.py

## make types: regenerate frontend/src/pipesim-protocol.ts from pipesim/protocol.py
types: $(DEV_STAMP)
	bash scripts/gen-types.sh

## make frontend-test: the example Playwright test of frontend/ (admin API + dashboard in headless Chromium)
frontend-test: $(DEV_STAMP) browser
	cd frontend && npm ci --no-audit --no-fund && PIPESIM=$(abspath $(BIN))/pipesim npx playwright test

lint: $(DEV_STAMP)
	$(BIN)/ruff check pipesim tests benchmarks

bench: $(DEV_STAMP)
	$(BIN)/python benchmarks/run_all.py

browser:
	@bash scripts/install-browser.sh

## make npm-packages: the pinned npm packages the tests use (npm ci where a package-lock.json is newer)
npm-packages: $(NPM_STAMPS)

%/node_modules/.package-lock.json: %/package-lock.json
	@if command -v npm >/dev/null 2>&1; then cd $* && npm ci --no-audit --no-fund --loglevel=error; \
	else echo "npm-packages: npm not found; the tests that need $*/node_modules will be skipped" >&2; fi

clean:
	rm -rf $(VENV) out .pytest_cache
