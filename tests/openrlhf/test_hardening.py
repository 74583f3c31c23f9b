"""Hardening of the OpenRLHF adapter: the drop-in ``ppo_kl``, error messages in OpenRLHF's argument names,
global counts checked at the boundary, DPO flags checked at parse time, the selector state loaded without pickle
code execution, and exact resume of the scored sampler whatever the loader prefetched."""

from __future__ import annotations

import builtins
import os
from types import SimpleNamespace

import pytest
import torch

from openrlhf.models.loss import PolicyLoss
from rlplugins.integrations.openrlhf.dpo_sampler import ScoredSampler
from rlplugins.integrations.openrlhf.dpo_trainer import SageDPOTrainer
from rlplugins.integrations.openrlhf.loss_flags import FlagError
from rlplugins.integrations.openrlhf.policy_loss import CorePolicyLoss, build_policy_loss
from rlplugins.integrations.openrlhf.selector_flags import parse_selector_flags
from rlplugins.selection import SageConfig, make_selector


def _batch(spread=0.1):
    old = torch.full((2, 4), -1.0, dtype=torch.float64)
    lp = (old + spread * torch.arange(8, dtype=torch.float64).view(2, 4) / 8).requires_grad_(True)
    return lp, old, torch.ones(2, 4, dtype=torch.float64), torch.ones(2, 4, dtype=torch.bool)


# 16: ppo_kl as OpenRLHF's own PolicyLoss reports it -----------------------------------------------------------------
def test_ppo_kl_is_openrlhfs_raw_log_ratio_mean():
    lp, old, adv, mask = _batch()
    old = old - 100.0  # log-ratio 100: beyond the +-20 clamp of the loss
    theirs = PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.2, policy_loss_type="ppo")
    ours = build_policy_loss("ppo_clip", template=theirs)
    t_kl = theirs(lp, old, adv, action_mask=mask)[2]
    o_kl = ours(lp, old, adv, action_mask=mask)[2]
    assert t_kl.item() < -99 and o_kl.item() == pytest.approx(t_kl.item(), rel=1e-12)
    assert ours.last_metrics["ppo_kl"] == pytest.approx(-20.0)  # the core's (clamped, veRL's) definition stays


# 13: messages in OpenRLHF's argument names --------------------------------------------------------------------------
def test_core_policy_loss_errors_name_openrlhfs_arguments():
    lp, old, adv, mask = _batch()
    loss = CorePolicyLoss("maspo")
    with pytest.raises(ValueError, match=r"^action_mask must have the shape of log_probs"):
        loss(lp, old, adv, action_mask=mask[:, :2])
    with pytest.raises(ValueError, match=r"^old_log_probs must have the shape of log_probs"):
        loss(lp, old[:, :2], adv, action_mask=mask)
    bad = old.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite log_probs/old_log_probs/advantages"):
        loss(lp, bad, adv, action_mask=mask)


# 2: global counts at the boundary -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"batch_num_tokens": 0, "dp_size": 1}, r"^batch_num_tokens=0 while this call has 8 valid tokens: the step would "
                                            r"be silently skipped"),
    ({"batch_num_tokens": float("nan"), "dp_size": 1}, r"^batch_num_tokens must be finite"),
    ({"batch_num_tokens": 16.0, "dp_size": 2.7}, r"^dp_size must be an int >= 1, got 2.7"),
    ({"batch_num_tokens": -3, "dp_size": 1}, r"^batch_num_tokens must be >= 0"),
])
def test_core_policy_loss_checks_global_counts(kwargs, message):
    lp, old, adv, mask = _batch()
    with pytest.raises(ValueError, match=message):
        CorePolicyLoss("ppo_clip")(lp, old, adv, action_mask=mask, **kwargs)


def test_core_policy_loss_accepts_openrlhfs_counts_prescaled_by_accumulation_steps():
    """OpenRLHF 0.11's iter_grad_accum_global_norm passes the step's global count divided by the accumulation
    steps (DeepSpeed then multiplies by 1/gas): one micro-batch may hold more tokens than that count. The loss
    must equal OpenRLHF's own PolicyLoss there, not be refused."""
    lp, old, adv, mask = _batch()
    n_local = int(mask.sum())
    prescaled = torch.tensor(n_local * 2 / 4.0)  # two micro-batches of this size, gas = 4: below the local count
    assert prescaled < n_local
    ours = CorePolicyLoss("ppo_clip")(lp, old, adv, action_mask=mask, batch_num_tokens=prescaled, dp_size=2)[0]
    theirs = PolicyLoss()(lp, old, adv, action_mask=mask, batch_num_tokens=prescaled, dp_size=2)[0]
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


