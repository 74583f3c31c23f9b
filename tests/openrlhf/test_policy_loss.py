"""CorePolicyLoss: OpenRLHF's PolicyLoss contract, the core's numbers.

(1) For every registered loss, the adapter equals ``compute_policy_loss`` called with the translated contract
    (values and gradients, both of OpenRLHF's aggregation modes, with and without global counts).
(2) For the losses OpenRLHF also has (ppo with asymmetric clip, dual clip, gspo), the adapter equals
    OpenRLHF's own ``PolicyLoss``: loss, gradient, clip_ratio, ppo_kl, and with IS correction on (every
    level/mode/gating combination OpenRLHF accepts) also vllm_kl and is_filter_ratio.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlplugins.integrations.openrlhf.policy_loss import CorePolicyLoss, build_policy_loss, config_from_openrlhf
from rlplugins.losses import GspoConfig, PpoClipConfig, compute_policy_loss, list_policy_losses

from openrlhf.models.loss import PolicyLoss

IS_SETTINGS = [
    # (level, mode, gating, threshold) -- every combination OpenRLHF 0.11.2's PolicyLoss accepts
    ("token", "mask", "ratio", (0.8, 1.25)),
    ("token", "clip", "ratio", (0.8, 1.25)),
    ("seq", "mask", "ratio", (0.9, 1.1)),
    ("token", "mask", "binary_kl", (0.0, 0.02)),
    ("seq", "mask", "binary_kl", (0.0, 0.01)),
    ("token", "mask", "tv", (0.0, 0.05)),
    ("seq", "mask", "tv", (0.0, 0.05)),
]


def make_batch(seed: int, batch: int, length: int, spread: float = 0.7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g, dtype=torch.float64) * 4.0 - 0.01
    log_probs = (old + (torch.rand(batch, length, generator=g, dtype=torch.float64) * 2 - 1) * spread)
    log_probs = log_probs.clamp(max=-1e-3).requires_grad_(True)
    advantages = torch.randn(batch, length, generator=g, dtype=torch.float64)
    mask = torch.rand(batch, length, generator=g) < 0.75
    mask[0, 0] = True  # at least one valid token: OpenRLHF's masked_mean is 0/0 otherwise
    rollout = (old + (torch.rand(batch, length, generator=g, dtype=torch.float64) * 2 - 1) * 0.4).clamp(max=-1e-3)
    return log_probs, old, advantages, mask, rollout


def sequence_advantages(adv: torch.Tensor) -> torch.Tensor:
    """One advantage per sequence (GRPO/RLOO outcome rewards), GSPO's setting.

    With per-token advantages the two GSPO forms differ on purpose: OpenRLHF differentiates through the
    sequence ratio, so every token's gradient carries the sequence's *mean* advantage; the core's token-level
    straight-through form (veRL's) keeps each token's own. Values agree either way.
    """
    return adv[:, :1].expand_as(adv).contiguous()


def counts(mask: torch.Tensor, token_level: bool, scale: float) -> dict:
    """Global counts as OpenRLHF passes them: totals over a larger (grad-accum x DP) window, so not local."""
    tokens = mask.sum().double() * scale
    seqs = (mask.sum(-1) > 0).sum().double() * scale
    return {"dp_size": 2, "batch_num_tokens": tokens, "global_batch_size": seqs}


def run(loss_fn, log_probs, *args, **kwargs):
    if log_probs.grad is not None:
        log_probs.grad = None
    out = loss_fn(log_probs, *args, **kwargs)
    out[0].backward()
    return out, log_probs.grad.clone()


sizes = dict(seed=st.integers(0, 2**31 - 1), batch=st.integers(1, 4), length=st.integers(1, 9))


@pytest.mark.parametrize("name", list_policy_losses())
@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("global_counts", [True, False])
@given(**sizes)
def test_adapter_is_one_core_call(name, token_level, global_counts, seed, batch, length):
    log_probs, old, adv, mask, _ = make_batch(seed, batch, length)
    info = counts(mask, token_level, 3.0) if global_counts else {}
    adapter = CorePolicyLoss(name, token_level_loss=token_level)
    (loss, clip_ratio, ppo_kl, vllm_kl, is_filter), grad = run(adapter, log_probs, old, adv, action_mask=mask, **info)

    mode = "token-mean" if token_level and name != "gspo" else "seq-mean-token-mean"
    key = "batch_num_tokens" if mode == "token-mean" else "global_batch_size"
    gbi = {"dp_size": 2, key: info[key]} if global_counts else None
    lp = log_probs.detach().clone().requires_grad_(True)
    expected, metrics = compute_policy_loss(name, log_prob=lp, old_log_prob=old, advantages=adv, response_mask=mask,
                                            loss_agg_mode=mode, global_batch_info=gbi)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=0, atol=0)
    torch.testing.assert_close(grad, lp.grad, rtol=0, atol=0)
    assert clip_ratio.item() == metrics["pg_clipfrac"]
    # OpenRLHF's ppo_kl: the raw (unclamped) masked mean of old - new; here |log-ratio| < 20, so the core's equals it.
    assert ppo_kl.item() == pytest.approx(metrics["ppo_kl"], rel=1e-12, abs=1e-12)
    assert vllm_kl is None and is_filter is None
    assert adapter.last_metrics == metrics


def openrlhf_and_ours(policy_loss_type, eps, dual_clip, token_level, is_setting=None):
    level, mode, gating, threshold = is_setting or ("off", "mask", "ratio", (0.5, 5.0))
    theirs = PolicyLoss(clip_eps_low=eps[0], clip_eps_high=eps[1], dual_clip=dual_clip, token_level_loss=token_level,
                        policy_loss_type=policy_loss_type, is_correction_level=level, is_correction_mode=mode,
                        is_correction_gating=gating, is_correction_threshold=threshold)
    core_name = "ppo_clip" if policy_loss_type == "ppo" else "gspo"
    ours = build_policy_loss(core_name, template=theirs)
    return theirs, ours


def assert_same(theirs_out, ours_out, grads, check_ppo_kl=True):
    (t_loss, t_clip, t_kl, t_vkl, t_filter), t_grad = theirs_out
    (o_loss, o_clip, o_kl, o_vkl, o_filter), o_grad = ours_out
    torch.testing.assert_close(o_loss, t_loss.to(o_loss.dtype), rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(o_grad, t_grad, rtol=1e-7, atol=1e-12)
    # OpenRLHF computes clip_ratio in float32 (`.float()`), the core in the input dtype.
    torch.testing.assert_close(o_clip.double(), t_clip.double(), rtol=0, atol=1e-6)
    if check_ppo_kl:
        torch.testing.assert_close(o_kl.double(), t_kl.double(), rtol=1e-9, atol=1e-12)
    assert (o_vkl is None) == (t_vkl is None) and (o_filter is None) == (t_filter is None)
    if t_vkl is not None:
        torch.testing.assert_close(o_vkl, t_vkl, rtol=0, atol=0)
        torch.testing.assert_close(o_filter, t_filter, rtol=0, atol=0)


@pytest.mark.parametrize("policy_loss_type,eps,dual_clip", [
    ("ppo", (0.2, 0.28), None),     # asymmetric clip (clip-higher)
    ("ppo", (0.2, 0.2), 3.0),       # dual clip
    ("gspo", (0.2, 0.28), None),
])
@pytest.mark.parametrize("token_level", [True, False])
@pytest.mark.parametrize("global_counts", [True, False])
@given(**sizes)
def test_equals_openrlhf_policy_loss(policy_loss_type, eps, dual_clip, token_level, global_counts, seed, batch,
                                     length):
    log_probs, old, adv, mask, _ = make_batch(seed, batch, length)
    if policy_loss_type == "gspo":
        adv = sequence_advantages(adv)
    info = counts(mask, token_level, 2.5) if global_counts else {}
    theirs, ours = openrlhf_and_ours(policy_loss_type, eps, dual_clip, token_level)
    assert ours.token_level_loss == theirs.token_level_loss  # gspo forces sequence mode in both
    t = run(theirs, log_probs, old, adv, action_mask=mask, **info)
    o = run(ours, log_probs, old, adv, action_mask=mask, **info)
    assert_same(t, o, None)


@pytest.mark.parametrize("is_setting", IS_SETTINGS, ids=lambda s: "-".join(map(str, s[:3])))
@pytest.mark.parametrize("policy_loss_type,dual_clip", [("ppo", None), ("ppo", 2.0), ("gspo", None)])
@given(**sizes)
def test_is_correction_equals_openrlhf(is_setting, policy_loss_type, dual_clip, seed, batch, length):
    log_probs, old, adv, mask, rollout = make_batch(seed, batch, length)
    if policy_loss_type == "gspo":
        adv = sequence_advantages(adv)
    info = counts(mask, True, 2.0)
    theirs, ours = openrlhf_and_ours(policy_loss_type, (0.2, 0.28), dual_clip, True, is_setting)
    t = run(theirs, log_probs, old, adv, action_mask=mask, rollout_log_probs=rollout, **info)
    o = run(ours, log_probs, old, adv, action_mask=mask, rollout_log_probs=rollout, **info)
    # OpenRLHF's gspo measures ppo_kl against old_log_probs though the ratio uses the rollout log-probs; so do we.
    assert_same(t, o, None)


def test_is_correction_actually_filters():
    """Guard against a vacuous IS comparison: the gate drops tokens and changes the loss."""
    log_probs, old, adv, mask, rollout = make_batch(7, 4, 9)
    _, ours = openrlhf_and_ours("ppo", (0.2, 0.2), None, True, IS_SETTINGS[0])
    plain = CorePolicyLoss("ppo_clip")
    loss, _, _, _, filtered = ours(log_probs, old, adv, action_mask=mask, rollout_log_probs=rollout)
    assert 0.0 < filtered.item() < 1.0
    assert not torch.allclose(loss, plain(log_probs, old, adv, action_mask=mask)[0])


def test_maspo_takes_dual_clip_and_refuses_it_where_absent():
    theirs = PolicyLoss(clip_eps_low=0.1, clip_eps_high=0.3, dual_clip=3.0)
    assert build_policy_loss("maspo", {"alpha": 0.5}, template=theirs).config.dual_clip == 3.0
    assert build_policy_loss("cispo", template=PolicyLoss(clip_eps_low=0.1, clip_eps_high=0.3)).config.eps_high == 0.3
    with pytest.raises(ValueError, match=r"--actor.dual_clip 3.0 has no effect with --actor.policy_loss_type sapo"):
        build_policy_loss("sapo", template=theirs)
    with pytest.raises(ValueError, match=r"maspo.dual_clip is set by OpenRLHF's own flag: use --actor.dual_clip"):
        config_from_openrlhf("maspo", {"dual_clip": 2.0}, clip_eps_low=0.2, clip_eps_high=0.2, dual_clip=None)


def test_missing_rollout_log_probs_is_a_clear_error():
    log_probs, old, adv, mask, _ = make_batch(0, 2, 4)
    loss = CorePolicyLoss("maspo", is_correction_level="token")
    with pytest.raises(ValueError, match="needs rollout_log_probs"):
        loss(log_probs, old, adv, action_mask=mask)


def test_nonfinite_policy():
    log_probs, old, adv, mask, _ = make_batch(0, 2, 4)
    adv = adv.clone()
    adv[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        CorePolicyLoss("maspo")(log_probs, old, adv, action_mask=mask)
    loss = CorePolicyLoss("maspo", on_nonfinite="mask")(log_probs, old, adv, action_mask=mask)[0]
    assert torch.isfinite(loss)


def test_bf16_log_probs_give_a_float32_loss():
    log_probs, old, adv, mask, _ = make_batch(3, 3, 5)
    out = CorePolicyLoss("maspo")(log_probs.detach().bfloat16(), old.bfloat16(), adv.bfloat16(), action_mask=mask)
    assert out[0].dtype == torch.float32 and torch.isfinite(out[0])


def test_configs_in_use_match_openrlhf_fields():
    assert isinstance(build_policy_loss("ppo_clip", template=PolicyLoss(0.1, 0.4)).config, PpoClipConfig)
    assert build_policy_loss("gspo", template=PolicyLoss(0.1, 0.4, policy_loss_type="gspo")).config == GspoConfig(
        eps_low=0.1, eps_high=0.4)
