"""Deprecated: the veRL version guard moved to ``rlplugins.integrations.verl.version`` (same names as the other
adapters). These old names stay importable for one release."""

from __future__ import annotations

import warnings

from .version import SKIP_VERSION_CHECK_ENV, SUPPORTED_VERL_VERSION, UnsupportedVersionError, check_verl_version
from .version import installed_verl_version  # noqa: F401  (old public name, unchanged)

warnings.warn("rlplugins.integrations.verl.compat is deprecated; use rlplugins.integrations.verl.version",
              DeprecationWarning, stacklevel=2)

SUPPORTED_VERL_VERSIONS: tuple[str, ...] = (SUPPORTED_VERL_VERSION,)
UnsupportedVerlVersion = UnsupportedVersionError
__all__ = ["SKIP_VERSION_CHECK_ENV", "SUPPORTED_VERL_VERSIONS", "UnsupportedVerlVersion", "require_supported_verl"]


def require_supported_verl(version: str | None = None) -> str:
    """Deprecated alias of ``check_verl_version``."""
    return check_verl_version(version)
