# babelora: the two set-up commands in the README are `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
PYTEST_ARGS ?= -q

.PHONY: system-deps install test test-fast style demo bench clean

system-deps:  ## voices (espeak-ng, Pico), Fish Fillets speech, Weblate text; contrib/non-free on
	@PYTHON="$(PYTHON)" bash scripts/install_system_deps.sh

install: system-deps  ## torch first (the CPU wheel on disk), then babelora with its extras
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[offline,dev]"

test: install  ## lint, format check + the full test suite (minutes, CPU only, offline)
	$(PYTHON) -m ruff check src tests bench
	$(PYTHON) -m ruff format --check src tests bench
	$(PYTHON) -m pytest $(PYTEST_ARGS)

test-fast: install
	$(PYTHON) -m pytest -q -m "not slow"

style:
	$(PYTHON) -m ruff check --fix src tests bench
	$(PYTHON) -m ruff format src tests bench

demo: install  ## the whole pipeline on the embedded default, offline
	bash scripts/demo.sh

bench: install
	$(PYTHON) bench/decode_speed.py

clean:
	rm -rf runs outputs bench/work .pytest_cache .ruff_cache
