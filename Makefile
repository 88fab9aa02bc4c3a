# The two commands of the README:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install lock services migrate run test lint rules asyncapi nestjs codegen docs docs-html dist demo bench fmt clean

# Every third-party package comes from the lock, hash-checked, so two installs get the same
# versions; then the two local packages, without resolving anything.
$(STAMP): pyproject.toml contracts/pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install --quiet --no-deps -e ./contracts -e .
	touch $(STAMP)

install: $(STAMP)  ## create .venv with the worker, the contracts and the dev tools (from the lock)

# The locks: requirements.lock (what the image installs) and requirements-dev.lock (make
# install), resolved by uv for Python 3.11 on every platform, with hashes. The two local
# packages are inputs, not entries (pip cannot hash-check a directory).
# tests/unit/test_lock.py fails when pyproject.toml asks for something the locks lack.
UV_COMPILE := $(BIN)/uv pip compile - --universal --python-version 3.11 --generate-hashes \
	--quiet --no-emit-package billing-contracts --no-emit-package billing-worker \
	--custom-compile-command "make lock"
lock: install  ## re-resolve requirements.lock and requirements-dev.lock from pyproject.toml
	printf -- '-e ./contracts\n-e .\n' | $(UV_COMPILE) -o requirements.lock
	printf -- '-e ./contracts\n-e .[dev]\n' | $(UV_COMPILE) -o requirements-dev.lock

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

# The alert rules of deploy/prometheus and their unit tests, where promtool is installed
# (Debian's `prometheus` package; .ci/run installs it when it is missing).
PROMTOOL := $(shell command -v promtool 2>/dev/null)
rules:  ## promtool check rules + promtool test rules (deploy/prometheus)
ifdef PROMTOOL
	cd deploy/prometheus && $(PROMTOOL) check rules alerts.yaml && $(PROMTOOL) test rules alerts.test.yaml
else
	@echo "promtool is not installed: the alert rules are not checked (apt-get install prometheus)"
endif

# The npm tools are pinned by their lockfiles and installed with `npm ci` when a lockfile
# changes. html-template's puppeteer (for PDFs, unused) would download a browser: skipped.
NPM_CI := PUPPETEER_SKIP_DOWNLOAD=true npm ci --no-audit --no-fund --loglevel=error

scripts/%/node_modules/.installed: scripts/%/package-lock.json
	cd scripts/$* && $(NPM_CI)
	touch $@

asyncapi: scripts/asyncapi/node_modules/.installed  ## validate contracts/asyncapi.json with the official AsyncAPI parser (npm)
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

# TypeScript models generated with Modelina compile under tsc --strict and narrow on `ok`;
# the HTML docs render with the network cut off (scripts/codegen/codegen.test.mjs).
codegen: scripts/codegen/node_modules/.installed  ## test the TypeScript codegen and the offline HTML docs (npm)
	node --test scripts/codegen/

docs-html: scripts/codegen/node_modules/.installed  ## render the HTML docs of the AsyncAPI document into build/asyncapi-html/
	node scripts/codegen/render-html.mjs contracts/asyncapi.json build/asyncapi-html

dist: install  ## build the billing-contracts wheel and sdist into dist/
	rm -f dist/billing_contracts-*
	$(BIN)/python -m build --outdir dist contracts

docs: install  ## regenerate contracts/asyncapi.json, contracts/CATALOGUE.md, the README index
	$(BIN)/billing-worker docs

demo: migrate  ## a guided end-to-end run against the local services
	$(BIN)/billing-worker demo

bench: install services  ## the benchmark: the worker against both floors (about 40 minutes; see benchmarks/README.md)
	$(BIN)/python -m benchmarks.run

# pytest runs twice. First, alone, the tests marked `serial`: they restart the machine's
# RabbitMQ and PostgreSQL, or boot a RabbitMQ cluster of their own. Then everything else
# on TEST_WORKERS pytest-xdist processes, each with a database and a vhost of its own
# (the tests mostly wait on the broker, the database and the worker processes they start,
# so 3 processes keep a 2-core machine busy). Coverage and the fault suite's figures add up
# across both runs; the floor is checked on the total.
# The checks before pytest (lint, the alert rules, the AsyncAPI parser, the NestJS build,
# the codegen test) run side by side, each one's output kept together: mostly npm
# installs and disk waits.
TEST_WORKERS ?= 3
test: install services  ## set up and run the whole test suite (with coverage)
	$(MAKE) --no-print-directory -j4 --output-sync=target lint rules asyncapi nestjs codegen
	rm -f tests/faults/last-run.json
	$(BIN)/pytest -m serial --cov --cov-report= --cov-fail-under=0
	BILLING_FAULT_FIGURES=append $(BIN)/pytest -m "not serial" -n $(TEST_WORKERS) \
		--cov --cov-append --cov-report=term

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
