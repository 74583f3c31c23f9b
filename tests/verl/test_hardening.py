"""Issue 10 (hardening) in the veRL adapter: configuration-time errors that name veRL's flags, and the global batch
counts validated at the boundary (a zero/negative/NaN count would silently skip or scale a step)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import verl
from hydra import compose, initialize_config_dir
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils.config import omega_conf_to_dataclass, validate_config
from verl.workers.config import FSDPActorConfig

from rlplugins.integrations.verl import losses as adapter

adapter.register_policy_losses()
PL = "actor_rollout_ref.actor.policy_loss"
BASE = ["actor_rollout_ref.model.path=/models/any", "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2"]


def compose_ppo(overrides: list[str]):
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        return compose("ppo_trainer", overrides=[*BASE, *overrides])


@pytest.mark.parametrize("flags,flag", [
    (["actor_rollout_ref.actor.tau_pos=0"], "actor_rollout_ref.actor.tau_pos"),
    (["actor_rollout_ref.actor.tau_neg=-1"], "actor_rollout_ref.actor.tau_neg"),
])
def test_rlp_sapo_bad_temperature_fails_at_configuration_naming_the_veRL_flag(flags, flag):
    cfg = compose_ppo([f"{PL}.loss_mode=rlp_sapo", *flags])
    # Hydra wraps constructor errors in InstantiationException (a plain Exception); the message is ours.
    with pytest.raises(Exception, match=rf"{flag} must be in \[0.0001, inf\), got .*\(loss_mode=rlp_sapo\)"):
        validate_config(cfg, use_reference_policy=False, use_critic=False)  # the driver, before any worker
    with pytest.raises(Exception, match=flag):
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # and each worker's ActorConfig


@pytest.mark.parametrize("flags,flag", [
    (["actor_rollout_ref.actor.clip_ratio_low=1.5"], "actor_rollout_ref.actor.clip_ratio_low"),
    (["actor_rollout_ref.actor.clip_ratio_high=-0.1"], "actor_rollout_ref.actor.clip_ratio_high"),
])
def test_rlp_ppo_clip_bad_bounds_fail_at_configuration_naming_the_veRL_flag(flags, flag):
    cfg = compose_ppo([f"{PL}.loss_mode=rlp_ppo_clip", *flags])
    with pytest.raises(Exception, match=rf"{flag} must be in .*\(loss_mode=rlp_ppo_clip\)"):
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)


def test_veRLs_own_losses_are_not_checked_by_us():
    # The same value under veRL's own sapo is veRL's business: our check only covers our loss modes.
    cfg = compose_ppo([f"{PL}.loss_mode=sapo", "actor_rollout_ref.actor.tau_pos=0"])
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).tau_pos == 0


def _call(name: str, gbi: dict):
    """One call through veRL's registry as ppo_loss makes it, with ``global_batch_info`` as veRL fills it."""
    config = FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=2)
    config.global_batch_info.update(gbi)
    old = torch.full((2, 3), -1.0, dtype=torch.float64)
    return get_policy_loss_fn(name)(old_log_prob=old, log_prob=old + 0.1, advantages=torch.ones(2, 3, dtype=torch.float64),
                                    response_mask=torch.ones(2, 3, dtype=torch.bool), loss_agg_mode="token-mean",
                                    config=config, rollout_is_weights=None)


@pytest.mark.parametrize("gbi,message", [
    ({"batch_num_tokens": 0, "dp_size": 1}, r"global_batch_info\['batch_num_tokens'\]=0 is smaller than the 6 valid"),
    ({"batch_num_tokens": -6, "dp_size": 1}, r"global_batch_info\['batch_num_tokens'\] must be >= 0"),
    ({"batch_num_tokens": math.nan, "dp_size": 1}, r"global_batch_info\['batch_num_tokens'\] must be finite"),
    ({"batch_num_tokens": 3, "dp_size": 1}, r"is smaller than the 6 valid tokens"),
    ({"batch_num_tokens": 12, "dp_size": 2.7}, r"global_batch_info\['dp_size'\] must be an int >= 1, got 2.7"),
    ({"batch_num_tokens": 12, "dp_size": True}, r"global_batch_info\['dp_size'\] must be an int >= 1, got True"),
])
def test_global_batch_info_is_range_checked_at_the_adapter(gbi, message):
    with pytest.raises(ValueError, match=message):
        _call("rlp_sapo", gbi)
