"""Properties of rlplugins.losses.dpo: formulas, analytic gradients, weights, dtypes, validation."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlplugins.losses.dpo import DPO_LOSS_TYPES, DPOConfig, dpo_loss

finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)
betas = st.floats(0.01, 2.0)


def _logps(vals, dtype=torch.float64, grad=False):
    return [torch.tensor(v, dtype=dtype, requires_grad=grad) for v in vals]


def _pairs(n_min=1, n_max=8):
    return st.integers(n_min, n_max).flatmap(
        lambda n: st.tuples(*[st.lists(finite, min_size=n, max_size=n) for _ in range(4)])
    )


def _analytic_dl_dhw(loss_type, beta, eps, x):
    """d loss / d h_w for one pair with x = h_w - h_l (docs/losses.md#dpo-losses); d/dh_l is its negative."""
    d = beta * x
    sig = 1.0 / (1.0 + math.exp(-d)) if d > -700 else 0.0
    if loss_type == "sigmoid":
        # -(1-eps) log s(d) - eps log s(-d)  ->  beta * (-(1-eps)(1 - s) + eps s)
        return beta * (-(1 - eps) * (1 - sig) + eps * sig)
    if loss_type == "robust":
        return beta * (-(1 - eps) * (1 - sig) - eps * sig) / (1 - 2 * eps)
    if loss_type == "hinge":
        return -beta if d < 1 else 0.0
    return 2.0 * (x - 1.0 / (2.0 * beta))  # ipo


@given(pairs=_pairs(), beta=betas, loss_type=st.sampled_from(DPO_LOSS_TYPES), eps=st.floats(0.0, 0.45))
def test_gradient_matches_analytic_form(pairs, beta, loss_type, eps):
    if loss_type in ("ipo", "hinge"):
        eps = 0.0
    pc, pr, rc, rr = _logps(pairs, grad=True)
    out = dpo_loss(pc, pr, rc, rr, DPOConfig(loss_type=loss_type, beta=beta, label_smoothing=eps))
    out.loss.backward()
    n = len(pairs[0])
    for i in range(n):
        x = (pairs[0][i] - pairs[2][i]) - (pairs[1][i] - pairs[3][i])
        if loss_type == "hinge" and abs(beta * x - 1.0) < 1e-9:
            continue  # kink of the hinge: subgradient
        g = _analytic_dl_dhw(loss_type, beta, eps, x) / n
        assert pc.grad[i].item() == pytest.approx(g, rel=1e-6, abs=1e-9)
        assert pr.grad[i].item() == pytest.approx(-g, rel=1e-6, abs=1e-9)
        # the reference enters with the opposite sign of the policy
        assert rc.grad[i].item() == pytest.approx(-g, rel=1e-6, abs=1e-9)


@given(pairs=_pairs(), beta=betas)
def test_sigmoid_is_negative_log_sigmoid_of_scaled_margin(pairs, beta):
    pc, pr, rc, rr = _logps(pairs)
    out = dpo_loss(pc, pr, rc, rr, DPOConfig(beta=beta))
    delta = beta * ((pc - rc) - (pr - rr))
    torch.testing.assert_close(out.losses, -torch.nn.functional.logsigmoid(delta), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.chosen_rewards, beta * (pc - rc))
    torch.testing.assert_close(out.rejected_rewards, beta * (pr - rr))
    torch.testing.assert_close(out.margins, delta)
    assert out.accuracy == pytest.approx(float((delta > 0).double().mean()))
    assert out.metrics["dpo/accuracy"] == out.accuracy


@given(pairs=_pairs(), beta=betas, eps=st.floats(0.0, 0.5))
def test_cdpo_matches_openrlhf_form(pairs, beta, eps):
    # OpenRLHF DPOLoss: logits = (pc - pr) - (rc - rr); -logsig(beta*logits)(1-ls) - logsig(-beta*logits) ls
    pc, pr, rc, rr = _logps(pairs)
    logits = (pc - pr) - (rc - rr)
    ref = -torch.nn.functional.logsigmoid(beta * logits) * (1 - eps) - torch.nn.functional.logsigmoid(
        -beta * logits
    ) * eps
    out = dpo_loss(pc, pr, rc, rr, DPOConfig(beta=beta, label_smoothing=eps))
    torch.testing.assert_close(out.losses, ref, rtol=1e-10, atol=1e-10)


@given(pairs=_pairs(), beta=betas, eps=st.floats(0.0, 0.45))
def test_robust_loss_is_unbiased_under_label_noise(pairs, beta, eps):
    # rDPO: E over a flip with probability eps of the robust loss equals the clean DPO loss.
    pc, pr, rc, rr = _logps(pairs)
    cfg = DPOConfig(loss_type="robust", beta=beta, label_smoothing=eps)
    kept = dpo_loss(pc, pr, rc, rr, cfg).losses
    flipped = dpo_loss(pr, pc, rr, rc, cfg).losses
    clean = dpo_loss(pc, pr, rc, rr, DPOConfig(beta=beta)).losses
    torch.testing.assert_close((1 - eps) * kept + eps * flipped, clean, rtol=1e-8, atol=1e-8)


@given(pairs=_pairs(), beta=betas)
def test_ipo_forms(pairs, beta):
    pc, pr, rc, rr = _logps(pairs)
    x = (pc - rc) - (pr - rr)
    out = dpo_loss(pc, pr, rc, rr, DPOConfig(loss_type="ipo", beta=beta))
    torch.testing.assert_close(out.losses, (x - 1 / (2 * beta)) ** 2)
    lw = torch.arange(1, len(pairs[0]) + 1, dtype=torch.float64)
    ll = lw + 3
    out = dpo_loss(
        pc, pr, rc, rr, DPOConfig(loss_type="ipo", beta=beta, ipo_length_normalize=True),
        chosen_lengths=lw, rejected_lengths=ll,
    )
    torch.testing.assert_close(out.losses, ((pc - rc) / lw - (pr - rr) / ll - 1 / (2 * beta)) ** 2)


def test_ipo_minimum_and_hinge_zero_region():
    z = torch.zeros(1, dtype=torch.float64)
    beta = 0.25
    at_min = dpo_loss(z + 1 / (2 * beta), z, z, z, DPOConfig(loss_type="ipo", beta=beta))
    assert at_min.loss.item() == 0.0
    hinge = dpo_loss(z + 1 / beta + 1e-3, z, z, z, DPOConfig(loss_type="hinge", beta=beta))
    assert hinge.loss.item() == 0.0
    hinge = dpo_loss(z, z, z, z, DPOConfig(loss_type="hinge", beta=beta))
    assert hinge.loss.item() == 1.0


@given(pairs=_pairs(2, 8), data=st.data())
def test_weights(pairs, data):
    n = len(pairs[0])
    w = torch.tensor(data.draw(st.lists(st.floats(0.0, 5.0), min_size=n, max_size=n)), dtype=torch.float64)
    pc, pr, rc, rr = _logps(pairs, grad=True)
    out = dpo_loss(pc, pr, rc, rr, weights=w)
    if w.sum() > 0:
        expected = float((w * out.losses.detach()).sum() / w.sum())
        assert out.loss.item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
        scaled = dpo_loss(pc, pr, rc, rr, weights=3.0 * w)
        assert scaled.loss.item() == pytest.approx(out.loss.item(), rel=1e-10, abs=1e-12)
    else:
        assert out.loss.item() == 0.0
    out.loss.backward()
    assert torch.all(pc.grad[w == 0] == 0)
    ones = dpo_loss(pc, pr, rc, rr, weights=torch.ones(n, dtype=torch.float64))
    assert ones.loss.item() == pytest.approx(dpo_loss(pc, pr, rc, rr).loss.item(), rel=1e-12)


def test_zero_weight_on_nonfinite_pair_gives_finite_loss_and_gradient():
    pc = torch.tensor([0.0, float("nan")], requires_grad=True)
    z = torch.zeros(2)
    out = dpo_loss(pc, z, z, z, weights=torch.tensor([1.0, 0.0]))
    out.loss.backward()
    assert math.isfinite(out.loss.item())
    assert torch.isfinite(pc.grad).all()


def test_empty_batch_gives_zero_loss_connected_to_graph():
    pc = torch.zeros(0, requires_grad=True)
    out = dpo_loss(pc, torch.zeros(0), torch.zeros(0), torch.zeros(0))
    assert out.loss.item() == 0.0
    out.loss.backward()
    assert math.isnan(out.accuracy)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_inputs_computed_in_float32(dtype):
    x = torch.tensor([-3.0, 0.5, 2.0], dtype=dtype)
    out = dpo_loss(x, -x, torch.zeros(3, dtype=dtype), torch.zeros(3, dtype=dtype))
    assert out.losses.dtype == torch.float32
    ref = dpo_loss(*(t.to(torch.float64) for t in (x, -x, torch.zeros(3), torch.zeros(3))))
    torch.testing.assert_close(out.losses.double(), ref.losses, rtol=1e-6, atol=1e-6)
    assert dpo_loss(*(t.double() for t in (x, x, x, x))).losses.dtype == torch.float64


def test_validation_errors_name_the_argument():
    v = torch.zeros(3)
    with pytest.raises(ValueError, match="policy_rejected_logps"):
        dpo_loss(v, torch.zeros(4), v, v)
    with pytest.raises(TypeError, match="ref_chosen_logps"):
        dpo_loss(v, v, torch.zeros(3, dtype=torch.int64), v)
    with pytest.raises(ValueError, match="1-D"):
        dpo_loss(torch.zeros(3, 1), v, v, v)
    with pytest.raises(ValueError, match="weights"):
        dpo_loss(v, v, v, v, weights=torch.tensor([1.0, -1.0, 0.0]))
    with pytest.raises(ValueError, match="ipo_length_normalize"):
        dpo_loss(v, v, v, v, DPOConfig(loss_type="ipo", ipo_length_normalize=True))
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo_loss(v, v, v, v, chosen_lengths=torch.ones(3))
    with pytest.raises(ValueError, match="beta"):
        DPOConfig(beta=0.0)
    with pytest.raises(ValueError, match="loss_type"):
        DPOConfig(loss_type="kto")
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        DPOConfig(label_smoothing=0.6)
