# One idempotent install step; every target goes through it.
# torch comes first and pinned: pip then takes the local CPU wheel instead of
# resolving a multi-GB CUDA build (see ../shared/ENVIRONMENT.md).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TOOLS  := $(VENV)/tools

.PHONY: install browser demo test lint bench clean

install: $(STAMP) browser

# Debian's Chromium for the run report's real-browser test (tests/test_run_report.py
# drives it with Playwright's Python package; `playwright install` would download a
# browser and fails offline). Checked on every install, installed only when missing.
browser:
	command -v chromium >/dev/null || { \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && \
	  $$SUDO apt-get install -y --no-install-recommends chromium chromium-driver; }

$(STAMP): pyproject.toml package-lock.json
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# CrypTen 0.4.1 declares the retired `sklearn` package; its real needs are in pyproject.
	$(PY) -m pip install --quiet --no-deps crypten==0.4.1
	# Solidity toolchain (solc-js, anvil, forge, OpenZeppelin), exact versions in
	# package.json and package-lock.json. Not `npm ci`: it insists on lock entries for
	# the other platforms' anvil/forge binaries, which the package mirror lacks.
	npm install --no-audit --no-fund --loglevel=error
	# Slither pins web3 < 8, so the static analyser gets a venv of its own.
	test -x $(TOOLS)/bin/python || $(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/python -m pip install --quiet slither-analyzer==0.11.6
	touch $(STAMP)

demo: install
	$(VENV)/bin/fedlearn demo

lint: install
	$(VENV)/bin/ruff check fedlearn tests benchmarks
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

bench: install
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) node_modules runs .pytest_cache .mypy_cache .ruff_cache
