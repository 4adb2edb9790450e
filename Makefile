# One-command set-up: a virtual environment in .venv with everything the project needs.
# On this machine `torch==2.13.0` installs a CPU build from local disk; the package itself
# only asks for torch>=2.4, so users elsewhere keep their own build.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test test-fast lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[mujoco,llm,lora,plot,video,bench,dev,atari,export,tune,wandb]"
	touch $@

setup: $(VENV)/.installed

## Train PPO on CartPole-v1 with the default preset and print the evaluation result.
run: setup
	$(VENV)/bin/ppox train CartPole-v1

## The whole test suite: fast unit tests and the slower learning tests.
test: setup
	$(PY) -m pytest -m "slow or not slow" -q

test-fast: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check ppox tests benchmarks

bench: setup
	$(PY) benchmarks/bench_vs_sb3.py

clean:
	rm -rf $(VENV) build *.egg-info
