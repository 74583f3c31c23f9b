"""The Triton gates (kernels/gates.py) against their specification, the core's token_policy_loss, elementwise.

Both sides run in float32 on the same inputs, so they agree to a few float32 ulps: tolerance 2e-5 relative
+ 1e-6 absolute on the loss and on d loss / d logp. Near a kink of the gradient (clip bound, dual-clip cap,
+-20 log-ratio clamp) the two sides may round onto different sides, so gradients are compared only where the
float64 reference gradient is continuous within +-1e-4 in logp (loss values, continuous, everywhere).
"""

from __future__ import annotations

import math

import pytest
import torch
import triton
import triton.language as tl
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplugins.kernels import gated_token_loss, get_gate, list_gates, register_gate
from rlplugins.kernels import gates as kgates
from rlplugins.losses import (
    CispoConfig,
    ClipHigherConfig,
    DualClipConfig,
    MaspoConfig,
    PgConfig,
    PpoClipConfig,
    SapoConfig,
    UnclippedConfig,
    get_policy_loss,
    list_policy_losses,
    token_policy_loss,
)

import _kernel_helpers as H  # tests/conftest.py maps the name to the file

# Triton on CPU tensors (see conftest.py); the tests marked cuda are governed by that mark instead.
pytestmark = pytest.mark.interpreter

_CLIP = dict(eps_low=st.sampled_from([0.0, 0.2, 0.5]), eps_high=st.sampled_from([0.2, 0.28, 1.0]),
             dual_clip=st.sampled_from([None, 1.5, 3.0]))
CONFIGS = {
    "maspo": st.builds(
        MaspoConfig,
        sigma_base=st.sampled_from([0.5, 1.0, 2.0]),
        alpha=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
        beta_pos=st.sampled_from([0.0, 0.03, 0.1]),
        beta_neg=st.sampled_from([0.0, 0.03, 0.1]),
        sigma_high=st.sampled_from([10.0, 50.0]),
        variant=st.sampled_from(["official", "paper"]),
        dual_clip=st.sampled_from([None, 3.0]),
        bilateral=st.booleans(),
    ),
    "ppo_clip": st.builds(PpoClipConfig, **_CLIP),
    "clip_higher": st.builds(ClipHigherConfig, **_CLIP),
    "dual_clip": st.builds(DualClipConfig, **_CLIP),
    "sapo": st.builds(SapoConfig, tau_pos=st.sampled_from([0.5, 1.0, 2.0]), tau_neg=st.sampled_from([0.5, 1.05, 3.0])),
    "cispo": st.builds(CispoConfig, eps_low=st.sampled_from([0.2, 1.0]), eps_high=st.sampled_from([0.2, 4.0])),
    "pg": st.just(PgConfig()),
    "unclipped": st.just(UnclippedConfig()),
}


