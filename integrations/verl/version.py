"""The one veRL release this adapter is written against, and the guard that enforces it.

veRL's policy-loss call contract and the replay-buffer hooks the sampler overrides are private and change between
releases, so any other version fails here, before anything is registered or configured. Same names in every
adapter (``rlplugins.integrations.<fw>.version``): ``SUPPORTED_VERL_VERSION``, ``SKIP_VERSION_CHECK_ENV``,
``installed_verl_version``, ``check_verl_version``, ``UnsupportedVersionError``.
"""

from __future__ import annotations

from rlplugins.integrations._version import UnsupportedVersionError, check_version, deprecated_aliases, skip_env

SUPPORTED_VERL_VERSION = "0.9.1"
# For people porting the adapter to a new release: skips the check, at their own risk.
SKIP_VERSION_CHECK_ENV = skip_env("verl")

__all__ = ["SKIP_VERSION_CHECK_ENV", "SUPPORTED_VERL_VERSION", "UnsupportedVersionError", "check_verl_version",
           "installed_verl_version"]


def installed_verl_version() -> str | None:
    """``verl.__version__`` (what veRL itself reports), or None when veRL is not importable."""
    try:
        import verl
    except ImportError:
        return None
    return str(getattr(verl, "__version__", "unknown"))


def check_verl_version(installed: str | None = None) -> str:
    """Return the installed veRL version; raise ``UnsupportedVersionError`` unless it is the supported one.

    ``installed`` overrides the detected version (for tests and for callers that already know it).
    """
    return check_version(
        adapter="rlplugins.integrations.verl", framework="veRL", supported=SUPPORTED_VERL_VERSION,
        installed=installed if installed is not None else installed_verl_version(),
        install=f"verl[verl-core]=={SUPPORTED_VERL_VERSION}",
        risk="the policy-loss call contract and the replay-buffer hooks may have changed.",
    )


__getattr__ = deprecated_aliases(__name__, {
    "SUPPORTED_VERL_VERSIONS": ("SUPPORTED_VERL_VERSION", (SUPPORTED_VERL_VERSION,)),
    "UnsupportedVerlVersion": ("UnsupportedVersionError", UnsupportedVersionError),
    "require_supported_verl": ("check_verl_version", check_verl_version),
})
