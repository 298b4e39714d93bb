# Every target works on a fresh machine: it creates .venv, installs the pinned
# CPU build of torch first (a loose requirement would pull a multi-GB CUDA build),
# then the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.cfg | cksum | cut -d' ' -f1)
DEMO_DIR ?= runs/demo
# make demo: 3 models, 1 epoch, small data (README: time measured); make demo DEMO_ARGS=--full: every model
DEMO_ARGS ?=

.PHONY: demo test install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python setup.cfg
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	WANDB_MODE=$${WANDB_MODE:-offline} $(BIN)/python experiments/demo.py --out $(DEMO_DIR) $(DEMO_ARGS)

test: $(STAMP)
	WANDB_MODE=disabled $(BIN)/python -m pytest -q -x --durations=15 tests

clean:
	rm -rf $(VENV) runs
