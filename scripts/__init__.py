"""Data preparation and training, run as files (`python scripts/fashion_mnist_to_folders.py IDX OUT`).

A package as well, so that tests (setup.cfg's pytest `pythonpath` is the repository root) import
what the scripts define, `from scripts import fashion_mnist_to_folders`, instead of loading them
by file path. Not installed: setup.cfg lists the packages a wheel carries.
"""
