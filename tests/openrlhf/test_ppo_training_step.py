"""OpenRLHF's real ActorPPOTrainer.training_step with maspo on a tiny random Llama (T1, CPU).

Patched, because they need CUDA or a cluster: ``torch_dist_barrier_and_cuda_sync`` (no-op) and
``NaiveReplayBuffer`` (its __init__ calls torch.cuda.current_device(); training_step never touches it on
this path). The strategy is a CPU stand-in; Actor, trainer, training_step and PolicyLoss are OpenRLHF's.
"""

from __future__ import annotations

from types import SimpleNamespace
from unittest import mock

import pytest
import rlp_openrlhf_tiny as tiny
import torch

import openrlhf.trainer.ray.ppo_actor as ppo_actor
from openrlhf.trainer.ppo_utils.experience import Experience
from openrlhf.utils.loss_utils import get_loss_batch_info
from rlplugins.integrations.openrlhf.loss_flags import LossSpec
from rlplugins.integrations.openrlhf.policy_loss import CorePolicyLoss
from rlplugins.integrations.openrlhf.ppo_patch import METRIC_PREFIX, install_policy_loss
from rlplugins.losses import MaspoConfig, compute_policy_loss


def ppo_args(**overrides) -> SimpleNamespace:
    flat = {
        "train.max_epochs": 1, "train.dynamic_batch_enable": False, "train.colocate_all": False,
        "train.async_enable": False, "train.seed": 0,
        "actor.eps_clip": 0.2, "actor.eps_clip_low_high": (0.2, 0.2), "actor.dual_clip": None,
        "actor.loss_agg_mode": "token-mean", "actor.policy_loss_type": "maspo", "actor.aux_loss_coef": 0.0,
        "actor.entropy_coef": None,
        "algo.advantage.is_correction_level": "off", "algo.advantage.is_correction_mode": "mask",
        "algo.advantage.is_correction_gating": "ratio", "algo.advantage.is_correction_threshold": [0.5, 5.0],
        "algo.kl.use_loss": False, "algo.kl.init_coef": 0.0, "algo.kl.estimator": "k1",
        "algo.kl.unbiased_gradient": False,
        "ds.packing_samples": False, "vllm.sync_backend": "nccl",
    }
    flat.update(overrides)
    return tiny.namespace(flat)


@pytest.fixture
def make_trainer(tiny_model_dir, monkeypatch):
    monkeypatch.setattr(ppo_actor, "torch_dist_barrier_and_cuda_sync", lambda: None)
    monkeypatch.setattr(ppo_actor, "NaiveReplayBuffer", mock.MagicMock())

    def build(**overrides):
        args = ppo_args(**overrides)
        strategy = tiny.CPUStrategy(args)
        torch.manual_seed(0)
        actor = tiny.load_actor(tiny_model_dir)
        optim = torch.optim.SGD(actor.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optim, lambda _: 1.0)
        trainer = ppo_actor.ActorPPOTrainer(strategy, actor, ema_model=None, actor_optim=optim,
                                            actor_scheduler=scheduler, micro_train_batch_size=4)
        return trainer

    return build


def make_experience(actor, seed: int = 0, batch: int = 4, prompt: int = 5, response: int = 7) -> Experience:
    """Sequences from the tiny vocabulary; old log-probs = current ones perturbed so that ratios != 1."""
    g = torch.Generator().manual_seed(seed)
    sequences = torch.randint(4, tiny.VOCAB, (batch, prompt + response), generator=g)
    attention_mask = torch.ones_like(sequences)
    attention_mask[1, :2] = 0  # a left-padded prompt
    action_mask = torch.ones(batch, response, dtype=torch.bool)
    action_mask[2, -3:] = False  # a response that ended early
    with torch.no_grad():
        current = actor(sequences, action_mask, attention_mask=attention_mask)
    old = current + (torch.rand(current.shape, generator=g) - 0.5) * 1.2
    advantages = torch.randn(batch, 1, generator=g).expand(batch, response).contiguous()  # GRPO-style
    return Experience(sequences=sequences, attention_mask=attention_mask, action_mask=action_mask,
                      action_log_probs=old, base_action_log_probs=old.clone(), advantages=advantages, info={})


def test_plain_openrlhf_worker_refuses_our_loss_name(make_trainer):
    """Without the plugin, the choice carried in the args fails loudly instead of silently training PPO."""
    trainer = make_trainer()
    with pytest.raises(ValueError, match="Invalid policy loss type: maspo"):
        trainer.training_step(make_experience(trainer.actor), kl_ctl=0.0, step=0)


