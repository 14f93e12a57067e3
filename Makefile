# promptopt: the one entry point. `make demo` runs an OPRO job on the embedded CPU stack;
# `make test` runs the test suite. Both create .venv and install everything on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export PROMPTOPT_DATASETS_DIR ?= $(abspath ../shared/datasets)
STAMP := $(VENV)/.installed
PROTOS := $(shell find protos -name '*.proto')

.PHONY: install protos demo test test-fast bench lint model clean gsm8k

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# torch first and pinned, so no dependency pulls the CUDA build.
$(STAMP): pyproject.toml $(VENV)/bin/python
	$(PY) -m pip install --quiet torch==2.13.0 grpcio-tools==1.85.1
	$(MAKE) protos
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet -e ".[cpu-llm,test]"
	$(PY) -m services.llm_eval.models
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
	$(PY) -m services.llm_eval.models

demo: install protos
	$(PY) -m services.optimizer.demo

test: install protos
	$(PY) -m pytest

test-fast: install protos
	$(PY) -m pytest -m "not slow"

bench: install protos
	$(PY) -m tests.bench.run_bench

lint: install
	$(VENV)/bin/ruff check services tests
	npx --yes @bufbuild/buf@1.47.2 lint protos

# Download GSM8K (for machines without ../shared/datasets).
gsm8k:
	mkdir -p data/gsm8k
	for s in train test; do curl -fsSL -o data/gsm8k/$$s.jsonl \
	  https://raw.githubusercontent.com/openai/grade-school-math/master/grade_school_math/data/$$s.jsonl; done
	@echo "export PROMPTOPT_DATASETS_DIR=$$PWD/data"

clean:
	rm -rf gen results state
