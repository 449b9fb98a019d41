# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make quickstart   creates .venv if missing, installs nfp, trains the offline CPU quickstart under `mlflow run`
#   make test         creates .venv if missing, installs nfp with test extras (and Chromium, as root on Debian),
#                     lints (ruff), builds the docs, runs the whole test suite, a process per core
#   make test-quick   the inner loop: the tests not marked slow, a process per core (pytest-xdist)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
TF     ?= cpu        # `make install TF=gpu` on a CUDA machine

.PHONY: install quickstart test test-quick browser docs bench ui clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(strip $(TF)),test]"
	touch $@

quickstart: install
	PATH="$(BIN):$$PATH" mlflow run . --env-manager local --experiment-name nfp-quickstart -P config=configs/quickstart.yaml
	@echo "Done. See the run with: $(BIN)/mlflow ui   (then open http://127.0.0.1:5000, pick Model training at the top left)"

# a process per core (pytest-xdist, --dist loadgroup): each test on its own, the slow and longest first (in the order
# tests/conftest.py sorts them: --no-loadscope-reorder, else xdist puts the groups of most tests first), except the
# tests sharing a module's fixture (a venv, a server, prepared data), which stay on one worker
test: install browser docs
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -n auto --dist loadgroup --no-loadscope-reorder

test-quick: install
	PATH="$(BIN):$$PATH" $(BIN)/python -m pytest -m "not slow and not external" -n auto --dist loadgroup --no-loadscope-reorder

# tests/test_mlflow_ui.py drives Debian's Chromium: installed here when missing and apt-get may (root); else skipped
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  echo "installing Debian's chromium for the MLflow UI test" && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "note: no Chromium; tests/test_mlflow_ui.py will skip (sudo apt-get install chromium to run it)"

# the docs site (docs/, mkdocs.yml) into site/; --strict: a broken link, anchor or a page missing from the nav fails
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

bench: install
	$(BIN)/python -m bench

ui: install
	$(BIN)/mlflow ui --host 127.0.0.1 --port 5000

clean:
	rm -rf outputs data/quickstart mlruns mlflow.db
