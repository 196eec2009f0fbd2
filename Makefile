# robustmoe-bench: one-command set-up, main job, tests and benchmarks on a fresh Debian machine.
# Needs python3 (>= 3.10) with venv; installs torch 2.14.1 / torchvision 0.29.1 and the package into .venv,
# and Debian's dataset-fashion-mnist and chromium (the leaderboard page's browser tests) when they are
# missing (as root, or through sudo).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.robustmoe-installed
FMNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz
OUT    ?= runs/fmnist-demo
PYTEST_ARGS ?=

.PHONY: setup data browser demo test test-slow bench clean

setup: $(STAMP) data browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

data:
	@if [ ! -f $(FMNIST) ]; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  SUDO=; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

# Headless Chromium for tests/test_leaderboard_page.py (those tests fail, never skip, without it).
browser:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  echo "installing Debian's chromium (headless browser for the leaderboard page tests)"; \
	  SUDO=; [ "$$(id -u)" -ne 0 ] && SUDO=sudo; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium; \
	fi

demo: setup
	$(BIN)/robustmoe-bench pipeline --out $(OUT)

test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

bench: setup
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
