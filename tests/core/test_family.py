"""Properties every policy loss of the family must satisfy (masking, gradients, limits, numerics, dtypes)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplugins.losses import AGG_MODES, PpoClipConfig, compute_policy_loss, make_config, token_policy_loss

import _strategies as _s  # tests/conftest.py maps the name to the file
ALL, ELEMENTWISE = _s.ALL_LOSSES, _s.ELEMENTWISE_LOSSES

# Losses whose gate g satisfies g(1) = 1 give the plain policy gradient -A at r = 1.
GATE_ONE_AT_RATIO_ONE = ALL


def _loss_and_grad(name, logp, old, adv, mask, **kw):
    lp = logp.clone().requires_grad_()
    loss, metrics = compute_policy_loss(name, log_prob=lp, old_log_prob=old, advantages=adv, response_mask=mask, **kw)
    (grad,) = torch.autograd.grad(loss, lp)
    return loss.detach(), grad, metrics


@pytest.mark.parametrize("name", ALL)
@given(batch=_s.policy_batch(), junk=st.sampled_from([float("nan"), float("inf"), -1e30, 123.0]),
       mode=st.sampled_from(AGG_MODES))
def test_masked_positions_change_nothing_and_get_zero_gradient(name, batch, junk, mode):
    logp, old, adv, mask = batch
    loss1, grad1, _ = _loss_and_grad(name, logp, old, adv, mask, loss_agg_mode=mode)
    logp2, old2, adv2 = logp.clone(), old.clone(), adv.clone()
    logp2[~mask], old2[~mask], adv2[~mask] = junk, -junk, junk
    loss2, grad2, _ = _loss_and_grad(name, logp2, old2, adv2, mask, loss_agg_mode=mode)
    torch.testing.assert_close(loss1, loss2, rtol=0, atol=0)
    assert (grad2[~mask] == 0).all()
    torch.testing.assert_close(grad1, grad2, rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("mode", AGG_MODES)
def test_all_masked_batch_gives_zero_loss_and_zero_gradient(name, mode):
    logp = torch.full((2, 3), float("nan"), dtype=torch.float64)
    mask = torch.zeros(2, 3, dtype=torch.bool)
    loss, grad, metrics = _loss_and_grad(name, logp, logp, logp, mask, loss_agg_mode=mode)
    assert float(loss) == 0.0 and (grad == 0).all()
    assert all(v == v for v in metrics.values())  # no NaN metric
    assert metrics["valid_tokens"] == 0.0


@pytest.mark.parametrize("name", GATE_ONE_AT_RATIO_ONE)
@given(batch=_s.policy_batch())
def test_at_ratio_one_gradient_is_plain_policy_gradient(name, batch):
    logp, _, adv, mask = batch
    _, grad, _ = _loss_and_grad(name, logp, logp, adv, mask, loss_agg_mode="token-sum")
    expected = torch.where(mask, -adv, torch.zeros_like(adv))
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
@given(batch=_s.policy_batch(log_ratio_scale=2.0))
def test_autograd_gradient_equals_analytic(name, batch):
    logp, old, adv, mask = batch
    lp = logp.clone().requires_grad_()
    tok = token_policy_loss(name, log_prob=lp, old_log_prob=old, advantages=adv, response_mask=mask)
    (grad,) = torch.autograd.grad(tok.loss.sum(), lp)
    torch.testing.assert_close(grad, tok.grad_logp, rtol=1e-10, atol=1e-12)


def _gradcheck_case(name):
    """Inputs away from kinks (clip bounds, r = 1). MASPO, CISPO and GSPO stop the gradient through their
    gate / IS weight / sequence ratio by design, so their autograd gradient is the derivative of the loss only
    where those detached factors are locally constant: the against-advantage quadrants for MASPO (w = 1),
    clipped ratios for CISPO, one valid token per sequence for GSPO. Elsewhere the analytic-gradient test pins them."""
    adv = torch.tensor([[1.3], [-0.7], [2.0]], dtype=torch.float64).expand(3, 4)
    offsets = torch.tensor([0.5, -0.6, 0.05, -0.07], dtype=torch.float64).expand(3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    if name == "maspo":
        offsets = -torch.sign(adv) * offsets.abs()
    elif name == "cispo":
        offsets = torch.tensor([0.5, -0.6, 0.3, -0.4], dtype=torch.float64).expand(3, 4)
    elif name == "gspo":
        mask = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    old = -1.0 - torch.rand(3, 4, generator=g, dtype=torch.float64) * 3
    return (old + offsets).requires_grad_(), old, adv, mask


@pytest.mark.parametrize("name", ALL)
def test_float64_gradcheck(name):
    logp, old, adv, mask = _gradcheck_case(name)
    config = {"eps_low": 0.2, "eps_high": 0.2} if name == "gspo" else None

    def f(x):
        return compute_policy_loss(name, log_prob=x, old_log_prob=old, advantages=adv, response_mask=mask,
                                   loss_agg_mode="seq-mean-token-mean", config=config)[0]

    assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-7)


@given(batch=_s.policy_batch(log_ratio_scale=1.0))
def test_ppo_clip_with_infinite_eps_is_unclipped_surrogate(batch):
    logp, old, adv, _ = batch
    tok = token_policy_loss("ppo_clip", log_prob=logp, old_log_prob=old, advantages=adv,
                            config=PpoClipConfig(eps_low=1.0, eps_high=1e12))
    torch.testing.assert_close(tok.loss, -adv * torch.exp(logp - old), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ALL)
@given(seed=st.integers(0, 2**31 - 1), mode=st.sampled_from(AGG_MODES))
@settings(max_examples=25)
def test_outputs_finite_under_extreme_inputs(name, seed, mode):
    g = torch.Generator().manual_seed(seed)
    b, t = 3, 5
    logp = -torch.rand(b, t, generator=g) * 60.0  # log-probs down to -60
    old = logp - (torch.rand(b, t, generator=g) * 100.0 - 50.0)  # log-ratios in [-50, 50]
    old = torch.clamp(old, max=0.0)
    adv = ((torch.rand(b, 1, generator=g) * 2 - 1) * 1e4).expand(b, t)  # |A| up to 1e4
    mask = torch.rand(b, t, generator=g) > 0.2
    for variant in (("official", "paper") if name == "maspo" else (None,)):
        cfg = {"variant": variant} if variant else None
        loss, grad, metrics = _loss_and_grad(name, logp, old, adv, mask, loss_agg_mode=mode, config=cfg)
        assert torch.isfinite(loss) and torch.isfinite(grad).all()
        assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


# Tolerances for low-precision inputs against float64 (the loss computes in float32 whatever the input dtype;
# the error comes from rounding log-probs to the input dtype: ~2^-8 relative for bf16, 2^-11 for fp16).
LOW_PRECISION_TOL = {torch.float16: dict(rtol=2e-2, atol=2e-2), torch.bfloat16: dict(rtol=8e-2, atol=8e-2)}


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@given(batch=_s.policy_batch(log_ratio_scale=0.3, adv_scale=1.0))
@settings(max_examples=25)
def test_low_precision_inputs_agree_with_float64(name, dtype, batch):
    logp, old, adv, mask = batch
    # Quantise the inputs once so both paths see the same values; the test checks the computation, not the rounding.
    logp_q, old_q, adv_q = logp.to(dtype), old.to(dtype), adv.to(dtype)
    loss_lo, grad_lo, _ = _loss_and_grad(name, logp_q, old_q, adv_q, mask)
    loss_hi, grad_hi, _ = _loss_and_grad(name, logp_q.double(), old_q.double(), adv_q.double(), mask)
    assert loss_lo.dtype == torch.float32 and grad_lo.dtype == dtype
    torch.testing.assert_close(loss_lo.double(), loss_hi, **LOW_PRECISION_TOL[dtype])
    torch.testing.assert_close(grad_lo.double(), grad_hi, **LOW_PRECISION_TOL[dtype])


@pytest.mark.parametrize("name", ALL)
@given(a=_s.policy_batch(max_t=5), b=_s.policy_batch(max_t=5))
def test_token_sum_is_additive_over_batch_concatenation(name, a, b):
    t = min(a[0].shape[1], b[0].shape[1])
    a = [x[:, :t] for x in a]
    b = [x[:, :t] for x in b]
    la, *_ = _loss_and_grad(name, *a, loss_agg_mode="token-sum")
    lb, *_ = _loss_and_grad(name, *b, loss_agg_mode="token-sum")
    cat = [torch.cat([x, y]) for x, y in zip(a, b)]
    lab, *_ = _loss_and_grad(name, *cat, loss_agg_mode="token-sum")
    torch.testing.assert_close(lab, la + lb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ELEMENTWISE)
@given(batch=_s.policy_batch(), data=st.data())
def test_elementwise_token_loss_depends_on_its_own_token_only(name, batch, data):
    """What ``elementwise=True`` promises (and the kernels rely on): moving one token's log-prob changes no other
    token's loss or gradient, bit for bit."""
    logp, old, adv, mask = batch
    i = data.draw(st.integers(0, logp.shape[0] - 1))
    j = data.draw(st.integers(0, logp.shape[1] - 1))
    moved = logp.clone()
    moved[i, j] -= 0.7
    base = token_policy_loss(name, log_prob=logp, old_log_prob=old, advantages=adv, response_mask=mask)
    after = token_policy_loss(name, log_prob=moved, old_log_prob=old, advantages=adv, response_mask=mask)
    others = torch.ones_like(mask)
    others[i, j] = False
    torch.testing.assert_close(after.loss[others], base.loss[others], rtol=0, atol=0)
    torch.testing.assert_close(after.grad_logp[others], base.grad_logp[others], rtol=0, atol=0)


