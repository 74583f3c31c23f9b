"""``after_import``: what the lazy veRL registration relies on, on throw-away modules."""

from __future__ import annotations

import importlib
import importlib.machinery
import logging
import sys

import pytest

from rlplugins.integrations.verl import import_hooks


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "rlp_hook_pkg"
    root.mkdir()
    (root / "__init__.py").write_text("")
    (root / "heavy.py").write_text("LOADED = True\nREGISTRY = {}\n")
    (root / "broken.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "rlp_hook_pkg"
    for name in [m for m in sys.modules if m.startswith("rlp_hook_pkg")]:
        del sys.modules[name]


def test_callback_runs_once_after_the_module_body_and_leaves_the_module_as_it_was(package):
    calls = []
    ran_now = import_hooks.after_import(f"{package}.heavy", lambda m: calls.append(dict(m.REGISTRY, seen=m.LOADED)))
    assert ran_now is False
    assert f"{package}.heavy" not in sys.modules and import_hooks.pending()[f"{package}.heavy"] == 1
    module = importlib.import_module(f"{package}.heavy")
    assert calls == [{"seen": True}]
    assert type(module.__loader__) is importlib.machinery.SourceFileLoader  # the loader is not replaced
    assert "exec_module" not in vars(module.__loader__)  # the per-instance wrapper is gone
    assert f"{package}.heavy" not in import_hooks.pending()
    # (the finder stays in sys.meta_path only while some module is still watched, e.g. veRL's core_algos here)
    assert (import_hooks._FINDER in sys.meta_path) == bool(import_hooks.pending())
    importlib.reload(module)
    assert len(calls) == 1  # once


def test_already_imported_module_runs_the_callback_now(package):
    module = importlib.import_module(f"{package}.heavy")
    seen = []
    assert import_hooks.after_import(f"{package}.heavy", seen.append) is True
    assert seen == [module] and f"{package}.heavy" not in import_hooks.pending()


def test_a_failing_callback_is_logged_and_does_not_break_the_import(package, caplog):
    def boom(module):
        raise RuntimeError("registration failed")

    import_hooks.after_import(f"{package}.broken", boom)
    with caplog.at_level(logging.WARNING, logger=import_hooks.__name__):
        module = importlib.import_module(f"{package}.broken")
    assert module.X == 1
    assert "registration failed" in caplog.text and f"{package}.broken" in caplog.text
