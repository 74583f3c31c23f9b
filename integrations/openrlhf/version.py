"""The one OpenRLHF release this adapter is written against, and the guard that enforces it.

OpenRLHF has no plugin API: the adapter relies on call contracts that change between patch releases
(0.11.0 -> 0.11.2 changed ``PolicyLoss``'s constructor and its return from a 4-tuple to a 5-tuple), so any
other version fails fast here instead of failing (or, worse, silently mis-training) deep inside a Ray worker.
Same names in every adapter (``rlplugins.integrations.<fw>.version``): ``SUPPORTED_OPENRLHF_VERSION``,
``SKIP_VERSION_CHECK_ENV``, ``installed_openrlhf_version``, ``check_openrlhf_version``, ``UnsupportedVersionError``.
"""

from __future__ import annotations

from rlplugins.integrations._version import (
    UnsupportedVersionError,
    check_version,
    deprecated_aliases,
    distribution_version,
    skip_env,
)

SUPPORTED_OPENRLHF_VERSION = "0.11.2"
# For people porting the adapter to a new release: skips the check, at their own risk.
SKIP_VERSION_CHECK_ENV = skip_env("openrlhf")

__all__ = ["SKIP_VERSION_CHECK_ENV", "SUPPORTED_OPENRLHF_VERSION", "UnsupportedVersionError", "check_openrlhf_version",
           "installed_openrlhf_version"]


def installed_openrlhf_version() -> str | None:
    return distribution_version("openrlhf")


def check_openrlhf_version(installed: str | None = None) -> str:
    """Return the installed OpenRLHF version; raise ``UnsupportedVersionError`` unless it is the supported one.

    ``installed`` overrides the detected version (for tests and for callers that already know it).
    """
    return check_version(
        adapter="rlplugins.integrations.openrlhf", framework="OpenRLHF", supported=SUPPORTED_OPENRLHF_VERSION,
        installed=installed if installed is not None else installed_openrlhf_version(),
        install=f"openrlhf=={SUPPORTED_OPENRLHF_VERSION}",
        risk="PolicyLoss's and DPOTrainer's call contracts change between releases.",
    )


__getattr__ = deprecated_aliases(__name__, {
    "SKIP_ENV": ("SKIP_VERSION_CHECK_ENV", SKIP_VERSION_CHECK_ENV),
    "OpenRLHFVersionError": ("UnsupportedVersionError", UnsupportedVersionError),
})
