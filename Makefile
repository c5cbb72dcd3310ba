# One entry point: `make run` sets up and runs the main job, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
# Torch goes in first, pinned to the local CPU build, so that no CUDA wheels are pulled.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: setup run test wheel-test lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(BIN)/spectra track --overwrite
	$(BIN)/spectra analyze runs/*.parquet
	$(BIN)/spectra plot --figure 2

test: setup
	$(BIN)/ruff check .
	$(BIN)/pytest -q
	$(MAKE) --no-print-directory wheel-test

# The wheel a user installs, in a fresh venv, run outside the checkout (tests/wheel_test.sh).
wheel-test: setup
	bash tests/wheel_test.sh $(BIN)/python $(PYTHON) "$(TORCH)"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/engine.py

clean:
	rm -rf $(VENV) runs figures
