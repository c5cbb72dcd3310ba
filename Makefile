# One entry point: `make run` sets up and runs the main job, `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
# Torch goes in first, pinned to the local CPU build, so that no CUDA wheels are pulled.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: setup chromium run test test-fast wheel-test docs lint bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

# Chromium, for kaleido's PNG figures (and the notebook's static copies): Debian's package, where
# this machine can install it (root and apt-get); elsewhere the tests that need it are skipped.
chromium:
	@command -v chromium >/dev/null || command -v google-chrome >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "no Chromium (it needs root and apt-get here): the PNG figure tests are skipped"

run: setup
	$(BIN)/spectra track --overwrite
	$(BIN)/spectra analyze runs/*.parquet
	$(BIN)/spectra plot --figure 2

test: setup chromium
	$(BIN)/ruff check .
	$(MAKE) --no-print-directory wheel-test docs
	$(BIN)/pytest -q -n auto --dist loadfile

test-fast: setup
	$(BIN)/pytest -q -n auto --dist loadfile -m "not slow"

# The wheel a user installs, in a fresh venv, run outside the checkout (tests/wheel_test.sh).
wheel-test: setup
	bash tests/wheel_test.sh $(BIN)/python $(PYTHON) "$(TORCH)"

# The documentation site (mkdocs.yml, docs/), built strictly: any warning fails it.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: setup
	$(BIN)/python benchmarks/engine.py

clean:
	rm -rf $(VENV) runs figures site
