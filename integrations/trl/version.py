"""The one TRL release this adapter is written against, and the guard that enforces it.

TRL has no loss or sampler plugin API: the GRPO adapter mirrors the body of ``GRPOTrainer._compute_loss`` around
the per-token loss, and the DPO adapter hooks ``DPOTrainer._compute_loss`` and the transformers sampler. Both
change between minor releases (TRL 1.x moved the loss normalisers, the entropy bonus and the fused LM head), so
any other version fails fast here instead of training with a silently different objective.
Same names in every adapter (``rlplugins.integrations.<fw>.version``): ``SUPPORTED_TRL_VERSION``,
``SKIP_VERSION_CHECK_ENV``, ``installed_trl_version``, ``check_trl_version``, ``UnsupportedVersionError``.
"""

from __future__ import annotations

from rlplugins.integrations._version import (
    UnsupportedVersionError,
    check_version,
    deprecated_aliases,
    distribution_version,
    skip_env,
)

SUPPORTED_TRL_VERSION = "1.16.0"
# For people porting the adapter to a new release: skips the check, at their own risk.
SKIP_VERSION_CHECK_ENV = skip_env("trl")

__all__ = ["SKIP_VERSION_CHECK_ENV", "SUPPORTED_TRL_VERSION", "UnsupportedVersionError", "check_trl_version",
           "installed_trl_version"]


def installed_trl_version() -> str | None:
    return distribution_version("trl")


def check_trl_version(installed: str | None = None) -> str:
    """Return the installed TRL version; raise ``UnsupportedVersionError`` unless it is the supported one.

    ``installed`` overrides the detected version (for tests and for callers that already know it).
    """
    return check_version(
        adapter="rlplugins.integrations.trl", framework="TRL", supported=SUPPORTED_TRL_VERSION,
        installed=installed if installed is not None else installed_trl_version(),
        install=f"trl=={SUPPORTED_TRL_VERSION}",
        risk="the adapter mirrors GRPOTrainer._compute_loss and hooks DPOTrainer._compute_loss, which change "
        "between releases.",
    )


__getattr__ = deprecated_aliases(__name__, {
    "SKIP_ENV": ("SKIP_VERSION_CHECK_ENV", SKIP_VERSION_CHECK_ENV),
    "TRLVersionError": ("UnsupportedVersionError", UnsupportedVersionError),
})
