# Quick start: `make demo` and `make test` each set up .venv on their own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := .demo

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(BIN)/python -m anns.evaluation $(DEMO_DIR)/data --n 20000 --dim 64 --queries 200
	$(BIN)/anns build $(DEMO_DIR)/collection --vectors $(DEMO_DIR)/data/base.npy
	$(BIN)/anns search $(DEMO_DIR)/collection --queries $(DEMO_DIR)/data/query.npy -k 10 \
		--out $(DEMO_DIR)/ids.npy --truth $(DEMO_DIR)/data/gt.npy
	$(BIN)/anns info $(DEMO_DIR)/collection

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/anns bench $(DATASET)

clean:
	rm -rf $(VENV) $(DEMO_DIR)
