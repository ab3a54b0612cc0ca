# `make serve` and `make test` set everything up themselves on a fresh clone.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/agentserver/v1/*.proto)
export PATH := $(CURDIR)/$(BIN):$(PATH)

WEB_SOURCES := $(wildcard web/src/*.ts) web/index.html web/style.css web/build.mjs \
  web/buf.gen.yaml web/tsconfig.json $(wildcard web/vendor/google/rpc/*.proto) $(PROTOS)

.PHONY: setup serve test test-fast lint gen check-generated bench clean web

setup: $(STAMP)

# Two editable installs: the client and the stubs (clients/pyproject.toml), then the
# server, which depends on them.
$(STAMP): pyproject.toml clients/pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	rm -f "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/agentserver-roots.pth"
	$(BIN)/python -m pip install -q -c requirements.lock -e "./clients[connect]"
	$(BIN)/python -m pip install -q -c requirements.lock -e ".[dev]"
	touch $(STAMP)

## Run the server on its embedded defaults (SQLite file, dry-run channels, offline engine),
## with the console and gRPC-web on 127.0.0.1:8080.
serve: $(STAMP) web
	$(BIN)/agentserver serve

## The console (web/dist): npm ci from the lockfile, buf generate with the local
## protoc-gen-es, tsc, esbuild. Built here, not committed.
web: web/dist/app.js

web/node_modules/.installed: web/package.json web/package-lock.json
	cd web && npm ci --no-audit --no-fund --loglevel=error
	touch $@

web/dist/app.js: web/node_modules/.installed $(WEB_SOURCES)
	cd web && npm run --silent build

## The whole suite: generated-code freshness, lint, then tests on SQLite, PostgreSQL and Redis.
test: $(STAMP) check-generated lint web
	$(BIN)/pytest -q

## Tests only.
test-fast: $(STAMP)
	$(BIN)/pytest -q -x

lint: $(STAMP)
	$(BIN)/ruff check server clients tests bench migrations
	$(BIN)/ruff format --check server clients tests bench migrations
	$(BIN)/mypy server/agentserver clients/agentserver
	$(BIN)/buf lint

## Rebuild generated/ from protos/ (the one command).
gen: $(STAMP)
	rm -rf generated/agentserver
	$(call protoc,generated)

## Fails when generated/ is stale against protos/.
check-generated: $(STAMP)
	@tmp=$$(mktemp -d) && $(call protoc,$$tmp) && \
	  if diff -r -x __pycache__ $$tmp/agentserver generated/agentserver >/dev/null; then \
	    echo "generated/ is up to date"; rm -rf $$tmp; \
	  else echo "generated/ is stale: run 'make gen' and commit" >&2; diff -r -x __pycache__ $$tmp/agentserver generated/agentserver | head -20; rm -rf $$tmp; exit 1; fi

bench: $(STAMP)
	$(BIN)/python bench/ledger.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache agentserver.db web/node_modules web/dist web/src/gen

define protoc
mkdir -p $(1) && $(BIN)/python -m grpc_tools.protoc -Iprotos \
  --python_out=$(1) --grpc_python_out=$(1) --mypy_out=$(1) --mypy_grpc_out=$(1) \
  --plugin=protoc-gen-connectrpc=$(BIN)/protoc-gen-connectrpc \
  --connectrpc_out=$(1) --connectrpc_opt=protobuf=google $(PROTOS)
endef
