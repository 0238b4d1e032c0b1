# The front door.  `make run` and `make test` set everything up themselves.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Chalice apps: each gets the core package installed into its git-ignored vendor/
APPS := $(wildcard functions/*/app.py webapp/app.py)
USERS ?= 5000
# the deployment stage `make synth` writes templates for (queue prefix fmn-STAGE-)
STAGE ?= dev

.DEFAULT_GOAL := help

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): requirements.txt pyproject.toml
	@scripts/system-deps.sh
	$(PYTHON) -m venv $(VENV)
	@# chalice packages with pip and accepts pip<26.3: not the newest
	$(BIN)/pip install -q --upgrade "pip<26.3"
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

# Synapse (the local Matrix homeserver) in an environment of its own: its pins
# never meet the project's.
SYNAPSE_VENV := .venv-synapse
SYNAPSE_STAMP := $(SYNAPSE_VENV)/.installed

$(SYNAPSE_STAMP): requirements-synapse.txt
	$(PYTHON) -m venv $(SYNAPSE_VENV)
	$(SYNAPSE_VENV)/bin/pip install -q --upgrade pip
	$(SYNAPSE_VENV)/bin/pip install -q -r requirements-synapse.txt
	touch $(SYNAPSE_STAMP)

synapse: $(SYNAPSE_STAMP) ## install the local Matrix homeserver (Synapse) into .venv-synapse

setup: $(STAMP) $(SYNAPSE_STAMP) ## create .venv and install everything (system packages too, as root)
	@# LocalStack, the local AWS, in its own .venv-localstack (where Python 3.13 is)
	@scripts/localstack.sh install --optional

services: ## start Redis, PostgreSQL, RabbitMQ and LocalStack if they are not answering
	@scripts/services.sh
	@scripts/localstack.sh start --if-installed

localstack: ## install LocalStack (Python 3.13) in .venv-localstack and start it unless one answers
	@scripts/localstack.sh start

# the messaging stack's template alone (seconds; `make synth` writes both stacks, packaging
# every function): what `fmn up` deploys to LocalStack through CloudFormation
MESSAGING_TEMPLATE := infra/cdk.out/fmn-$(STAGE)-messaging.template.json
$(MESSAGING_TEMPLATE): $(STAMP) infra/app.py $(wildcard infra/fmn_infra/*.py) src/fmn/pipeline/queues.py src/fmn/pipeline/alarms.py
	@# without it (no Node.js, say) fmn up creates the same alarms through the API
	cd infra && FMN_STAGE=$(STAGE) FMN_SYNTH_ONLY=messaging ../$(BIN)/python app.py || \
	  echo "messaging template not written: fmn up creates the queues and alarms through the API"

synth-messaging: $(MESSAGING_TEMPLATE) ## write the messaging stack's template alone (what fmn up deploys to LocalStack)

run: setup $(MESSAGING_TEMPLATE) ## the whole pipeline on this machine, replaying the shared messages (Ctrl-C stops)
	@FMN_SKIP_POSTGRES=1 scripts/services.sh
	@# LocalStack where it is set up (started unless one answers), the moto server otherwise
	@scripts/localstack.sh start --if-installed
	$(BIN)/fmn up --users $(USERS) --replay

test: setup services ## run the whole test suite (lint included)
	$(BIN)/ruff check src bridge functions webapp infra tests loadtest
	$(BIN)/mypy
	$(BIN)/pytest

test-api: setup ## schemathesis against the web API, a longer hunt than make test's
	FMN_SCHEMATHESIS_EXAMPLES=$${EXAMPLES:-30} $(BIN)/pytest -q tests/integration/test_webapp_schemathesis.py

lint: setup ## ruff and mypy only
	$(BIN)/ruff check src bridge functions webapp infra tests loadtest
	$(BIN)/mypy

bench: setup ## matcher benchmark at 10,000 and 100,000 users, then the local stack's throughput
	@mkdir -p var
	$(BIN)/fmn bench match --users 10000,100000 --json var/bench-match.json
	$(BIN)/fmn bench stack --messages 2000 --users 5000 --json var/bench-stack.json

chaos: setup services ## faults under load (2,000 messages each), the ledger of each: one table
	FMN_CHAOS_MESSAGES=$${FMN_CHAOS_MESSAGES:-2000} $(BIN)/pytest tests/chaos -m chaos

fuzz: setup ## the decoders of untrusted bytes, fuzzed longer than in make test
	FMN_FUZZ_EXAMPLES=$${FMN_FUZZ_EXAMPLES:-5000} $(BIN)/pytest tests/unit/test_fuzz_decoders.py

loadtest: setup services ## the 2016 15,000-message test end to end (LocalStack if it answers); report and plots in var/loadtest/
	$(BIN)/fmn loadtest $(LOADTEST_ARGS)

vendor: setup ## install the core package into each Chalice app's vendor/ (for chalice deploy)
	@for app in $(dir $(APPS)); do \
	  echo "vendor: $$app"; rm -rf $$app/vendor; \
	  $(BIN)/pip install -q --no-deps --target $$app/vendor . ; \
	done
	@# Chalice ships vendor/ beside app.py: the UI's files go there too
	cp -r webapp/static webapp/vendor/static

synth: vendor ## write the CloudFormation templates of both stacks to infra/cdk.out (no AWS account)
	cd infra && FMN_STAGE=$(STAGE) ../$(BIN)/python app.py
	@echo "templates: infra/cdk.out/*.template.json (cdk deploy --app infra/cdk.out, see docs/operations.md)"

clean: ## remove generated files (keeps .venv)
	rm -rf var build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache chalice.out infra/chalice.out infra/cdk.out
	find . -name vendor -path './functions/*' -prune -exec rm -rf {} +

.PHONY: help setup synapse localstack services synth-messaging run test test-api lint bench chaos fuzz loadtest vendor synth clean
