"""Shared pytest configuration and the one loader for helper files.

tests/ is deliberately not a package (no __init__.py) and pytest runs with --import-mode=importlib:
OpenRLHF's wheel installs a top-level `tests` package that would otherwise shadow ours. Helper modules shared by
several test files are therefore imported by the names in ``HELPERS`` (``import _strategies``), which this file
maps to their paths; scripts outside tests/ (benchmarks, examples) are loaded with the ``load_file`` fixture.

Environment: ``RLPLUGINS_HYPOTHESIS_EXAMPLES`` (examples per property in the "ci" profile, default 60) and
``RLPLUGINS_HYPOTHESIS_PROFILE`` ("ci" or "dev"); the old ``RLP_*`` names are deprecated aliases.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import pathlib
import sys
from types import ModuleType

import pytest
from hypothesis import HealthCheck, settings

from rlplugins._env import env

TESTS = pathlib.Path(__file__).resolve().parent

#: Helper modules importable by name from any test file.
HELPERS = {
    "_strategies": TESTS / "core" / "_strategies.py",
    "_kernel_helpers": TESTS / "kernels" / "_helpers.py",
}


def load_file(name: str, path: str | pathlib.Path) -> ModuleType:
    """Import the Python file ``path`` as module ``name`` (registered in sys.modules first: dataclasses resolve
    their annotations through it)."""
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path} as {name}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


class _HelperFinder(importlib.abc.MetaPathFinder):
    """Resolves ``import <helper>`` for the names in HELPERS (loaded on first import, like any module)."""

    def find_spec(self, fullname, path=None, target=None):
        file = HELPERS.get(fullname)
        return importlib.util.spec_from_file_location(fullname, file) if file is not None else None


if not any(isinstance(f, _HelperFinder) for f in sys.meta_path):
    sys.meta_path.append(_HelperFinder())


@pytest.fixture(scope="session", name="load_file")
def load_file_fixture():
    """``load_file(name, path)`` for scripts outside tests/; the modules are dropped from sys.modules at the end."""
    loaded: list[str] = []

    def load(name: str, path: str | pathlib.Path) -> ModuleType:
        loaded.append(name)
        return load_file(name, path)

    yield load
    for name in loaded:
        sys.modules.pop(name, None)


# Property tests run on a 2-core CI machine: no per-example deadline, a bounded number of examples.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=int(env("HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=300,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(env("HYPOTHESIS_PROFILE", "ci"))
