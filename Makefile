# Set-up and entry points. torch==2.13.0 is installed first, on its own: any other torch
# requirement resolved before it would pull a CUDA build of several GB.
PYTHON ?= python3
PIP = $(PYTHON) -m pip

.PHONY: install demo test bench-export

install:
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'

demo: install
	bash scripts/demo.sh

test: install
	$(PYTHON) -m pytest -q -rs

bench-export: install
	$(PYTHON) scripts/bench_export.py
