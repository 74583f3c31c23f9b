"""OpenRLHF 0.11.2 adapter: rlplugins' policy losses and pair selectors inside OpenRLHF's own trainers.

Entry points (each runs OpenRLHF's real CLI with every OpenRLHF flag, plus ours):

    python -m rlplugins.integrations.openrlhf.train_ppo_ray --actor.policy_loss_type maspo --maspo.alpha 0.3 ...
    deepspeed --module rlplugins.integrations.openrlhf.train_dpo --selector sage --sage.selection_ratio 0.5 ...

Python API: ``CorePolicyLoss`` (a drop-in for ``openrlhf.models.PolicyLoss``), ``SageDPOTrainer`` (a
``DPOTrainer`` whose batches come from a pair selector). Importing this package imports nothing from
OpenRLHF; the submodules that do check the installed version first (``version.check_openrlhf_version``).
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import (
    SKIP_VERSION_CHECK_ENV,
    SUPPORTED_OPENRLHF_VERSION,
    UnsupportedVersionError,
    check_openrlhf_version,
)

_LAZY = {
    "CorePolicyLoss": "policy_loss",
    "build_policy_loss": "policy_loss",
    "LossSpec": "loss_flags",
    "install_policy_loss": "ppo_patch",
    "SageDPOTrainer": "dpo_trainer",
    "ScoredSampler": "dpo_sampler",
}
# Deprecated names (one release): served by version.py with a DeprecationWarning.
_DEPRECATED = {"OpenRLHFVersionError": "version", "SKIP_ENV": "version"}

__all__ = [
    "SKIP_VERSION_CHECK_ENV", "SUPPORTED_OPENRLHF_VERSION", "UnsupportedVersionError", "check_openrlhf_version",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name) or _DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
