# Developer commands. `make test` is the whole suite; it installs what it needs first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install lint format test run demo bench bench-smoke faults faults-smoke clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

install: $(VENV)/.installed node_modules/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(VENV)/.installed
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# pytest exits 5 when it collected no test; that must fail the run, not pass it.
test: install
	$(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; \
	exit $$status

run: install
	$(PY) -m devhost.stack $(ARGS)

demo: install
	$(PY) -m devhost.stack --demo

bench: install
	$(PY) -m bench

bench-smoke: install
	$(PY) -m bench --smoke

faults: install
	$(PY) -m bench.faults

faults-smoke: install
	$(PY) -m bench.faults --smoke

clean:
	rm -rf $(VENV) node_modules .azurite .run .mypy_cache .ruff_cache .pytest_cache
