"""Which veRL this adapter speaks to, checked before anything is registered or configured."""

from __future__ import annotations

import os

SUPPORTED_VERL_VERSIONS: tuple[str, ...] = ("0.9.1",)
# Escape hatch for trying a newer veRL before the adapter is re-pinned; the call contract may have moved.
SKIP_VERSION_CHECK_ENV = "RLPLUGINS_VERL_SKIP_VERSION_CHECK"


class UnsupportedVerlVersion(ImportError):
    """The installed veRL is not one the adapter was written and tested against.

    An ImportError, so that Hydra's ``_target_`` lookup and veRL's loaders report it as the reason the
    module could not be loaded.
    """


def installed_verl_version() -> str:
    import verl

    return str(getattr(verl, "__version__", "unknown"))


def require_supported_verl(version: str | None = None) -> str:
    """Return the veRL version, or raise UnsupportedVerlVersion saying what to install instead."""
    found = installed_verl_version() if version is None else version
    if found in SUPPORTED_VERL_VERSIONS or os.environ.get(SKIP_VERSION_CHECK_ENV) == "1":
        return found
    wanted = " or ".join(SUPPORTED_VERL_VERSIONS)
    raise UnsupportedVerlVersion(
        f"rlplugins.integrations.verl supports veRL {wanted}, but verl {found} is installed. "
        f"Install the supported release with: pip install 'verl[verl-core]=={SUPPORTED_VERL_VERSIONS[-1]}' "
        f"(or pip install 'rlplugins[verl]'). To try this veRL anyway, set {SKIP_VERSION_CHECK_ENV}=1; "
        "the policy-loss call contract and the replay-buffer hooks may have changed."
    )
