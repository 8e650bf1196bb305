# Two commands for a new machine with only Python 3.11+: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One Dagster instance for `make ui`, `make run` and `.venv/bin/segmentation` (the CLI's own default).
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home

.PHONY: setup setup-test services lock run run-orders test ui mlflow-ui score drift bench clean stack-up stack-down stack-status compose-up compose-down

# What running needs (no pyspark, no playwright), from uv.lock; progress and timing on screen.
$(VENV)/.installed-run: pyproject.toml uv.lock scripts/requirements/run.txt
	PYTHON=$(PYTHON) scripts/install.sh run
	touch $@

# The test extras on top (pytest, playwright, pyspark).
$(VENV)/.installed-test: pyproject.toml uv.lock scripts/requirements/test.txt
	PYTHON=$(PYTHON) scripts/install.sh test
	touch $@

setup: $(VENV)/.installed-run $(DAGSTER_HOME)/dagster.yaml
setup-test: $(VENV)/.installed-test $(DAGSTER_HOME)/dagster.yaml

$(DAGSTER_HOME)/dagster.yaml: configs/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp configs/dagster.yaml $@

## services: start (and install, when missing) MariaDB, PostgreSQL, chromium, the JDBC jar, Java
services:
	scripts/test_services.sh

## lock: re-resolve uv.lock and the pip fallback files exported from it (needs uv)
lock:
	uv lock
	uv export --frozen --no-emit-project --no-dev --format requirements-txt -o scripts/requirements/run.txt
	uv export --frozen --no-emit-project --no-dev --extra dev --extra spark --format requirements-txt -o scripts/requirements/test.txt

## run: set up, seed demo data on first run, run the whole pipeline on the embedded default
run: setup
	$(BIN)/segmentation demo-data --if-missing
	$(BIN)/segmentation run

## run-orders: the same from a demo orders table (configs/transactions.yaml, README "Starting from orders")
run-orders: setup
	$(BIN)/segmentation --config configs/transactions.yaml demo-data --transactions --if-missing
	$(BIN)/segmentation --config configs/transactions.yaml run

## test: the whole test suite, after installing and starting everything it needs
test: setup-test services
	$(BIN)/python -m pytest

## ui: the Dagster UI with the daemon (schedules and sensors) at http://127.0.0.1:3000
ui: setup
	$(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000

## mlflow-ui: the MLflow UI over the embedded store at http://127.0.0.1:5000
mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/data/mlflow.db --host 127.0.0.1 --port 5000

score: setup
	$(BIN)/segmentation score

drift: setup
	$(BIN)/segmentation drift

## bench: the benchmark suite (see benchmarks/RESULTS.md)
bench: setup
	$(BIN)/python -m benchmarks.run

## stack-up: the production topology without Docker (Postgres-backed Dagster + MLflow server) on loopback
STACK := $(BIN)/python scripts/native_stack.py
stack-up: setup
	$(STACK) start
stack-down:
	$(STACK) stop
stack-status:
	$(STACK) status

## compose-up: the production stack in Docker (cp .env.example .env first)
compose-up:
	docker compose up -d --build
compose-down:
	docker compose down

clean:
	rm -rf data .dagster_home