@st.composite
def token_inputs(draw, max_n: int = 200):
    """logp <= 0, old log-probs down to -120 (pi_old underflows), log-ratios up to +-60 (beyond the +-20
    clamp and the paper's +-50 guard), advantages up to 60 (past MASPO's 1/beta pole), exact zeros and r = 1."""
    n = draw(st.integers(1, max_n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    old_scale = draw(st.sampled_from([3.0, 30.0, 120.0]))
    ratio_scale = draw(st.sampled_from([0.0, 0.05, 0.5, 5.0, 30.0]))
    adv_scale = draw(st.sampled_from([0.0, 1.0, 3.0, 60.0]))
    old = -torch.rand(n, generator=g) * old_scale
    logp = torch.clamp(old + torch.randn(n, generator=g) * ratio_scale, max=0.0)
    adv = torch.randn(n, generator=g) * adv_scale
    adv[torch.rand(n, generator=g) < 0.1] = 0.0
    same = torch.rand(n, generator=g) < 0.1
    logp[same] = old[same]
    return logp, old, adv


def _close(got, ref, what, where=None, scale=None):
    """|got - ref| <= 2e-5 |ref| + 1e-6 (1 + scale): ``scale`` = |A| max(r, 1) is the size of the ungated term,
    against which float32 cancellations inside a gate (SAPO's 1 - s as s -> 1) are measured."""
    got64, ref64 = got.detach().double(), ref.detach().double()
    scale = torch.zeros_like(ref64) if scale is None else scale.double()
    if where is not None:
        got64, ref64, scale = got64[where], ref64[where], scale[where]
    err = (got64 - ref64).abs()
    bound = 2e-5 * ref64.abs() + 1e-6 * (1 + scale)
    assert bool((err <= bound).all()), f"{what}: max excess {float((err - bound).max()):.3g}"


# The official MASPO formula divides by pi_old**alpha (0 once it underflows) and by 1 - beta_neg A (0 at the pole
# A = 1/beta_neg): IEEE inf, clamped right after, exactly as in the core. numpy (the interpreter) warns about it.
@pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("name", list_gates())
@settings(max_examples=H.examples(25))
@given(data=st.data())
def test_gate_matches_core_token_policy_loss(name, data):
    # a gate registered later without an entry in CONFIGS is still checked, at its config's defaults
    config = data.draw(CONFIGS.get(name, st.just(get_policy_loss(name).config_cls())))
    logp, old, adv = data.draw(token_inputs())
    lp = logp.clone().requires_grad_()
    loss, grad = gated_token_loss(lp, old, adv, name, config)
    loss.backward(torch.ones_like(loss))
    ref_lp = logp.clone().requires_grad_()
    ref = token_policy_loss(name, log_prob=ref_lp, old_log_prob=old, advantages=adv, config=config)
    ref.loss.backward(torch.ones_like(ref.loss))
    assert bool(torch.isfinite(loss).all() and torch.isfinite(grad).all())
    scale = adv.abs() * torch.clamp(ref.ratio, min=1.0)
    _close(loss, ref.loss, f"{name} loss", scale=scale)
    stable = H.stable_grad_rows(name, config, logp.double(), old.double(), adv.double())
    _close(grad, ref.grad_logp, f"{name} grad_logp", stable, scale)
    # The autograd gradient of the kernel's loss is exactly the gradient it returned.
    assert torch.equal(lp.grad, grad)
    # ... and the core's own autograd agrees with its analytic gradient, so the comparison is to the spec.
    _close(ref_lp.grad, ref.grad_logp, f"{name} core autograd", stable, scale)


@pytest.mark.parametrize("name", list_gates())
def test_masked_positions_get_exactly_zero(name):
    config = get_policy_loss(name).config_cls()
    logp = torch.tensor([-0.5, float("nan"), -1.0, -2.0])
    old = torch.tensor([-0.4, -1.0, float("inf"), -2.5])
    adv = torch.tensor([1.0, 2.0, -1.0, float("nan")])
    mask = torch.tensor([True, False, False, False])
    lp = logp.clone().requires_grad_()
    loss, grad = gated_token_loss(lp, old, adv, name, config, response_mask=mask)
    loss.sum().backward()
    assert bool(torch.isfinite(loss).all()) and bool(torch.isfinite(lp.grad).all())
    assert bool((loss[~mask] == 0).all()) and bool((grad[~mask] == 0).all()) and bool((lp.grad[~mask] == 0).all())
    ref = token_policy_loss(name, log_prob=logp[:1], old_log_prob=old[:1], advantages=adv[:1], config=config)
    _close(loss[:1], ref.loss, "valid token")


def test_maspo_gate_reproduces_the_spec_table():
    """docs/maspo.md#gate-values: w at pi_old = 0.5 (sigma = 1.231 with the risk factor ~1) for A > 0, rho = 1.5 / 3."""
    old = torch.full((2,), math.log(0.5))
    logp = old + torch.log(torch.tensor([1.5, 3.0]))
    adv = torch.full((2,), 1e-6)  # risk factor 1
    loss, grad = gated_token_loss(logp, old, adv, "maspo", MaspoConfig())
    w = grad / (-adv * torch.tensor([1.5, 3.0]))
    torch.testing.assert_close(w, torch.tensor([0.921, 0.267]), rtol=0, atol=1.5e-3)


def test_constants_equal_the_core():
    from rlplugins.losses import maspo as core_maspo
    from rlplugins.losses import token_loss as core_token_loss

    assert kgates.LOG_RATIO_CLAMP == core_token_loss.LOG_RATIO_CLAMP
    assert kgates.MASPO_PAPER_LOG_RATIO_GUARD == core_maspo.PAPER_LOG_RATIO_GUARD
    assert kgates.MASPO_PAPER_LOG_SIGMA_GUARD == core_maspo.PAPER_LOG_SIGMA_GUARD


def test_every_gate_implements_a_registered_core_loss_with_its_fields():
    core = set(list_policy_losses())
    for name in list_gates():
        assert name in core, f"gate {name!r} has no core loss (the core is the specification)"
        spec = get_policy_loss(name)
        assert spec.elementwise, f"gate {name!r} implements a non-elementwise loss"
        fields = set(spec.config_cls.field_names())
        missing = set(get_gate(name).fields) - fields
        assert not missing, f"gate {name!r} reads {missing}, not fields of {spec.config_cls.__name__}"
        # Default configs pack without error; a bare mapping (which this layer cannot range-check) is refused
        # for gates with parameters, with the call that builds the validated config.
        cfg = spec.config_cls()
        assert get_gate(name).params(cfg) == get_gate(name).params(spec.make_config(cfg.to_dict()))
        if get_gate(name).fields:
            with pytest.raises(TypeError, match=r"make_config"):
                get_gate(name).params(cfg.to_dict())


def test_config_errors_are_clear():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="no Triton gate for loss 'gspo'"):
        gated_token_loss(x, x, x, "gspo", None)
    with pytest.raises(ValueError, match="needs a config with fields tau_pos, tau_neg"):
        gated_token_loss(x, x, x, "sapo", None)
    with pytest.raises(TypeError, match=r"needs a validated config object.*make_config\('sapo'"):
        gated_token_loss(x, x, x, "sapo", {"tau_pos": 1.0})
    with pytest.raises(ValueError, match="no broadcasting"):
        gated_token_loss(x, x[:2], x, "pg")
    with pytest.raises(TypeError, match="advantages must be a floating-point tensor"):
        gated_token_loss(x, x, x.long(), "pg")
    with pytest.raises(TypeError, match="must be a @triton.jit function"):
        register_gate("bogus", lambda *a: a)


@triton.jit
def _scaled_pg_gate(logp, old, adv, SCALE, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11):
    return -SCALE * adv * logp, -SCALE * adv + 0.0 * tl.abs(logp)


def test_a_new_gate_needs_only_a_device_function():
    """The documented extension path: one @triton.jit function + packer, no kernel copied."""
    try:
        register_gate("_test_scaled_pg", _scaled_pg_gate, fields=("scale",), pack=lambda v: (v["scale"],))
        logp, adv = -torch.rand(5), torch.randn(5)
        loss, grad = gated_token_loss(logp, logp, adv, "_test_scaled_pg", {"scale": 2.5})
        torch.testing.assert_close(loss, -2.5 * adv * logp)
        torch.testing.assert_close(grad, -2.5 * adv)
    finally:
        kgates._GATES.pop("_test_scaled_pg", None)