# 15 and 13: DPO flags fail at parse time, naming the flag -------------------------------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--selector", "sage", "--model.beta", "0"], r"--model.beta must be a finite number > 0 .* got '0'"),
    (["--selector", "sage", "--model.beta=-0.1"], r"--model.beta must be a finite number > 0"),
    (["--selector", "sage", "--train.seed", "-1"], r"--train.seed must be an int >= 0 .* got '-1'"),
    (["--selector", "selective_dpo"], r"--selector selective_dpo chooses pairs by difficulty, so it needs a difficulty "
                                      r"column: add --selector.difficulty_key COLUMN or --selector.pass_rate_key COLUMN"),
    (["--selector", "dpo_full", "--sage.rescore_interval", "4"], r"--sage.rescore_interval has no effect with "
                                                                  r"--selector dpo_full"),
    (["--selector", "random_subset", "--sage.use_filter", "false"], r"--sage.use_filter has no effect"),
    (["--selector", "sage_no_filter", "--sage.use_filter", "true"], r"--sage.use_filter True contradicts --selector "
                                                                     r"sage_no_filter, which sets use_filter=False"),
    (["--selector", "sage", "--sage.warmup_steps", "1.5"], r"argument --sage.warmup_steps: invalid int \(or none\) "
                                                            r"value: '1.5'"),
])
def test_dpo_flags_fail_at_parse_time(argv, message):
    with pytest.raises(FlagError, match=message):
        parse_selector_flags(argv)


def test_valid_dpo_flags_still_parse():
    spec, rest = parse_selector_flags(["--selector", "selective_dpo", "--selector.pass_rate_key", "p",
                                       "--sage.selection_ratio", "0.5", "--model.beta", "0.1", "--train.seed", "3"])
    assert spec.name == "selective_dpo" and spec.overrides == {"selection_ratio": 0.5}
    assert rest == ["--model.beta", "0.1", "--train.seed", "3"]


# 3: ScoredSampler resume is exact in samples, prefetch included -------------------------------------------------------
def _scored(n=32, b=4):
    selector = make_selector("dpo_full", num_pairs=n, batch_size=b, config=SageConfig(seed=1))
    return ScoredSampler(list(range(n)), selector)


@pytest.mark.parametrize("consumed,prefetched", [(6, 0), (6, 5), (8, 9), (3, 1)])
def test_scored_sampler_replays_the_prefetch_on_resume(consumed, prefetched):
    sampler = _scored()
    sampler.set_epoch(0, 0)
    it = iter(sampler)
    for _ in range(consumed + prefetched):  # the loader's workers took this many
        next(it)
    sampler.pop(consumed)  # the trainer trained on this many
    state = sampler.state_dict()
    expected = sampler.pop(prefetched).tolist() + list(it)

    resumed = _scored()
    resumed.load_state_dict(state)
    resumed.set_epoch(0, consumed)  # OpenRLHF's DPOTrainer.fit after loading
    assert list(resumed) == expected


# 4: the selector state is loaded with weights_only=True ---------------------------------------------------------------
class _Payload:
    def __reduce__(self):
        return (exec, ("import builtins; builtins._rlplugins_pwned = True",))


def _trainer_stub(tmp_path, sampler):
    trainer = SageDPOTrainer.__new__(SageDPOTrainer)  # only the checkpoint method under test
    trainer.args = SimpleNamespace(ckpt=SimpleNamespace(load_enable=True, path=str(tmp_path)))
    trainer._rank = 0
    trainer.sampler = sampler
    trainer.selector_spec = SimpleNamespace(name="dpo_full")
    trainer.strategy = SimpleNamespace(print=lambda *a: None)
    return trainer


def test_a_pickle_payload_in_the_checkpoint_is_refused(tmp_path):
    trainer = _trainer_stub(tmp_path, _scored())
    torch.save({"epoch": 0, "batches_done": 0, "selector": _Payload()}, trainer._selector_state_path())
    with pytest.raises(RuntimeError, match=r"refusing to load the selector state .*weights_only=True"):
        trainer._maybe_load_selector_state()
    assert not getattr(builtins, "_rlplugins_pwned", False)


def test_the_real_selector_state_loads_with_weights_only(tmp_path):
    sampler = _scored()
    sampler.set_epoch(0, 0)
    it = iter(sampler)
    for _ in range(6):
        next(it)
    sampler.pop(5)
    torch.save(sampler.state_dict(), os.path.join(tmp_path, "rlplugins_selector_rank0.pt"))
    expected = sampler.pop(1).tolist() + list(it)
    resumed = _scored()
    _trainer_stub(tmp_path, resumed)._maybe_load_selector_state()
    resumed.set_epoch(0, 5)
    assert list(resumed) == expected
