"""The public contract: registry, configs from mappings, bad input, non-finite handling, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from rlplugins.losses import (
    METRIC_KEYS,
    PolicyLossConfig,
    SapoConfig,
    TokenLoss,
    compute_policy_loss,
    get_policy_loss,
    grpo_advantages,
    list_policy_losses,
    register_policy_loss,
)


def _inputs(b=2, t=4, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    lp = -torch.rand(b, t, generator=g, dtype=dtype)
    return dict(log_prob=lp, old_log_prob=lp - 0.1, advantages=torch.ones(b, t, dtype=dtype),
                response_mask=torch.ones(b, t, dtype=torch.bool))


def test_registry_lists_the_family():
    assert {"maspo", "ppo_clip", "clip_higher", "dual_clip", "sapo", "cispo", "gspo", "pg"} <= set(list_policy_losses())
    with pytest.raises(ValueError, match="unknown policy loss 'mapso'.*maspo"):
        get_policy_loss("mapso")


def test_register_a_custom_gate_and_call_it():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class HalfConfig(PolicyLossConfig):
        factor: float = 0.5

    @register_policy_loss("test_half_pg", config_cls=HalfConfig, formula="-factor A logp")
    def half_pg(log_prob, old_log_prob, advantages, config, **_):
        grad = (-config.factor * advantages).detach()
        return TokenLoss(loss=-config.factor * advantages * log_prob, grad_logp=grad,
                         gate=torch.full_like(log_prob, config.factor).detach(), ratio=torch.ones_like(log_prob))

    register_policy_loss("test_half_pg", config_cls=HalfConfig)(half_pg)  # idempotent re-registration
    with pytest.raises(ValueError, match="already registered"):
        register_policy_loss("test_half_pg", config_cls=HalfConfig)(lambda *a, **k: None)
    loss, metrics = compute_policy_loss("test_half_pg", **_inputs(), config={"factor": 0.25})
    pg, _ = compute_policy_loss("pg", **_inputs())
    assert float(loss) == pytest.approx(0.25 * float(pg))
    assert metrics["gate_mean"] == pytest.approx(0.25) and metrics["damp_frac"] == 1.0


def test_config_from_mapping_and_type_errors():
    _, m = compute_policy_loss("maspo", **_inputs(), config={"alpha": 0.5})
    assert set(m) == set(METRIC_KEYS)
    with pytest.raises(ValueError, match="no field 'sigmabase'.*Did you mean 'sigma_base'"):
        compute_policy_loss("maspo", **_inputs(), config={"sigmabase": 2.0})
    with pytest.raises(TypeError, match="expects config of type MaspoConfig, got SapoConfig"):
        compute_policy_loss("maspo", **_inputs(), config=SapoConfig())
    with pytest.raises(TypeError, match="config for policy loss 'maspo'"):
        compute_policy_loss("maspo", **_inputs(), config=3)
    with pytest.raises(ValueError, match=r"MaspoConfig.alpha must be in \[0, inf\), got -1"):
        compute_policy_loss("maspo", **_inputs(), config={"alpha": -1})


@pytest.mark.parametrize(
    "change,exc,msg",
    [
        (dict(log_prob=torch.zeros(2, 4, dtype=torch.long)), TypeError, "log_prob must be a floating-point"),
        (dict(log_prob=[[0.0]]), TypeError, "log_prob must be a torch.Tensor"),
        (dict(log_prob=torch.zeros(8)), ValueError, r"log_prob must be \[batch, response_len\]"),
        (dict(old_log_prob=torch.zeros(2, 1)), ValueError, "old_log_prob must have the shape of log_prob"),
        (dict(advantages=torch.zeros(2, 1)), ValueError, "advantages must have the shape.*no broadcasting"),
        (dict(advantages=torch.zeros(2, 4, dtype=torch.int32)), TypeError, "advantages must be a floating-point"),
        (dict(response_mask=torch.ones(2, 3, dtype=torch.bool)), ValueError, "response_mask must have the shape"),
        (dict(response_mask=torch.full((2, 4), 2.0)), ValueError, "response_mask must contain only 0 and 1"),
        (dict(rollout_is_weights=torch.ones(4, 2)), ValueError, "rollout_is_weights must have the shape"),
        (dict(loss_agg_mode="seq-mean"), ValueError, "loss_agg_mode must be one of"),
        (dict(global_batch_info={"num_tokens": 3}), ValueError, "global_batch_info has unknown keys"),
        (dict(on_nonfinite="ignore"), ValueError, "on_nonfinite"),
    ],
)
def test_bad_input_gets_a_clear_error(change, exc, msg):
    kwargs = _inputs()
    kwargs.update(change)
    with pytest.raises(exc, match=msg):
        compute_policy_loss("maspo", **kwargs)


def test_device_mismatch_is_named():
    kwargs = _inputs()
    kwargs["old_log_prob"] = kwargs["old_log_prob"].to("meta")
    with pytest.raises(ValueError, match="old_log_prob is on meta but log_prob is on cpu"):
        compute_policy_loss("maspo", **kwargs)


def test_float_and_long_masks_are_accepted():
    kwargs = _inputs()
    ref, _ = compute_policy_loss("maspo", **kwargs)
    for dtype in (torch.float32, torch.long):
        kwargs["response_mask"] = torch.ones(2, 4, dtype=dtype)
        loss, _ = compute_policy_loss("maspo", **kwargs)
        assert float(loss) == float(ref)


def test_non_finite_valid_values_raise_with_count_and_index_or_are_masked():
    kwargs = _inputs()
    kwargs["log_prob"] = kwargs["log_prob"].clone()
    kwargs["log_prob"][1, 2] = float("nan")
    kwargs["advantages"] = kwargs["advantages"].clone()
    kwargs["advantages"][1, 3] = float("inf")
    with pytest.raises(ValueError, match=r"2 valid position\(s\).*first at index \(1, 2\).*on_nonfinite='mask'"):
        compute_policy_loss("maspo", **kwargs)
    lp = kwargs["log_prob"].requires_grad_()
    loss, metrics = compute_policy_loss("maspo", **kwargs, on_nonfinite="mask")
    loss.backward()
    assert math.isfinite(float(loss.detach())) and metrics["nonfinite_tokens"] == 2.0 and metrics["valid_tokens"] == 6.0
    assert torch.isfinite(lp.grad).all() and lp.grad[1, 2] == 0 and lp.grad[1, 3] == 0
    # Non-finite values at masked positions are fine.
    kwargs["response_mask"] = kwargs["response_mask"].clone()
    kwargs["response_mask"][1, 2:] = False
    compute_policy_loss("maspo", **kwargs)


def test_metrics_values_on_a_hand_made_batch():
    # Four tokens: (A>0, r=e^0.5), (A>0, r=e^-0.5), (A<0, r=e^-0.5), (A<0, r=e^0.5).
    lp = torch.tensor([[-1.0, -2.0, -2.0, -1.0]], dtype=torch.float64)
    old = torch.tensor([[-1.5, -1.5, -1.5, -1.5]], dtype=torch.float64)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    _, m = compute_policy_loss("maspo", log_prob=lp, old_log_prob=old, advantages=adv, response_mask=mask)
    assert m["quad_pos_frac"] == 0.25 and m["quad_neg_frac"] == 0.25
    assert m["ppo_kl"] == pytest.approx(0.0)
    assert m["ratio_max"] == pytest.approx(math.exp(0.5))
    assert m["gate_min"] < 1.0 and m["gate_mean"] < 1.0 and m["damp_frac"] == 0.0
    _, m = compute_policy_loss("ppo_clip", log_prob=lp, old_log_prob=old, advantages=adv, response_mask=mask)
    assert m["pg_clipfrac"] == 0.5 and m["damp_frac"] == 0.5 and m["gate_min"] == 0.0


def test_grpo_advantages_match_the_spec_numbers():
    for k, pos, neg in ((1, 2.475, -0.354), (4, 0.935, -0.935), (7, 0.354, -2.475)):
        r = torch.tensor([1.0] * k + [0.0] * (8 - k), dtype=torch.float64)
        a = grpo_advantages(r, 8)
        assert float(a[0]) == pytest.approx(pos, abs=1e-3) and float(a[-1]) == pytest.approx(neg, abs=1e-3)
    assert (grpo_advantages(torch.ones(16), 8) == 0).all()
    assert grpo_advantages(torch.tensor([0.3, 0.7], dtype=torch.float64), 1).tolist() == [0.3 / (1 + 1e-6), 0.7 / (1 + 1e-6)]
    torch.testing.assert_close(grpo_advantages(torch.arange(6.0).reshape(2, 3), 3),
                               grpo_advantages(torch.arange(6.0), 3).reshape(2, 3))
    with pytest.raises(ValueError, match="multiple of group_size"):
        grpo_advantages(torch.ones(7), 8)


def test_cli_lists_losses(capsys):
    from rlplugins.cli import main

    assert main(["losses", "--name", "maspo"]) == 0
    out = capsys.readouterr().out
    assert "MaspoConfig(sigma_base=1.0, alpha=0.3" in out
