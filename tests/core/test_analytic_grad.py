"""compute_policy_loss's one-node backward (built-ins evaluated without a graph, ``TokenLoss.vjp``) against autograd
through the same formulas, bit for bit; ``agg_grad_scale`` against autograd of ``agg_loss``; the fused metric pass
against the metric definitions written out plainly; custom losses keep autograd."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import pathlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlplugins.losses import AGG_MODES, METRIC_KEYS, agg_loss, compute_policy_loss
from rlplugins.losses.aggregation import agg_grad_scale
from rlplugins.losses.config import UnclippedConfig
from rlplugins.losses.registry import _REGISTRY, get_policy_loss, register_policy_loss
from rlplugins.losses.token_loss import LOG_RATIO_CLAMP, TokenLoss

_spec = importlib.util.spec_from_file_location("_strategies", pathlib.Path(__file__).with_name("_strategies.py"))
_s = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_s)

CONFIGS = {"maspo": [None, {"dual_clip": 3.0}, {"variant": "paper"}, {"bilateral": True}],
           "ppo_clip": [None, {"dual_clip": 2.0}], "gspo": [None, {"eps_low": 0.2, "eps_high": 0.2}]}


def _run(name, logp, old, adv, mask, upstream=1.0, analytic=True, **kw):
    spec = get_policy_loss(name)
    _REGISTRY[name] = dataclasses.replace(spec, analytic_grad=analytic)
    try:
        lp = logp.clone().requires_grad_()
        loss, metrics = compute_policy_loss(name, log_prob=lp, old_log_prob=old, advantages=adv, response_mask=mask,
                                            **kw)
        (loss * upstream).backward()
    finally:
        _REGISTRY[name] = spec
    return loss.detach(), lp.grad, metrics


def test_every_builtin_has_the_analytic_backward():
    for name in _s.ALL_LOSSES:
        assert get_policy_loss(name).analytic_grad, name


@pytest.mark.parametrize("name", _s.ALL_LOSSES)
@given(batch=_s.policy_batch(log_ratio_scale=1.5), mode=st.sampled_from(AGG_MODES), weighted=st.booleans(),
       counts=st.booleans(), upstream=st.sampled_from([1.0, 0.7, -3.0]), f32=st.booleans(), junk=st.booleans(),
       pick=st.integers(0, 3))
def test_analytic_backward_equals_autograd_bit_for_bit(name, batch, mode, weighted, counts, upstream, f32, junk, pick):
    logp, old, adv, mask = (t.float() if f32 and t.is_floating_point() else t for t in batch)
    configs = CONFIGS.get(name, [None])
    config = configs[pick % len(configs)]
    weights = torch.rand_like(logp) + 0.5 if weighted else None
    if junk and not mask.all():
        old = old.clone()
        old[~mask] = math.nan  # the exact (masking) path
    gbi = None
    if counts:
        gbi = {"dp_size": 2, "batch_num_tokens": int(mask.sum()) + 3, "global_batch_size": logp.shape[0] + 1,
               "loss_scale_factor": 5.0}
    kw = dict(loss_agg_mode=mode, rollout_is_weights=weights, global_batch_info=gbi, config=config,
              upstream=upstream)
    fast = _run(name, logp, old, adv, mask, analytic=True, **kw)
    ref = _run(name, logp, old, adv, mask, analytic=False, **kw)
    assert torch.equal(fast[0], ref[0])
    assert torch.equal(fast[1], ref[1])
    assert (fast[1][~mask] == 0).all()
    assert fast[2] == ref[2]


@pytest.mark.parametrize("name", ["maspo", "sapo", "cispo", "ppo_clip"])
def test_analytic_backward_gradcheck_float64(name):
    """gradcheck where the detached factors are locally constant (see test_family's gradcheck cases)."""
    adv = torch.tensor([[1.3], [-0.7], [2.0]], dtype=torch.float64).expand(3, 4)
    offsets = torch.tensor([0.5, -0.6, 0.05, -0.07], dtype=torch.float64).expand(3, 4)
    if name == "maspo":
        offsets = -torch.sign(adv) * offsets.abs()
    elif name == "cispo":  # clipped ratios: the detached IS weight is locally constant
        offsets = torch.tensor([0.5, -0.6, 0.3, -0.4], dtype=torch.float64).expand(3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    old = -1.0 - torch.rand(3, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    logp = (old + offsets).requires_grad_()
    for mode in AGG_MODES:
        def f(x):
            return compute_policy_loss(name, log_prob=x, old_log_prob=old, advantages=adv, response_mask=mask,
                                       loss_agg_mode=mode, global_batch_info={"dp_size": 2, "batch_num_tokens": 11,
                                                                              "global_batch_size": 4})[0]
        assert torch.autograd.gradcheck(f, (logp,), eps=1e-6, atol=1e-7), mode


def test_second_derivative_raises_instead_of_being_silently_wrong():
    logp = torch.tensor([[-0.5, -1.0]], dtype=torch.float64, requires_grad=True)
    loss, _ = compute_policy_loss("maspo", log_prob=logp, old_log_prob=logp.detach() + 0.1,
                                  advantages=torch.ones(1, 2, dtype=torch.float64),
                                  response_mask=torch.ones(1, 2, dtype=torch.bool))
    (grad,) = torch.autograd.grad(loss, logp, create_graph=True)
    with pytest.raises(RuntimeError):
        grad.sum().backward()


@given(batch=_s.policy_batch(), mode=st.sampled_from(AGG_MODES), counts=st.booleans(), upstream=st.floats(-4, 4))
def test_agg_grad_scale_equals_autograd_of_agg_loss(batch, mode, counts, upstream):
    _, _, _, mask = batch
    loss_mat = torch.randn(mask.shape, dtype=torch.float64, requires_grad=True)
    gbi = {"dp_size": 3, "batch_num_tokens": int(mask.sum()) + 1, "global_batch_size": mask.shape[0] + 2,
           "loss_scale_factor": 7.0} if counts else {}
    up = torch.tensor(upstream, dtype=torch.float64)
    (grad,) = torch.autograd.grad(agg_loss(loss_mat, mask, mode, **gbi), loss_mat, up)
    scale = agg_grad_scale(mask, mode, upstream=up, **gbi)
    assert torch.equal(torch.where(mask, scale, 0.0).expand_as(grad), grad)


def _plain_metrics(name, logp, old, adv, mask, config=None):
    """The METRIC_KEYS definitions written out with where() and per-metric reductions (float64)."""
    spec = get_policy_loss(name)
    v = mask
    lp, o, a = (torch.where(v, t, 0.0) for t in (logp, old, adv))
    tok = spec.fn(lp, o, a, spec.make_config(config), response_mask=v)
    n = int(v.sum())

    def mean(x):
        return float(torch.where(v, x.double(), 0.0).sum()) / max(n, 1)

    has_adv = v & (a != 0)
    out = {
        "ppo_kl": mean(-torch.clamp(lp - o, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)),
        "ratio_mean": mean(tok.ratio),
        "ratio_max": float(tok.ratio[v].max()) if n else 0.0,
        "gate_mean": mean(tok.gate),
        "gate_min": float(tok.gate[v].min()) if n else 1.0,
        "damp_frac": mean(tok.gate < 0.5),
        "eff_weight_mean": float((tok.grad_logp[has_adv] / a[has_adv]).abs().sum()) / max(int(has_adv.sum()), 1),
        "quad_pos_frac": mean((a > 0) & (tok.ratio > 1)),
        "quad_neg_frac": mean((a < 0) & (tok.ratio < 1)),
        "pg_clipfrac": mean(tok.clipped) if tok.clipped is not None else 0.0,
        "pg_clipfrac_lower": mean(tok.clipped_lower) if tok.clipped_lower is not None else 0.0,
        "valid_tokens": float(n),
        "nonfinite_tokens": 0.0,
    }
    return out


@pytest.mark.parametrize("name", _s.ALL_LOSSES)
@given(batch=_s.policy_batch(log_ratio_scale=1.5), junk=st.booleans(), pick=st.integers(0, 3))
def test_fused_metrics_equal_the_plain_definitions(name, batch, junk, pick):
    logp, old, adv, mask = batch
    configs = CONFIGS.get(name, [None])
    config = configs[pick % len(configs)]
    if junk and not mask.all():
        logp = logp.clone()
        logp[~mask] = math.inf  # masked garbage: the exact path
    _, _, metrics = _run(name, logp, old, adv, mask, config=config)
    assert list(metrics) == list(METRIC_KEYS)
    want = _plain_metrics(name, logp, old, adv, mask, config)
    for key, value in want.items():
        assert metrics[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def _wrong_grad_loss(log_prob, old_log_prob, advantages, config, **_):
    loss = -advantages * log_prob * log_prob
    return TokenLoss(loss=loss, grad_logp=torch.zeros_like(log_prob).detach(), gate=torch.ones_like(log_prob),
                     ratio=torch.ones_like(log_prob))


def test_a_custom_loss_without_analytic_grad_is_differentiated_by_autograd():
    register_policy_loss("test_wrong_grad", config_cls=UnclippedConfig, finite_safe=True, overwrite=True)(
        _wrong_grad_loss)
    try:
        logp = torch.tensor([[-0.5, -2.0, -1.0]], dtype=torch.float64, requires_grad=True)
        adv = torch.tensor([[1.0, -2.0, 3.0]], dtype=torch.float64)
        mask = torch.tensor([[True, True, False]])
        loss, _ = compute_policy_loss("test_wrong_grad", log_prob=logp, old_log_prob=logp.detach(), advantages=adv,
                                      response_mask=mask, loss_agg_mode="token-sum")
        loss.backward()
        assert torch.equal(logp.grad, torch.tensor([[1.0, -8.0, 0.0]], dtype=torch.float64))  # -2 A logp
    finally:
        _REGISTRY.pop("test_wrong_grad", None)
