"""The one TRL release this adapter is written against, and the guard that enforces it.

TRL has no loss or sampler plugin API: the GRPO adapter mirrors the body of ``GRPOTrainer._compute_loss`` around
the per-token loss, and the DPO adapter hooks ``DPOTrainer._compute_loss`` and the transformers sampler. Both
change between minor releases (TRL 1.x moved the loss normalisers, the entropy bonus and the fused LM head), so
any other version fails fast here instead of training with a silently different objective.
"""

from __future__ import annotations

import os
from importlib import metadata

SUPPORTED_TRL_VERSION = "1.16.0"
# For people porting the adapter to a new release: skips the check, at their own risk.
SKIP_ENV = "RLPLUGINS_TRL_SKIP_VERSION_CHECK"


class TRLVersionError(ImportError):
    """The installed TRL is not the release this adapter supports (an ImportError: the adapter cannot load)."""


def installed_trl_version() -> str | None:
    try:
        return metadata.version("trl")
    except metadata.PackageNotFoundError:
        return None


def check_trl_version(installed: str | None = None) -> str:
    """Return the installed TRL version; raise ``TRLVersionError`` unless it is the supported one.

    ``installed`` overrides the detected version (for tests and for callers that already know it).
    """
    version = installed if installed is not None else installed_trl_version()
    if version is None:
        raise TRLVersionError(
            f"rlplugins.integrations.trl needs TRL {SUPPORTED_TRL_VERSION}, but TRL is not installed. Install it "
            f"with: pip install 'trl=={SUPPORTED_TRL_VERSION}' (or pip install 'rlplugins[trl]')."
        )
    if version != SUPPORTED_TRL_VERSION and os.environ.get(SKIP_ENV) != "1":
        raise TRLVersionError(
            f"rlplugins.integrations.trl supports TRL {SUPPORTED_TRL_VERSION} only, but TRL {version} is installed. "
            f"Install the supported release with: pip install 'trl=={SUPPORTED_TRL_VERSION}' (or pip install "
            f"'rlplugins[trl]'). To try this TRL anyway, set {SKIP_ENV}=1; the adapter mirrors "
            "GRPOTrainer._compute_loss and hooks DPOTrainer._compute_loss, which change between releases."
        )
    return version
