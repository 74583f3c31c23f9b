"""veRL 0.9.1 adapter: rlplugins' policy losses and prompt-group selector as veRL config flags.

Enable MASPO (primary route, fails loudly at configuration time)::

    actor_rollout_ref.actor.policy_loss._target_=rlplugins.integrations.verl.MaspoPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=maspo
    +actor_rollout_ref.actor.policy_loss.alpha=0.5

With rlplugins installed, the ``verl.plugins`` entry point (``rlplugins.integrations.verl.plugin``) also
registers the losses in every veRL process, so ``loss_mode=maspo`` (or any ``rlp_<core loss>``: ``rlp_sapo``,
``rlp_ppo_clip``, ``rlp_gspo``, ...) alone works with default parameters. The replay-buffer selector is
``PromptGroupReplayBuffer`` (see ``rlplugins.integrations.verl.sampler``).

Registration is lazy (``register_lazily``): the losses enter veRL's ``POLICY_LOSS_REGISTRY`` right after veRL
imports ``verl.trainer.ppo.core_algos`` (at once if it already has), so a process that never builds an actor
(rollout server, reward worker) does not import veRL's policy-loss machinery because of us.

Importing this package does not import veRL. If veRL is already imported it calls ``register_lazily()``, which
covers ``actor_rollout_ref.model.external_lib=rlplugins.integrations.verl`` and ``VERL_USE_EXTERNAL_MODULES``;
the names below load their submodule, and so veRL, on first access. This keeps ``rlplugins verl-smoke --help``
and the smoke run's CPU set-up free of veRL imports.
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
    "make_policy_loss": "losses",
    "SUPPORTED_VERL_VERSION": "version",
    "SKIP_VERSION_CHECK_ENV": "version",
    "UnsupportedVersionError": "version",
    "check_verl_version": "version",
    "install_token_logprobs": "token_logprobs",
    "uninstall_token_logprobs": "token_logprobs",
}

# Deprecated names (one release), served with a DeprecationWarning by version.py.
_DEPRECATED = {"SUPPORTED_VERL_VERSIONS": "version", "UnsupportedVerlVersion": "version",
               "require_supported_verl": "version"}

__all__ = sorted([*_LAZY, "register_lazily"])

_LAZY_REGISTRATION_REQUESTED = False


def register_lazily() -> None:
    """Check the veRL version now; register our losses when veRL imports ``core_algos`` and the configuration-time
    check of their parameters when it imports its actor config (each at once if already imported). Idempotent.

    Also installs the opt-in log-prob routing (``RLPLUGINS_VERL_TOKEN_LOGPROBS=1``, off by default)."""
    global _LAZY_REGISTRATION_REQUESTED
    if _LAZY_REGISTRATION_REQUESTED:
        return
    # Absolute imports: veRL's file-path loaders may execute this file outside its package.
    from rlplugins.integrations.verl.import_hooks import after_import
    from rlplugins.integrations.verl.version import check_verl_version

    check_verl_version()
    _LAZY_REGISTRATION_REQUESTED = True
    after_import("verl.trainer.ppo.core_algos", _register_now)
    after_import("verl.workers.config.actor", _install_actor_config_check)
    importlib.import_module("rlplugins.integrations.verl.token_logprobs").install_from_env()


def _register_now(_module: Any) -> None:
    importlib.import_module("rlplugins.integrations.verl.losses").register_policy_losses()


def _install_actor_config_check(_module: Any) -> None:
    importlib.import_module("rlplugins.integrations.verl.losses")._install_actor_config_check()


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:  # not cached: every use warns
        return getattr(importlib.import_module(f"{__name__}.{_DEPRECATED[name]}"), name)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if "verl" in sys.modules:
    # Already inside a veRL process (external_lib, VERL_USE_EXTERNAL_MODULES, a user script, the entry point):
    # register, lazily. An unsupported veRL only warns here: the package must stay importable so that Hydra can
    # reach MaspoPolicyLossConfig, whose constructor raises the full message (Hydra hides errors raised while it
    # imports a _target_'s module, and shows those raised by the constructor).
    try:
        register_lazily()
    except ImportError as _exc:
        import warnings

        warnings.warn(str(_exc), stacklevel=2)
