"""The version guard every adapter uses: one exception, one check, one way to skip it.

Each adapter's ``version.py`` pins the one framework release it is written against and exposes the same names:
``SUPPORTED_<FW>_VERSION``, ``SKIP_VERSION_CHECK_ENV`` (``RLPLUGINS_<FW>_SKIP_VERSION_CHECK``),
``installed_<fw>_version()``, ``check_<fw>_version(installed=None)`` and ``UnsupportedVersionError``.
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata
from typing import Any, Callable, Mapping


class UnsupportedVersionError(ImportError):
    """The installed framework is not the release the adapter supports, or it is not installed.

    An ImportError: the adapter module cannot load (Hydra's ``_target_`` lookup and veRL's loaders report it as
    the reason the module failed to import).
    """


def skip_env(framework: str) -> str:
    """``RLPLUGINS_<FRAMEWORK>_SKIP_VERSION_CHECK``: set it to 1 to try another release at your own risk."""
    return f"RLPLUGINS_{framework.upper()}_SKIP_VERSION_CHECK"


def distribution_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def check_version(
    *, adapter: str, framework: str, supported: str, installed: str | None, install: str, risk: str
) -> str:
    """Return ``installed``; raise UnsupportedVersionError (naming both versions and the fix) unless it is
    ``supported`` or the skip variable is set. ``install``: the pip requirement; ``risk``: what may break."""
    env = skip_env(adapter.rsplit(".", 1)[-1])
    if installed is None:
        raise UnsupportedVersionError(
            f"{adapter} needs {framework} {supported}, but {framework} is not installed. Install it with: "
            f"pip install '{install}' (or pip install 'rlplugins[{adapter.rsplit('.', 1)[-1]}]')."
        )
    if installed != supported and os.environ.get(env) != "1":
        raise UnsupportedVersionError(
            f"{adapter} supports {framework} {supported} only, but {framework} {installed} is installed. "
            f"Install the supported release with: pip install '{install}' (or pip install "
            f"'rlplugins[{adapter.rsplit('.', 1)[-1]}]'). To try this {framework} anyway, set {env}=1; {risk}"
        )
    return installed


def deprecated_aliases(module: str, aliases: Mapping[str, tuple[str, Any]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving old names (``old -> (new name, value)``) with a DeprecationWarning."""

    def __getattr__(name: str) -> Any:
        if name not in aliases:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, value = aliases[name]
        warnings.warn(f"{module}.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return value

    return __getattr__
