"""Run a function right after a given module has been imported (or now, if it already has been).

The ``verl.plugins`` entry point runs at ``import verl`` in every veRL process: rollout servers, reward workers,
the driver. Registering our losses there would import ``verl.trainer.ppo.core_algos`` (and with it veRL's worker
configs, ~270 more modules) in processes that never compute a policy loss. Instead the entry point asks to be
called when veRL itself imports ``core_algos``, which every process that builds an actor or reads
``POLICY_LOSS_REGISTRY`` does first.

Mechanism: a ``sys.meta_path`` finder that, for a watched module name only, asks the other finders for the spec
and wraps that spec's loader's ``exec_module`` (on the loader instance, so the loader type and everything else
about the module is unchanged). The callbacks run once, after the module body has executed; an exception in a
callback is logged and does not break the import of veRL's module.
"""

from __future__ import annotations

import logging
import sys
import threading
from importlib.abc import MetaPathFinder
from typing import Any, Callable

logger = logging.getLogger(__name__)

_PENDING: dict[str, list[Callable[[Any], None]]] = {}
_LOCK = threading.Lock()


def _run(name: str, module: Any, callbacks: list[Callable[[Any], None]]) -> None:
    for callback in callbacks:
        try:
            callback(module)
        except Exception as exc:  # a veRL import must not fail because of us; say what went wrong
            logger.warning("rlplugins: %s after importing %s failed: %r", getattr(callback, "__qualname__", callback),
                           name, exc)


class _AfterImportFinder(MetaPathFinder):
    """Finds nothing itself: decorates the spec another finder returns for a watched module."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname not in _PENDING:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        original = getattr(loader, "exec_module", None)
        if original is None:  # a pre-3.4 style loader (not veRL's source files): cannot be wrapped
            logger.warning("rlplugins: cannot watch the import of %s (loader %r has no exec_module)", fullname, loader)
            return spec

        def exec_module(module: Any) -> None:
            try:
                original(module)
            finally:
                try:
                    del loader.exec_module  # back to the class's method
                except AttributeError:
                    pass
            with _LOCK:
                callbacks = _PENDING.pop(fullname, [])
            _uninstall_if_idle()
            _run(fullname, module, callbacks)

        loader.exec_module = exec_module
        return spec


_FINDER = _AfterImportFinder()


def _uninstall_if_idle() -> None:
    with _LOCK:
        if not _PENDING and _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)


def after_import(name: str, callback: Callable[[Any], None]) -> bool:
    """Call ``callback(module)`` once ``name`` has been imported; now if it already is. Returns True if it ran now."""
    module = sys.modules.get(name)
    if module is not None:
        _run(name, module, [callback])
        return True
    with _LOCK:
        _PENDING.setdefault(name, []).append(callback)
        if _FINDER not in sys.meta_path:
            sys.meta_path.insert(0, _FINDER)
    return False


def pending() -> dict[str, int]:
    """Watched module names and how many callbacks wait for each (for tests and debugging)."""
    with _LOCK:
        return {name: len(callbacks) for name, callbacks in _PENDING.items()}
