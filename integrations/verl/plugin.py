"""Imported by veRL for the ``verl.plugins`` entry point (at ``import verl``, in every veRL process).

Registers ``maspo``, ``rlp_sapo`` and ``rlp_ppo_clip`` so that ``actor.policy_loss.loss_mode=maspo`` works
with default parameters without any ``_target_``. veRL swallows exceptions raised by entry points (they are
logged at debug level), so a failure here shows up later as "Unsupported loss mode"; the ``_target_`` route
(``MaspoPolicyLossConfig``) fails loudly instead and is the primary one.
"""

from .losses import register_policy_losses
from .token_logprobs import install_from_env

REGISTERED = register_policy_losses()
# Opt-in (RLPLUGINS_VERL_TOKEN_LOGPROBS=1): route veRL's log-prob/entropy functions through our kernel.
TOKEN_LOGPROBS = install_from_env()
