"""The Ray policy actor that runs OpenRLHF's ``PolicyModelActor`` with an rlplugins loss.

Why a class swap: the loss lives in Ray ``PolicyModelActor`` processes, which import
``openrlhf.trainer.ray.ppo_actor`` afresh, so a driver-side rebinding of ``PolicyLoss`` never reaches them.
``train()`` hands ``ppo_actor.PolicyModelActor`` (looked up in the module's globals when the CLI runs) to
``RayActorGroup``, which only calls ``.options(...).remote(...)`` on it; a Ray actor class built from a
subclass of the undecorated original therefore runs everywhere the original would. The override runs *in*
the worker, after OpenRLHF built its trainer, and reads the loss choice from ``strategy.args.rlplugins``
(pickled into every ``init_model_from_pretrained`` call). rlplugins must be importable on every Ray node.

Importing this module imports ``ppo_actor``, hence Ray, DeepSpeed and vLLM.
"""

from __future__ import annotations

from typing import Any

from .version import check_openrlhf_version

check_openrlhf_version()

import ray  # noqa: E402
from openrlhf.trainer.ray import ppo_actor as _ppo_actor  # noqa: E402

from .loss_flags import LossSpec  # noqa: E402
from .ppo_patch import install_policy_loss  # noqa: E402

# The decorated original, captured once per process (before any swap in this process).
ORIGINAL_POLICY_ACTOR = _ppo_actor.PolicyModelActor


class RLPluginsPolicyModelActor(ORIGINAL_POLICY_ACTOR.__ray_actor_class__):  # an ActorClass can't be subclassed
    """``PolicyModelActor`` whose trainer computes the policy loss with rlplugins' core."""

    def init_model_from_pretrained(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        spec = getattr(strategy.args, "rlplugins", None)
        if spec is None:
            raise RuntimeError(
                "RLPluginsPolicyModelActor got no strategy.args.rlplugins: launch the run with "
                "python -m rlplugins.integrations.openrlhf.train_ppo_ray, which puts the loss choice there"
            )
        spec = LossSpec.coerce(spec)
        if strategy.args.actor.policy_loss_type != spec.name:
            raise RuntimeError(
                f"args.actor.policy_loss_type is {strategy.args.actor.policy_loss_type!r} but args.rlplugins "
                f"selects {spec.name!r}; they are set together by the rlplugins wrapper CLI and must agree"
            )
        super().init_model_from_pretrained(strategy, *args, **kwargs)
        install_policy_loss(self.trainer, spec)


# Same resources as OpenRLHF's own decorator (@ray.remote(num_gpus=1)); RayActorGroup overrides them per run.
RemotePolicyModelActor = ray.remote(num_gpus=1)(RLPluginsPolicyModelActor)


def swap_policy_actor() -> Any:
    """Make ``openrlhf.trainer.ray.ppo_actor.PolicyModelActor`` our actor class; idempotent. Returns it."""
    _ppo_actor.PolicyModelActor = RemotePolicyModelActor
    return RemotePolicyModelActor
