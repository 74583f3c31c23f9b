"""MASPO against the official code's formulas and the paper's properties (arXiv 2602.17550)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlplugins.losses import MaspoConfig, compute_policy_loss, token_policy_loss
from rlplugins.losses.maspo import maspo_gate, maspo_widths

import _strategies as _s  # tests/conftest.py maps the name to the file


def official_maspo_loss_mat(log_prob, old_log_prob, advantages, sigma_base=1.0, alpha=0.3, beta_pos=0.03,
                            beta_neg=0.03, sigma_high=10.0, adv_low=0.1, adv_high=10.0):
    """The official ``ratio_mode == "maspo"`` branch (VenomRose-Juri/MASPO-RL, verl/trainer/ppo/core_algos.py),
    its operations in its order, as an independent oracle."""
    negative_approx_kl = torch.clamp(log_prob - old_log_prob, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    positive_case_maspo = (advantages > 0) & (ratio > 1)
    negative_case_maspo = (advantages < 0) & (ratio < 1)
    old_prob = torch.exp(old_log_prob)
    ratio_detached = ratio.detach()
    sigma_neg = torch.clamp(sigma_base / old_prob**alpha, sigma_base, sigma_high) * torch.clamp(
        1 / (1 - beta_neg * advantages), adv_low, adv_high)
    sigma_pos = torch.clamp(sigma_base / old_prob**alpha, sigma_base, sigma_high) * torch.clamp(
        1 + beta_pos * advantages, adv_low, adv_high)
    weight_neg = torch.exp(-(ratio_detached - 1) ** 2 / 2 / sigma_neg**2)
    weight_pos = torch.exp(-(ratio_detached - 1) ** 2 / 2 / sigma_pos**2)
    ratio = torch.where(negative_case_maspo, weight_neg * ratio, ratio)
    ratio = torch.where(positive_case_maspo, weight_pos * ratio, ratio)
    return -advantages * ratio


def official_token_mean(log_prob, old_log_prob, advantages, mask, **kw):
    loss_mat = official_maspo_loss_mat(log_prob, old_log_prob, advantages, **kw)
    m = mask.to(loss_mat.dtype)
    return (loss_mat * m).sum() / m.sum()


# --- exactness against the official code -------------------------------------------------------------

@given(_s.policy_batch(log_ratio_scale=1.5, dtype=torch.float32))
def test_matches_official_code_value_and_gradient_float32(batch):
    logp, old, adv, mask = batch
    if not mask.any():
        mask[0, 0] = True
    lp1 = logp.clone().requires_grad_()
    lp2 = logp.clone().requires_grad_()
    ours, _ = compute_policy_loss("maspo", log_prob=lp1, old_log_prob=old, advantages=adv, response_mask=mask)
    ref = official_token_mean(lp2, old, adv, mask)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    torch.testing.assert_close(lp1.grad, lp2.grad, rtol=0, atol=0)


@given(_s.policy_batch(log_ratio_scale=2.0), st.floats(0.5, 3.0), st.floats(0.0, 0.9), st.floats(0.0, 0.2))
def test_matches_official_code_with_other_hyperparameters(batch, sigma_base, alpha, beta):
    logp, old, adv, mask = batch
    mask[0, 0] = True
    cfg = MaspoConfig(sigma_base=sigma_base, alpha=alpha, beta_pos=beta, beta_neg=beta, sigma_high=10.0 * sigma_base)
    tok = token_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv, config=cfg)
    ref = official_maspo_loss_mat(logp, old, adv, sigma_base=sigma_base, alpha=alpha, beta_pos=beta, beta_neg=beta,
                                  sigma_high=10.0 * sigma_base)
    torch.testing.assert_close(tok.loss, ref, rtol=0, atol=0)  # bit for bit


# Gate values of docs/maspo.md#gate-values (code defaults, risk factor ~1: A tiny, of the quadrant's sign).
GATE_TABLE = {
    0.9: {1.2: .981, 1.5: .889, 2: .625, 3: .153, 0.8: .981, 0.5: .889, 0.2: .741, 0.0: .625},
    0.5: {1.2: .987, 1.5: .921, 2: .719, 3: .267, 0.8: .987, 0.5: .921, 0.2: .810, 0.0: .719},
    0.1: {1.2: .995, 1.5: .969, 2: .882, 3: .605, 0.8: .995, 0.5: .969, 0.2: .923, 0.0: .882},
    0.01: {1.2: .999, 1.5: .992, 2: .969, 3: .881, 0.8: .999, 0.5: .992, 0.2: .980, 0.0: .969},
}


@pytest.mark.parametrize("pi_old", sorted(GATE_TABLE))
def test_gate_matches_spec_table(pi_old):
    for rho, expected in GATE_TABLE[pi_old].items():
        adv = torch.tensor([1e-9 if rho > 1 else -1e-9], dtype=torch.float64)
        w = maspo_gate(torch.tensor([rho], dtype=torch.float64), torch.tensor([math.log(pi_old)], dtype=torch.float64),
                       adv, MaspoConfig())
        assert abs(float(w) - expected) < 1.5e-3, (pi_old, rho, float(w), expected)


def test_sigma_clamp_binds_where_the_spec_says():
    cfg = MaspoConfig()
    threshold = (cfg.sigma_base / cfg.sigma_high) ** (1 / cfg.alpha)  # ~4.6e-4
    adv = torch.tensor([1e-12, 1e-12], dtype=torch.float64)
    old = torch.log(torch.tensor([threshold * 0.5, threshold * 2.0], dtype=torch.float64))
    sp, _ = maspo_widths(old, adv, cfg)
    assert float(sp[0]) == pytest.approx(10.0, rel=1e-9)
    assert float(sp[1]) < 10.0


def test_widths_stay_finite_at_the_risk_factor_pole():
    # 1 / (1 - beta_neg A) has a pole at A = 1/beta = 33.3 and turns negative beyond; the unused branch must stay finite.
    adv = torch.tensor([100 / 3, 40.0, -40.0, 1e4, -1e4], dtype=torch.float64)
    old = torch.full_like(adv, -1.0)
    for variant in ("official", "paper"):
        sp, sn = maspo_widths(old, adv, MaspoConfig(variant=variant))
        assert torch.isfinite(sp).all() and torch.isfinite(sn).all() and (sp > 0).all() and (sn > 0).all()


# --- gate properties ----------------------------------------------------------------------------------

@given(_s.policy_batch(log_ratio_scale=3.0), st.sampled_from(["official", "paper"]))
def test_gate_in_unit_interval_and_one_outside_quadrants(batch, variant):
    logp, old, adv, _ = batch
    tok = token_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv, config=MaspoConfig(variant=variant))
    w, r = tok.gate, tok.ratio
    assert ((w > 0) & (w <= 1)).all()
    outside = ~(((adv > 0) & (r > 1)) | ((adv < 0) & (r < 1)))
    assert (w[outside] == 1).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gate_bits_equal_the_official_weights_at_edge_inputs(dtype):
    # The gate is computed without a select (the exponent is zeroed outside the quadrants): it must still equal the
    # official code's weights bit for bit in the quadrants and be exactly 1 elsewhere, at r == 1, A == +-0, at the
    # +-20 log-ratio clamp and at the clip bounds.
    g = torch.Generator().manual_seed(3)
    old = -torch.rand(4096, generator=g, dtype=dtype) * 6 - 1e-3
    log_ratio = torch.randn(4096, generator=g, dtype=dtype) * 0.5
    log_ratio[:8] = torch.tensor([0.0, 0.0, 25.0, -25.0, 20.0, -20.0, 1e-9, -1e-9], dtype=dtype)
    adv = torch.randn(4096, generator=g, dtype=dtype)
    adv[:12] = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0, -0.0, 1e30, -1e30], dtype=dtype)
    logp = old + log_ratio
    tok = token_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv)
    r = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    mass = torch.clamp(1.0 / torch.exp(old) ** 0.3, 1.0, 10.0)
    sigma_neg = mass * torch.clamp(1 / (1 - 0.03 * adv), 0.1, 10.0)
    sigma_pos = mass * torch.clamp(1 + 0.03 * adv, 0.1, 10.0)
    w = torch.ones_like(r)
    pos, neg = (adv > 0) & (r > 1), (adv < 0) & (r < 1)
    w = torch.where(neg, torch.exp(-(r - 1) ** 2 / 2 / sigma_neg**2), w)
    w = torch.where(pos, torch.exp(-(r - 1) ** 2 / 2 / sigma_pos**2), w)
    bits = torch.int32 if dtype == torch.float32 else torch.int64
    assert torch.equal(tok.gate.view(bits), w.view(bits))
    assert (tok.gate[~(pos | neg)] == 1).all() and pos.any() and neg.any()


def _gate_1d(rho, logp_old, adv, cfg=MaspoConfig()):
    t = lambda x: torch.as_tensor(x, dtype=torch.float64).reshape(-1)  # noqa: E731
    return maspo_gate(t(rho), t(logp_old), t(adv), cfg)


@given(st.floats(-8, -0.01), st.floats(0.01, 5), st.floats(1e-3, 3.0), st.floats(1e-3, 3.0))
def test_gate_non_increasing_in_distance_from_one(logp_old, adv_abs, d1, d2):
    near, far = sorted([d1, d2])
    # positive quadrant: rho = 1 + d
    assert _gate_1d(1 + far, logp_old, adv_abs) <= _gate_1d(1 + near, logp_old, adv_abs)
    # negative quadrant: rho = 1 - d (d < 1)
    near_n, far_n = min(near, 0.999), min(far, 0.999)
    assert _gate_1d(1 - far_n, logp_old, -adv_abs) <= _gate_1d(1 - near_n, logp_old, -adv_abs)


@given(st.floats(0.05, 2.0), st.floats(0.0, 6.0), st.floats(0.0, 6.0), st.sampled_from([1.0, -1.0]))
def test_gate_mass_adaptive(d, nlp1, nlp2, sign):
    """Lower old probability -> wider gate -> larger w (non-increasing in pi_old), in and beyond the clamp range."""
    hi_p, lo_p = -min(nlp1, nlp2), -max(nlp1, nlp2)  # log pi_old: hi_p >= lo_p
    rho = 1 + d if sign > 0 else max(1 - d, 0.0)
    assert _gate_1d(rho, lo_p, sign * 1.0) >= _gate_1d(rho, hi_p, sign * 1.0)


@given(st.floats(0.05, 2.0), st.floats(-6, 0), st.floats(0.01, 50), st.floats(0.01, 50))
def test_risk_control_asymmetry(d, logp_old, a1, a2):
    small, large = sorted([a1, a2])
    # A > 0: a larger advantage widens the gate.
    assert _gate_1d(1 + d, logp_old, large) >= _gate_1d(1 + d, logp_old, small)
    # A < 0: a larger |A| narrows the gate.
    rho = max(1 - d, 0.0)
    assert _gate_1d(rho, logp_old, -large) <= _gate_1d(rho, logp_old, -small)


@given(_s.policy_batch(log_ratio_scale=1.0))
def test_infinite_sigma_recovers_unclipped_surrogate(batch):
    logp, old, adv, _ = batch
    cfg = MaspoConfig(sigma_base=1e12, sigma_high=1e13)
    tok = token_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv, config=cfg)
    torch.testing.assert_close(tok.loss, -adv * torch.exp(logp - old), rtol=1e-12, atol=1e-12)


def test_paper_variant_drops_the_clamps():
    old = torch.tensor([math.log(1e-5)], dtype=torch.float64)  # below the clamp threshold of 4.6e-4
    adv = torch.tensor([1.0], dtype=torch.float64)
    sp_official, _ = maspo_widths(old, adv, MaspoConfig())
    sp_paper, _ = maspo_widths(old, adv, MaspoConfig(variant="paper"))
    assert float(sp_official) == pytest.approx(10.0 * 1.03)  # sigma_high * k_pos
    assert float(sp_paper) == pytest.approx((1e-5) ** -0.3 * 1.03)
    # Risk factor beyond the official clamp: A = 400 gives 1 + 0.03 * 400 = 13 > adv_high = 10.
    big = torch.tensor([400.0], dtype=torch.float64)
    zero_lp = torch.tensor([0.0], dtype=torch.float64)
    assert float(maspo_widths(zero_lp, big, MaspoConfig(variant="paper"))[0]) == pytest.approx(13.0)
    assert float(maspo_widths(zero_lp, big, MaspoConfig())[0]) == pytest.approx(10.0)


def test_dual_clip_option_bounds_negative_exploded_ratios():
    logp = torch.tensor([[0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    old = torch.tensor([[-5.0, -0.5]], dtype=torch.float64)  # ratios e^5 (exploded) and e^0.5
    adv = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    tok_off = token_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv)
    tok_on = token_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv, config=MaspoConfig(dual_clip=3.0))
    assert float(tok_off.loss[0, 0].detach()) == pytest.approx(math.exp(5))  # unbounded by default, as in the official code
    assert float(tok_on.loss[0, 0].detach()) == pytest.approx(3.0)
    assert float(tok_on.grad_logp[0, 0]) == 0.0 and float(tok_on.grad_logp[0, 1]) != 0.0
    _, metrics = compute_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv, response_mask=mask,
                                     config={"dual_clip": 3.0})
    assert metrics["pg_clipfrac_lower"] == 0.5


def test_bilateral_ablation_gates_both_sides():
    logp = torch.tensor([[-1.0]], dtype=torch.float64)
    old = torch.tensor([[-2.0]], dtype=torch.float64)  # rho = e > 1
    adv = torch.tensor([[-1.0]], dtype=torch.float64)  # against-advantage quadrant
    assert float(token_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv).gate) == 1.0
    assert float(token_policy_loss("maspo", log_prob=logp, old_log_prob=old, advantages=adv,
                                   config=MaspoConfig(bilateral=True)).gate) < 1.0


def test_on_policy_maspo_equals_pg_gradient():
    """With rho == 1 the gate is 1 and MASPO is vanilla policy gradient
    (docs/maspo.md#with-one-update-per-batch-maspo-is-policy-gradient)."""
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(3, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 1, generator=g, dtype=torch.float64).expand(3, 6)
    mask = torch.rand(3, 6, generator=g) > 0.3
    grads = {}
    for name in ("maspo", "pg"):
        lp = logp.clone().requires_grad_()
        loss, _ = compute_policy_loss(name, log_prob=lp, old_log_prob=logp, advantages=adv, response_mask=mask)
        loss.backward()
        grads[name] = lp.grad
    torch.testing.assert_close(grads["maspo"], grads["pg"], rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "field,value,msg",
    [("sigma_base", 0.0, "sigma_base"), ("alpha", -0.1, "alpha"), ("sigma_high", 0.5, "sigma_high"),
     ("adv_low", 0.0, "adv_low"), ("variant", "clamped", "variant"), ("dual_clip", 1.0, "dual_clip"),
     ("beta_neg", float("nan"), "beta_neg")],
)
def test_config_validation_names_the_field(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        MaspoConfig(**{field: value})
