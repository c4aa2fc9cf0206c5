# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000

.PHONY: run test lint typecheck bench clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.installed-dev: requirements-dev.txt $(VENV)/.installed
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

run: $(VENV)/.installed
	$(PY) -m plugin init
	PORT=$(PORT) $(PY) -m plugin serve

test: $(VENV)/.installed-dev
	$(PY) -m pytest

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy --strict plugin connectors

bench: $(VENV)/.installed-dev
	$(PY) bench/receive.py --repeat 3
	$(PY) bench/salesforce.py
	$(PY) bench/approvals.py
	$(PY) bench/leaders.py
	$(PY) bench/pipeline.py
	$(PY) bench/worker.py
	$(PY) bench/provenance_log.py
	$(PY) bench/growth.py

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