@pytest.mark.parametrize("name", ALL)
@given(batch=_s.policy_batch())
def test_rollout_is_weights_multiply_the_token_loss(name, batch):
    logp, old, adv, mask = batch
    w = torch.rand_like(logp) * 2
    tok = token_policy_loss(name, log_prob=logp, old_log_prob=torch.where(mask, old, 0 * old),
                            advantages=torch.where(mask, adv, 0 * adv), response_mask=mask)
    loss, _ = compute_policy_loss(name, log_prob=logp, old_log_prob=old, advantages=adv, response_mask=mask,
                                  loss_agg_mode="token-sum", rollout_is_weights=w)
    expected = torch.where(mask, tok.loss * w, torch.zeros_like(w)).sum()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)


def test_rollout_is_weights_receive_no_gradient():
    logp = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    w = torch.ones(1, 2, dtype=torch.float64, requires_grad=True)
    loss, _ = compute_policy_loss("maspo", log_prob=logp, old_log_prob=logp.detach() - 0.1,
                                  advantages=torch.ones(1, 2, dtype=torch.float64),
                                  response_mask=torch.ones(1, 2, dtype=torch.bool), rollout_is_weights=w)
    loss.backward()
    assert w.grad is None and logp.grad is not None


def test_sapo_value_and_weight_at_known_points():
    # r = 1: loss -2A/tau (sigmoid(0) = 1/2), gradient weight 4 * 1/4 = 1.
    logp = torch.tensor([[-1.0, -1.0]], dtype=torch.float64)
    adv = torch.tensor([[2.0, -2.0]], dtype=torch.float64)
    tok = token_policy_loss("sapo", log_prob=logp, old_log_prob=logp, advantages=adv)
    # A = 2, tau_pos = 1: -(4/1)(1/2)(2) = -4;  A = -2, tau_neg = 1.05: -(4/1.05)(1/2)(-2) = 4/1.05.
    torch.testing.assert_close(tok.loss, torch.tensor([[-4.0, 4.0 / 1.05]], dtype=torch.float64))
    torch.testing.assert_close(tok.gate, torch.ones(1, 2, dtype=torch.float64))


