# Set-up and entry points. torch==2.13.0 is installed first, on its own, from PyTorch's CPU-only
# index: PyPI's Linux torch bundles CUDA (several GB), and any torch requirement resolved before
# it would pull that build. For the CUDA build: make install TORCH_INDEX=https://pypi.org/simple
PYTHON ?= python3
PIP = $(PYTHON) -m pip
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: install demo test test-fast bench-export

install:
	$(PIP) install torch==2.13.0 --index-url $(TORCH_INDEX)
	$(PIP) install -e '.[dev]'

demo: install
	bash scripts/demo.sh

test: install
	$(PYTHON) -m pytest -q -rs

# The fast half (no slow mark; minutes, not ten), on what is installed: run `make install` once first.
test-fast:
	$(PYTHON) -m pytest -q -rs -m "not slow"

bench-export: install
	$(PYTHON) -m bench.export_time
