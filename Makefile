# eventmail — developer entry points. Everything installs into ignored folders (.venv, .cache).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CACHE ?= $(CURDIR)/.cache
export EVENTMAIL_CACHE := $(CACHE)
export PATH := $(CURDIR)/$(BIN):$(CACHE)/bin:$(PATH)
KAFKA_PORT ?= 9092
REGISTRY_PORT ?= 8081
PYTEST_ARGS ?=

.PHONY: install test lint format kafka-up kafka-down registry-up registry-down demo bench chaos tools clean console-screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed ## a .venv with eventmail and its development tools

tools: ## helm, kubeconform (go install), Debian's prometheus + promtool (apt-get download, in .cache), chromium and kcat (apt-get)
	deploy/helm/install-tools.sh
	deploy/prometheus/install.sh
	deploy/console/install-browser.sh
	deploy/local/install-kcat.sh

test: install tools ## unit, property, integration (real Kafka, real SMTP), helm checks, short chaos runs
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

lint: install ## ruff (lint + format check) and mypy --strict on consumer/
	$(BIN)/ruff check consumer tests bench
	$(BIN)/ruff format --check consumer tests bench
	$(BIN)/mypy consumer

format: install
	$(BIN)/ruff format consumer tests bench
	$(BIN)/ruff check --fix consumer tests bench

kafka-up: install ## Kafka (KRaft) on 127.0.0.1:$(KAFKA_PORT); BROKERS=3 for three nodes, SECURE=1 for SASL_SSL + ACLs
	KAFKA_PORT=$(KAFKA_PORT) KAFKA_BROKERS=$(or $(BROKERS),1) KAFKA_SECURE=$(or $(SECURE),0) deploy/local/kafka.sh up

kafka-down:
	KAFKA_PORT=$(KAFKA_PORT) KAFKA_BROKERS=$(or $(BROKERS),1) KAFKA_SECURE=$(or $(SECURE),0) deploy/local/kafka.sh down

registry-up: kafka-up ## a Schema Registry (Apicurio, Confluent API) on 127.0.0.1:$(REGISTRY_PORT), schemas kept in Kafka
	REGISTRY_PORT=$(REGISTRY_PORT) KAFKA_PORT=$(KAFKA_PORT) deploy/local/registry/registry.sh up
	@echo "EVENTMAIL_SCHEMA_REGISTRY__URL=$$(REGISTRY_PORT=$(REGISTRY_PORT) deploy/local/registry/registry.sh url)"

registry-down:
	REGISTRY_PORT=$(REGISTRY_PORT) deploy/local/registry/registry.sh down

demo: install kafka-up ## everything local: Kafka, an SMTP sink, sample rules and events
	$(BIN)/eventmail demo

console-screenshots: install tools ## docs/console/*.png: every console screen of a running demo, in Debian's chromium
	$(BIN)/python deploy/console/screenshots.py

bench: install kafka-up ## benchmarks; QUICK=1 for a short run
	$(BIN)/python -m bench $(if $(QUICK),--quick,)

chaos: install ## the long reliability suite (kill -9, broker restart, SMTP outages); figures in docs/reliability.md
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
