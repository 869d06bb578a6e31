# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
export JAX_PLATFORMS ?= cpu

.PHONY: setup demo test lint bench clean vocab

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python launch/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .

# Real Llama 3 / Qwen2.5 tokenizer folders (built once from the llama-cpp-python sdist on
# PyPI; see ttc_jax/interop/real_vocab.py). The tests' `real_vocab` fixture reads them.
VOCAB_DIR := .cache/real_vocab

vocab: $(STAMP)
	$(BIN)/python -m ttc_jax.interop.real_vocab --out $(VOCAB_DIR)

test: $(STAMP) lint vocab
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	for f in benchmarks/*.py; do $(BIN)/python $$f || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
