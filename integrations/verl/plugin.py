"""Imported by veRL for the ``verl.plugins`` entry point (at ``import verl``, in every veRL process).

Registers ``maspo``, ``rlp_sapo`` and ``rlp_ppo_clip`` so that ``actor.policy_loss.loss_mode=maspo`` works
with default parameters without any ``_target_``. veRL swallows exceptions raised by entry points (they are
logged at debug level), so a failure here shows up later as "Unsupported loss mode"; the ``_target_`` route
(``MaspoPolicyLossConfig``) fails loudly instead and is the primary one.
"""

from .losses import register_policy_losses

REGISTERED = register_policy_losses()
