"""The one OpenRLHF release this adapter is written against, and the guard that enforces it.

OpenRLHF has no plugin API: the adapter relies on call contracts that change between patch releases
(0.11.0 -> 0.11.2 changed ``PolicyLoss``'s constructor and its return from a 4-tuple to a 5-tuple), so any
other version fails fast here instead of failing (or, worse, silently mis-training) deep inside a Ray worker.
"""

from __future__ import annotations

import os
from importlib import metadata

SUPPORTED_OPENRLHF_VERSION = "0.11.2"
# For people porting the adapter to a new release: skips the check, at their own risk.
SKIP_ENV = "RLPLUGINS_OPENRLHF_SKIP_VERSION_CHECK"


class OpenRLHFVersionError(RuntimeError):
    """The installed OpenRLHF is not the release this adapter supports."""


def installed_openrlhf_version() -> str | None:
    try:
        return metadata.version("openrlhf")
    except metadata.PackageNotFoundError:
        return None


def check_openrlhf_version(installed: str | None = None) -> str:
    """Return the installed OpenRLHF version; raise ``OpenRLHFVersionError`` unless it is the supported one.

    ``installed`` overrides the detected version (for tests and for callers that already know it).
    """
    version = installed if installed is not None else installed_openrlhf_version()
    if version is None:
        raise OpenRLHFVersionError(
            f"rlplugins.integrations.openrlhf needs OpenRLHF {SUPPORTED_OPENRLHF_VERSION}, but OpenRLHF is not "
            f"installed. Install it with: pip install 'openrlhf=={SUPPORTED_OPENRLHF_VERSION}' "
            f"(or pip install 'rlplugins[openrlhf]')."
        )
    if version != SUPPORTED_OPENRLHF_VERSION and os.environ.get(SKIP_ENV) != "1":
        raise OpenRLHFVersionError(
            f"rlplugins.integrations.openrlhf supports OpenRLHF {SUPPORTED_OPENRLHF_VERSION} only, but OpenRLHF "
            f"{version} is installed. Install the supported release with: "
            f"pip install 'openrlhf=={SUPPORTED_OPENRLHF_VERSION}'. (To try another release anyway, set "
            f"{SKIP_ENV}=1; PolicyLoss's and DPOTrainer's call contracts change between releases.)"
        )
    return version