def test_cispo_keeps_gradient_of_clipped_tokens():
    logp = torch.tensor([[0.0]], dtype=torch.float64)
    old = torch.tensor([[-1.0]], dtype=torch.float64)  # r = e > 1.2: PPO would zero it
    adv = torch.tensor([[1.0]], dtype=torch.float64)
    tok = token_policy_loss("cispo", log_prob=logp, old_log_prob=old, advantages=adv)
    assert float(tok.grad_logp) == pytest.approx(-1.2)
    ppo = token_policy_loss("ppo_clip", log_prob=logp, old_log_prob=old, advantages=adv)
    assert float(ppo.grad_logp) == 0.0


def test_gspo_uses_the_sequence_ratio():
    logp = torch.tensor([[-1.0, -2.0, -9.0]], dtype=torch.float64)
    old = torch.tensor([[-1.2, -1.9, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, True, False]])
    adv = torch.ones(1, 3, dtype=torch.float64)
    tok = token_policy_loss("gspo", log_prob=logp, old_log_prob=old, advantages=adv, response_mask=mask,
                            config={"eps_low": 1.0, "eps_high": 100.0})
    s = torch.exp(torch.tensor((0.2 - 0.1) / 2, dtype=torch.float64))
    torch.testing.assert_close(tok.ratio[0, :2], torch.stack([s, s]))
    with pytest.raises(ValueError, match="response_mask"):
        token_policy_loss("gspo", log_prob=logp, old_log_prob=old, advantages=adv)


def test_clip_presets_have_their_published_defaults():
    assert make_config("clip_higher").eps_high == 0.28
    assert make_config("dual_clip").dual_clip == 3.0
    assert make_config("ppo_clip").dual_clip is None
