# promptopt: the one entry point. `make demo` runs an OPRO job on the embedded CPU stack;
# `make test` runs the test suite. Both create .venv and install everything on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PROMPTOPT_DATASETS_DIR ?= $(abspath datasets)
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: constraints install protos demo tune test test-all test-containers test-reliability bench mutation lint model clean gsm8k images images-gpu k8s-validate replay-table

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first and pinned, so no dependency pulls the CUDA build.
$(STAMP): pyproject.toml $(VENV)/bin/python
	$(PY) -m pip install --quiet torch==2.13.0 grpcio-tools==1.85.1
	$(MAKE) protos
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet -e ".[ml,vec2text,cpu-llm,test,tuner]"
	$(PY) -m services.common.shipped
	touch $(STAMP)

install: $(STAMP)

gen/.stamp: $(PROTOS) | $(VENV)/bin/python
	rm -rf gen && mkdir -p gen
	$(PY) -m grpc_tools.protoc -I protos --python_out=gen --grpc_python_out=gen --pyi_out=gen $(PROTOS)
	find gen -type d -exec touch {}/__init__.py \;
	rm -f gen/__init__.py
	touch gen/.stamp

protos: gen/.stamp

model: install
	$(PY) -m services.common.shipped

demo: install protos
	$(PY) -m services.cli.demo $(ARGS)

# BOLT tuning (seed 004) on the replay of the recorded grid: `make tune` (ARGS="--phases vae,gp" ...).
tune: install protos
	$(PY) -m services.cli.demo tune $(or $(ARGS),--quick)

# The quick tier (the README's test command): everything but the tests marked slow (whole stacks
# beyond one live OPRO run on the CPU LLM, the tuner, the fault sweep) and gpu, with the RPC
# fuzzing at 25 examples per RPC (100 in `make test-all`, which CI runs).
test: install protos
	PROMPTOPT_FUZZ_EXAMPLES=25 $(PY) -m pytest -m "not slow"

test-all: install protos
	$(PY) -m pytest

# Faults, storage, security and monitoring tests (loopback), the RPC fuzzing with its outcome
# table, the fault sweep over all six services and the load figures; run it alone.
test-reliability: install protos
	$(PY) -m pytest tests/integration/test_faults.py tests/integration/test_storage_faults.py \
	  tests/integration/test_security.py tests/integration/test_stack.py
	$(PY) -m pytest -q -s tests/contract/test_fuzz_every_rpc.py
	$(PY) -m tests.integration.fault_sweep
	$(PY) -m tests.bench.load_bench

# The stack tests against `docker compose --profile cpu up` (real images); prepares what it can
# (dockerd, compose v2, a base image, make images) and says what it skipped and why.
test-containers: install protos
	$(PY) -m tests.integration.containers

bench: install protos
	$(PY) -m tests.bench.run_bench
	$(PY) -m tests.bench.lipo_bench
	$(PY) -m tests.bench.lipo_e_bench
	$(PY) -m tests.bench.tuner_bench
	$(PY) -m tests.bench.ecoflow_bench
	$(PY) -m tests.bench.ecoflow_run_bench
	$(PY) -m tests.bench.neuro_bench
	$(PY) -m tests.bench.neuro_run_bench

# Mutation testing of the search-direction code ([tool.mutmut] in pyproject.toml; tens of minutes on 2 cores).
mutation: install protos
	rm -rf mutants
	$(VENV)/bin/mutmut run
	$(PY) -m tests.mutation.report

# The replay table of the 100 recorded Qwen2.5-7B instructions, for PROMPTOPT_LLM_EVAL_BACKEND=replay.
replay-table: install
	$(PY) -m services.llm_eval.replay convert $(PROMPTOPT_DATASETS_DIR)/prompts/gsm8k_100_instructions_qwen2.5-7b.json \
	  state/replay/gsm8k_100_qwen2.5-7b.jsonl

# The v1 protos as last released (81978dd, before OperationsService): `buf breaking` refuses any
# incompatible change to them (a field renumbered or retyped, an RPC or message removed).
PROTO_RELEASE ?= 81978dd0822e4c7d1da745f5521676ceb71853fd
BUF := npx --yes @bufbuild/buf@1.47.2

lint: install
	$(VENV)/bin/ruff check services tests
	$(BUF) lint protos
	@if git cat-file -e $(PROTO_RELEASE)^{commit} 2>/dev/null; then \
	  $(BUF) breaking protos --against ".git#ref=$(PROTO_RELEASE),subdir=protos" && echo "buf breaking: v1 compatible with $(PROTO_RELEASE)"; \
	else echo "buf breaking skipped: this clone lacks release commit $(PROTO_RELEASE) (a shallow clone?)"; fi

# Download the official GSM8K files (the same as datasets/gsm8k) into data/.
gsm8k: install
	$(PY) -m services.llm_eval.datasets download data
	@echo "export PROMPTOPT_DATASETS_DIR=$$PWD/data"

IMAGES := encoder decoder llm-eval surrogate optimizer tuner
GPU_IMAGES := encoder-cuda decoder-cuda surrogate-cuda llm-eval-vllm encoder-sonar decoder-sonar
TAG ?= latest

# Container images (needs a Docker engine with BuildKit): promptopt/<service>:$(TAG), GPU ones
# :$(TAG)-cuda/-vllm/-sonar; sizes printed. BASE_IMAGE, TORCH_INDEX_URL, DOCKER: see deploy/docker/images.sh.
# The versions the image builds install (every package of this venv but torch, whose build
# differs per image); refresh after changing dependencies and running the tests.
constraints: install
	$(PY) -m pip freeze --exclude-editable | grep -v '^torch==' > deploy/constraints.txt

images:
	@docker info >/dev/null 2>&1 || { echo "make images needs a running Docker engine (docker info failed)"; exit 1; }
	TAG=$(TAG) deploy/docker/images.sh $(IMAGES)

images-gpu:
	@docker info >/dev/null 2>&1 || { echo "make images-gpu needs a running Docker engine (docker info failed)"; exit 1; }
	TAG=$(TAG) deploy/docker/images.sh $(GPU_IMAGES)

# Render every kustomize overlay and validate it (kubernetes-validate, strict), plus the compose file.
k8s-validate: install
	$(PY) -m tests.deploy.validate all

clean:
	rm -rf gen results state mutants
