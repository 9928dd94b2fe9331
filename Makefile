# torchd: `make run` serves the example model; `make test` runs the test suite; `make lint`
# runs ruff and mypy.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
EXAMPLE_MAR := examples/model_store/mlp.mar

.PHONY: run test lint clean example bench protos

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel

$(STAMP_RUN): setup.cfg setup.py | $(PY)
	$(PIP) install --quiet -e . torch-model-archiver==0.12.0
	touch $@

$(STAMP_TEST): setup.cfg setup.py | $(PY)
	$(PIP) install --quiet -e '.[test,llm,onnx]'
	touch $@ $(STAMP_RUN)

$(EXAMPLE_MAR): $(STAMP_RUN) examples/build.py examples/mlp_handler.py
	$(PY) examples/build.py

example: $(EXAMPLE_MAR)

run: $(EXAMPLE_MAR)
	$(VENV)/bin/torchd serve --model-store examples/model_store --models mlp=mlp.mar --ncs

test: $(STAMP_TEST)
	$(PY) -m pytest -q tests

# The rules, line length and folders ruff checks are in ruff.toml; mypy's settings and the
# packages it checks (daemon, worker, protocol) are in setup.cfg's [mypy] sections.
lint: $(STAMP_TEST)
	$(VENV)/bin/ruff check
	$(VENV)/bin/mypy

# make bench BENCH_ARGS="--duration 10 --rounds 2": torchd vs TorchServe 0.12.0 (needs java, wrk)
bench: $(STAMP_TEST)
	$(PY) scripts/bench $(BENCH_ARGS)

# Regenerates daemon/rpc/generated/ from daemon/rpc/proto/*.proto (grpcio-tools, test extras);
# tests/daemon/rpc/test_codegen.py fails while the committed modules differ from its output.
protos: $(STAMP_TEST)
	$(PY) -m daemon.rpc.codegen

clean:
	rm -rf $(VENV) examples/model_store
