"""Which kernel tests can run here.

``interpreter`` tests call the Triton kernels with CPU tensors: they need TRITON_INTERPRET=1 (``make test`` sets
it). ``cuda`` tests need a GPU *and* compiled kernels, so they are skipped under the interpreter; on a GPU run
them with ``TRITON_INTERPRET=0 .venv/bin/python -m pytest tests/kernels -m cuda``.
"""

from __future__ import annotations

import os

import pytest
import torch


def _interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pytest_configure(config):
    config.addinivalue_line("markers", "interpreter: runs the Triton kernels on CPU tensors (needs TRITON_INTERPRET=1)")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("cuda"):
            if not torch.cuda.is_available():
                item.add_marker(pytest.mark.skip(reason="needs CUDA"))
            elif _interpreter():
                item.add_marker(pytest.mark.skip(reason="needs compiled kernels: run with TRITON_INTERPRET=0"))
        elif item.get_closest_marker("interpreter") and not _interpreter():
            item.add_marker(pytest.mark.skip(reason="runs Triton on CPU tensors: set TRITON_INTERPRET=1 (make test does)"))
