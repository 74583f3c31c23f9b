"""compute_policy_loss's one-sync path (finite inputs) against its exact masking path (taken when an input holds
NaN/inf): the same loss and gradient bits, the same metrics, the same global-count checks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlplugins.losses import AGG_MODES, compute_policy_loss
from rlplugins.losses.registry import get_policy_loss

import _strategies as _s  # tests/conftest.py maps the name to the file


def _run(name, logp, old, adv, mask, **kw):
    lp = logp.clone().requires_grad_()
    loss, metrics = compute_policy_loss(name, log_prob=lp, old_log_prob=old, advantages=adv, response_mask=mask, **kw)
    loss.backward()
    return loss.detach(), lp.grad, metrics


def test_every_builtin_loss_takes_the_fast_path():
    for name in _s.ALL_LOSSES:
        assert get_policy_loss(name).finite_safe, name


@pytest.mark.parametrize("name", _s.ALL_LOSSES)
@given(batch=_s.policy_batch(log_ratio_scale=1.5), mode=st.sampled_from(AGG_MODES), weighted=st.booleans())
def test_fast_path_equals_the_exact_masking_path(name, batch, mode, weighted):
    logp, old, adv, mask = batch
    if mask.all():
        mask[0, 0] = False  # a masked position to put a NaN in
    weights = torch.rand_like(logp) + 0.5 if weighted else None
    fast = _run(name, logp, old, adv, mask, loss_agg_mode=mode, rollout_is_weights=weights)
    # A NaN at a masked position makes the one-reduction probe non-finite: the exact path runs.
    old_nan = old.clone()
    old_nan[~mask] = math.nan
    exact = _run(name, logp, old_nan, adv, mask, loss_agg_mode=mode, rollout_is_weights=weights)
    torch.testing.assert_close(fast[0], exact[0], rtol=0, atol=0)
    torch.testing.assert_close(fast[1], exact[1], rtol=0, atol=0)
    assert fast[2].keys() == exact[2].keys()
    for key, value in exact[2].items():
        assert fast[2][key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


def test_fast_path_still_rejects_a_global_count_below_the_local_one():
    logp = torch.full((2, 3), -1.0)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"batch_num_tokens'\]=5 is smaller than the 6 valid tokens"):
        compute_policy_loss("maspo", log_prob=logp, old_log_prob=logp, advantages=logp, response_mask=mask,
                            global_batch_info={"batch_num_tokens": 5})
    with pytest.raises(ValueError, match=r"global_batch_size'\]=1 is smaller than the 2 sequences"):
        compute_policy_loss("ppo_clip", log_prob=logp, old_log_prob=logp, advantages=logp, response_mask=mask,
                            loss_agg_mode="seq-mean-token-mean", global_batch_info={"global_batch_size": 1})


def test_overflowing_finite_inputs_take_the_exact_path_and_stay_masked():
    """Finite garbage so large that logp - logp_old overflows must not leak NaN into gspo's sequence ratio."""
    logp = torch.tensor([[-0.5, -3.0e38, -1.0]])
    old = torch.tensor([[-0.4, 3.0e38, -1.2]])
    adv = torch.tensor([[1.0, 1.0, 1.0]])
    mask = torch.tensor([[True, False, True]])
    loss, grad, metrics = _run("gspo", logp, old, adv, mask)
    clean = _run("gspo", logp[:, [0, 2]], old[:, [0, 2]], adv[:, [0, 2]], mask[:, [0, 2]])
    assert torch.isfinite(loss) and grad[0, 1] == 0
    torch.testing.assert_close(loss, clean[0])
    assert metrics["nonfinite_tokens"] == 0.0
