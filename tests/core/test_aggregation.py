"""Aggregation against veRL 0.9.1's agg_loss formulas (transcribed here as an independent oracle)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from rlplugins.losses import AGG_MODES, agg_loss


def verl_agg_loss(loss_mat, loss_mask, mode, dp_size=1, batch_num_tokens=None, global_batch_size=None,
                  loss_scale_factor=None):
    """veRL 0.9.1 core_algos.agg_loss, written out (masked_sum = sum(x * mask))."""
    m = loss_mask.to(loss_mat.dtype)
    if mode == "token-mean":
        n = m.sum() if batch_num_tokens is None else batch_num_tokens
        return (loss_mat * m).sum() / n * dp_size
    if mode == "token-sum":
        return (loss_mat * m).sum() * dp_size
    if mode in ("seq-mean-token-sum", "seq-mean-token-sum-norm"):
        seq = (loss_mat * m).sum(-1)
        seq_mask = (m.sum(-1) > 0).to(loss_mat.dtype)
        gbs = seq_mask.sum() if global_batch_size is None else global_batch_size
        loss = (seq * seq_mask).sum() / gbs * dp_size
        if mode == "seq-mean-token-sum-norm":
            loss = loss / (loss_scale_factor if loss_scale_factor is not None else loss_mask.shape[-1])
        return loss
    counts = m.sum(-1)
    seq = (loss_mat * m).sum(-1) / (counts + 1e-8)
    seq_mask = (counts > 0).to(loss_mat.dtype)
    gbs = seq_mask.sum() if global_batch_size is None else global_batch_size
    return (seq * seq_mask).sum() / gbs * dp_size


@st.composite
def loss_and_mask(draw):
    b, t = draw(st.integers(1, 6)), draw(st.integers(1, 9))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    loss = torch.randn(b, t, generator=g, dtype=torch.float64)
    mask = torch.rand(b, t, generator=g) < 0.7
    mask[draw(st.integers(0, b - 1)), draw(st.integers(0, t - 1))] = True  # at least one valid token
    return loss, mask


@given(loss_and_mask(), st.sampled_from(AGG_MODES))
def test_local_normalisation_matches_verl(lm, mode):
    loss, mask = lm
    torch.testing.assert_close(agg_loss(loss, mask, mode), verl_agg_loss(loss, mask, mode), rtol=1e-7, atol=1e-10)


@given(loss_and_mask(), st.sampled_from(AGG_MODES), st.integers(1, 8), st.integers(1, 500), st.integers(1, 64),
       st.one_of(st.none(), st.integers(1, 4096)))
def test_global_batch_info_matches_verl(lm, mode, dp, tokens, gbs, lsf):
    loss, mask = lm
    kw = dict(dp_size=dp, batch_num_tokens=tokens, global_batch_size=gbs, loss_scale_factor=lsf)
    torch.testing.assert_close(agg_loss(loss, mask, mode, **kw), verl_agg_loss(loss, mask, mode, **kw),
                               rtol=1e-7, atol=1e-10)


def test_micro_batches_sum_to_the_mini_batch_loss():
    """What veRL relies on: per-micro-batch losses with global counts add up to the full-batch loss."""
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(8, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(8, 5, generator=g) < 0.6
    mask[:, 0] = True
    for mode in AGG_MODES:
        full = agg_loss(loss, mask, mode)
        info = dict(batch_num_tokens=int(mask.sum()), global_batch_size=8)
        parts = sum(agg_loss(loss[i:i + 2], mask[i:i + 2], mode, **info) for i in range(0, 8, 2))
        torch.testing.assert_close(parts, full)


@pytest.mark.parametrize("mode", AGG_MODES)
def test_all_masked_is_zero_not_nan(mode):
    loss = torch.full((2, 3), float("nan"))
    mask = torch.zeros(2, 3, dtype=torch.bool)
    assert float(agg_loss(loss, mask, mode)) == 0.0
    assert float(agg_loss(loss, mask, mode, batch_num_tokens=0, global_batch_size=0)) == 0.0


def test_bad_arguments():
    loss, mask = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        agg_loss(loss, mask, "mean")
    with pytest.raises(ValueError, match="loss_mask shape"):
        agg_loss(loss, mask[:, :2], "token-mean")
    with pytest.raises(ValueError, match="batch_num_tokens"):
        agg_loss(loss, mask, "token-mean", dp_size=2)
    with pytest.raises(ValueError, match="global_batch_size"):
        agg_loss(loss, mask, "seq-mean-token-mean", dp_size=2)
    with pytest.raises(ValueError, match="dp_size"):
        agg_loss(loss, mask, "token-sum", dp_size=0)
