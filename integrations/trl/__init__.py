"""TRL 1.16.0 adapter: rlplugins' policy losses in TRL's ``GRPOTrainer`` and pair selection in its ``DPOTrainer``.

    from rlplugins.integrations.trl import RLPluginsGRPOConfig, RLPluginsGRPOTrainer   # loss_type="maspo", ...
    from rlplugins.integrations.trl import SageDPOConfig, SageDPOTrainer               # selector="sage", ...

Importing this package imports nothing from TRL; the submodules that do check the installed version first
(``version.check_trl_version``; override with RLPLUGINS_TRL_SKIP_VERSION_CHECK=1).
"""

from __future__ import annotations

import importlib
from typing import Any

from .version import SKIP_VERSION_CHECK_ENV, SUPPORTED_TRL_VERSION, UnsupportedVersionError, check_trl_version

_LAZY = {
    "RLPluginsGRPOConfig": "grpo",
    "RLPluginsGRPOTrainer": "grpo",
    "TRL_LOSS_TYPES": "grpo",
    "NORMALIZERS": "grpo",
    "rlplugins_loss_types": "grpo",
    "SageDPOConfig": "dpo",
    "SageDPOTrainer": "dpo",
    "score_preference_pairs": "dpo",
    "select_pairs_offline": "dpo",
}
# Deprecated names (one release): served by version.py with a DeprecationWarning.
_DEPRECATED = {"TRLVersionError": "version", "SKIP_ENV": "version"}

__all__ = [
    "SKIP_VERSION_CHECK_ENV", "SUPPORTED_TRL_VERSION", "UnsupportedVersionError", "check_trl_version", *_LAZY,
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name) or _DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
