"""veRL 0.9.1 adapter: rlplugins' policy losses and prompt-group selector as veRL config flags.

Enable MASPO (primary route, fails loudly at configuration time)::

    actor_rollout_ref.actor.policy_loss._target_=rlplugins.integrations.verl.MaspoPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=maspo
    +actor_rollout_ref.actor.policy_loss.alpha=0.5

With rlplugins installed, the ``verl.plugins`` entry point (``rlplugins.integrations.verl.plugin``) also
registers the losses in every veRL process, so ``loss_mode=maspo`` (or ``rlp_sapo``, ``rlp_ppo_clip``) alone
works with default parameters. The replay-buffer selector is ``PromptGroupReplayBuffer`` (see
``rlplugins.integrations.verl.sampler``).

Importing this package does not import veRL unless veRL is already imported (then it registers the losses
at once, which covers ``actor_rollout_ref.model.external_lib=rlplugins.integrations.verl`` and
``VERL_USE_EXTERNAL_MODULES``); the names below load their submodule, and so veRL, on first access. This
keeps ``rlplugins verl-smoke --help`` and the smoke run's CPU set-up free of veRL imports.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

# public name -> submodule that defines it
_LAZY = {
    "MaspoPolicyLossConfig": "config",
    "register_policy_losses": "losses",
    "VERL_POLICY_LOSSES": "losses",
    "maspo_policy_loss": "losses",
    "rlp_sapo_policy_loss": "losses",
    "rlp_ppo_clip_policy_loss": "losses",
    "PromptGroupReplayBuffer": "sampler",
    "PromptGroupReplayBufferAsync": "sampler",
    "PromptGroupCheckpointCallback": "sampler",
    "SUPPORTED_VERL_VERSIONS": "compat",
    "UnsupportedVerlVersion": "compat",
    "require_supported_verl": "compat",
    "install_token_logprobs": "token_logprobs",
    "uninstall_token_logprobs": "token_logprobs",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if "verl" in sys.modules:
    # Already inside a veRL process (external_lib, VERL_USE_EXTERNAL_MODULES, a user script): register now.
    # An unsupported veRL only warns here: the package must stay importable so that Hydra can reach
    # MaspoPolicyLossConfig, whose constructor raises the full message (Hydra hides errors raised while it
    # imports a _target_'s module, and shows those raised by the constructor).
    try:
        importlib.import_module(f"{__name__}.losses").register_policy_losses()
        importlib.import_module(f"{__name__}.token_logprobs").install_from_env()  # opt-in, off by default
    except ImportError as _exc:
        import warnings

        warnings.warn(str(_exc), stacklevel=2)
