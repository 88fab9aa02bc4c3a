# The two commands of the README:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install services migrate run test lint asyncapi nestjs docs demo bench fmt clean

$(STAMP): pyproject.toml contracts/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ./contracts -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the worker, the contracts and the dev tools

services:  ## start the local PostgreSQL and RabbitMQ if they are down
	./scripts/services.sh

migrate: install services  ## create/upgrade the database
	$(BIN)/billing-worker migrate

# The local worker runs with the sandbox provider (deposits complete without a provider
# account); export BILLING_SANDBOX_ENABLED=false to run it without.
run: migrate  ## set up and run the worker against the local services
	BILLING_SANDBOX_ENABLED=$${BILLING_SANDBOX_ENABLED:-true} $(BIN)/billing-worker run

lint: install  ## ruff, ruff format, mypy --strict, and the import rules (no cycles)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python scripts/check_imports.py

asyncapi:  ## validate contracts/asyncapi.json with the official AsyncAPI parser (npm)
	cd scripts/asyncapi && npm install --no-audit --no-fund --loglevel=error
	node scripts/asyncapi/validate.mjs contracts/asyncapi.json

# The NestJS service of tests/nestjs (pinned in its package-lock.json), compiled with tsc;
# tests/nestjs/test_nestjs.py runs it against a live worker.
NESTJS := tests/nestjs
$(NESTJS)/node_modules/.installed: $(NESTJS)/package.json $(NESTJS)/package-lock.json
	cd $(NESTJS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(NESTJS)/dist/.built: $(NESTJS)/node_modules/.installed $(NESTJS)/tsconfig.json $(wildcard $(NESTJS)/src/*.ts)
	cd $(NESTJS) && node_modules/.bin/tsc -p .
	touch $@

nestjs: $(NESTJS)/dist/.built  ## install and build the NestJS test service (npm, tsc)

docs: install  ## regenerate contracts/asyncapi.json, contracts/CATALOGUE.md, the README index
	$(BIN)/billing-worker docs

demo: migrate  ## a guided end-to-end run against the local services
	$(BIN)/billing-worker demo

bench: install services  ## the benchmark: the worker against the floor (about 10 minutes)
	$(BIN)/python -m benchmarks.run

test: install services lint asyncapi nestjs  ## set up and run the whole test suite (with coverage)
	$(BIN)/pytest --cov --cov-report=term

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