def test_training_step_runs_maspo(make_trainer):
    # KL loss on (not the entropy term: OpenRLHF's compute_entropy is @torch.compile, a minute on CPU).
    trainer = make_trainer(**{"actor.dual_clip": 3.0, "algo.kl.use_loss": True, "algo.kl.init_coef": 0.01})
    loss_fn = install_policy_loss(trainer, LossSpec("maspo", {"alpha": 0.5, "sigma_base": 0.5}))
    assert trainer.actor_loss_fn is loss_fn and isinstance(loss_fn, CorePolicyLoss)
    assert loss_fn.config == MaspoConfig(alpha=0.5, sigma_base=0.5, dual_clip=3.0)  # dual clip from OpenRLHF's flag

    experience = make_experience(trainer.actor)
    with torch.no_grad():
        log_probs = trainer.actor(experience.sequences, experience.action_mask,
                                  attention_mask=experience.attention_mask)
    info = get_loss_batch_info(trainer.strategy, experience.action_mask)
    expected, expected_metrics = compute_policy_loss(
        "maspo", log_prob=log_probs, old_log_prob=experience.action_log_probs, advantages=experience.advantages,
        response_mask=experience.action_mask, config=loss_fn.config, global_batch_info=info)
    before = [p.detach().clone() for p in trainer.actor.parameters()]

    status = trainer.training_step(experience, kl_ctl=0.01, step=0)

    metrics = status["metrics"]
    torch.testing.assert_close(metrics["policy_loss"], expected.to(metrics["policy_loss"].dtype), rtol=1e-5, atol=1e-6)
    assert 0.0 < metrics[METRIC_PREFIX + "gate_mean"] < 1.0  # the soft gate damped some tokens
    assert metrics[METRIC_PREFIX + "gate_mean"] == pytest.approx(expected_metrics["gate_mean"], rel=1e-5)
    assert status["weights"][METRIC_PREFIX + "gate_mean"] == "token"
    assert metrics["ppo_kl"].item() == pytest.approx(expected_metrics["ppo_kl"], rel=1e-5)
    assert "kl" in metrics  # OpenRLHF's own terms still run around our loss
    changed = sum(not torch.equal(b, p) for b, p in zip(before, trainer.actor.parameters()))
    assert changed > 0 and trainer.strategy.optimizer_steps == 1


def test_global_counts_from_grad_accumulation_reach_the_loss(make_trainer):
    """ppo_train passes counts summed over the accumulation window and DP ranks; the loss must use them."""
    trainer = make_trainer()
    install_policy_loss(trainer, LossSpec("maspo"))
    experience = make_experience(trainer.actor, seed=1)
    with torch.no_grad():
        log_probs = trainer.actor(experience.sequences, experience.action_mask,
                                  attention_mask=experience.attention_mask)
    info = {"dp_size": 2, "batch_num_tokens": torch.tensor(37.0), "global_batch_size": torch.tensor(8.0)}
    expected, _ = compute_policy_loss(
        "maspo", log_prob=log_probs, old_log_prob=experience.action_log_probs, advantages=experience.advantages,
        response_mask=experience.action_mask, global_batch_info={"dp_size": 2, "batch_num_tokens": 37.0})
    status = trainer.training_step(experience, kl_ctl=0.0, step=0, loss_batch_info=info)
    torch.testing.assert_close(status["metrics"]["policy_loss"], expected, rtol=1e-5, atol=1e-6)


def test_seq_mean_token_mean_and_is_correction_in_training_step(make_trainer):
    trainer = make_trainer(**{"actor.loss_agg_mode": "seq-mean-token-mean",
                              "algo.advantage.is_correction_level": "token",
                              "algo.advantage.is_correction_threshold": [0.8, 1.25]})
    loss_fn = install_policy_loss(trainer, LossSpec("sapo"))
    assert loss_fn.loss_agg_mode == "seq-mean-token-mean"
    experience = make_experience(trainer.actor, seed=2)
    g = torch.Generator().manual_seed(5)
    experience.rollout_log_probs = experience.action_log_probs + (torch.rand(experience.action_log_probs.shape,
                                                                               generator=g) - 0.5) * 0.8
    status = trainer.training_step(experience, kl_ctl=0.0, step=0)
    assert 0.0 < status["metrics"]["is_filter_ratio"].item() < 1.0
    assert torch.isfinite(status["metrics"]["policy_loss"])


def test_install_is_idempotent(make_trainer):
    trainer = make_trainer()
    first = install_policy_loss(trainer, LossSpec("maspo"))
    wrapped = trainer.training_step
    second = install_policy_loss(trainer, SimpleNamespace(policy_loss="pg", overrides={}, on_nonfinite="raise"))
    assert trainer.training_step is wrapped and second is not first and second.policy_loss_type == "pg"
    assert second._openrlhf_template is first._openrlhf_template


def test_policy_actor_subclass_installs_the_loss_after_init(make_trainer, monkeypatch):
    """The Ray actor class's override, exercised in-process: after OpenRLHF's init, the loss is ours."""
    from rlplugins.integrations.openrlhf import ray_actor

    trainer = make_trainer()
    original = ray_actor.ORIGINAL_POLICY_ACTOR.__ray_actor_class__

    def fake_init(self, strategy, pretrain, max_steps=None, vllm_engines=None):
        self.trainer = trainer  # what OpenRLHF's init ends with (its model loading needs a GPU and DeepSpeed)

    monkeypatch.setattr(original, "init_model_from_pretrained", fake_init)
    actor = object.__new__(ray_actor.RLPluginsPolicyModelActor)
    args = ppo_args()
    args.rlplugins = LossSpec("maspo", {"alpha": 0.2}).to_namespace()
    actor.init_model_from_pretrained(SimpleNamespace(args=args), "unused")
    assert isinstance(trainer.actor_loss_fn, CorePolicyLoss) and trainer.actor_loss_fn.config.alpha == 0.2
    trainer.training_step(make_experience(trainer.actor), kl_ctl=0.0, step=0)

    del args.rlplugins
    with pytest.raises(RuntimeError, match="launch the run with python -m rlplugins.integrations.openrlhf.train_ppo_ray"):
        object.__new__(ray_actor.RLPluginsPolicyModelActor).init_model_from_pretrained(SimpleNamespace(args=args), "x")
