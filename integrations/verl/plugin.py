"""Imported by veRL for the ``verl.plugins`` entry point (at ``import verl``, in every veRL process).

Checks the veRL version and arranges for ``maspo`` and every ``rlp_<core loss>`` to be registered when veRL
imports ``verl.trainer.ppo.core_algos`` (``register_lazily``), so that ``actor.policy_loss.loss_mode=maspo`` works
with default parameters without any ``_target_``, and processes that never build an actor do not import
``core_algos`` because of us. veRL swallows exceptions raised by entry points (they are logged at debug level),
so a failure here shows up later as "Unsupported loss mode"; the ``_target_`` route (``MaspoPolicyLossConfig``)
fails loudly instead and is the primary one.
"""

from rlplugins.integrations.verl import register_lazily

register_lazily()
