"""Fused gated policy loss: logits in, per-token loss out, gradient to the logits, O(N) memory besides it.

Per valid token t (temperature T, x = z / T, p = softmax(x)):

    logp_t = x_{t,y_t} - LSE_t,   (l_t, g_t) = gate(logp_t, logp_old_t, A_t)
    dL/dz_tj = (dL/dl_t g_t + dL/dlogp_t) (delta_{j,y_t} - p_tj) / T  -  dL/dH_t p_tj (log p_tj + H_t) / T

Forward: one kernel streams each row once (online softmax) and evaluates the gate in its epilogue, storing
l, g, logp, LSE [, H] (O(N)). The kernel returns the per-token loss; the caller aggregates it (the core with
``rlplugins.losses.agg_loss``, the one copy of veRL's aggregation), so the upstream gradient of every token
(including a ``grad_output`` != 1, gradient accumulation scales, any aggregation mode, importance weights)
arrives in backward as the per-token ``dL/dl_t``: no second pass over [N, V] to rescale a gradient computed in forward.
Backward: the shared gradient kernel of logprobs.py (1 read + 1 write, optionally into the logits buffer).
Total traffic 2 reads + 1 write of the logits, the Triton floor (docs/kernels.md#memory-traffic).

The gate is a ``tl.constexpr`` function argument (gates.py): one kernel body for every loss.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl

from ._utils import (
    as_bool_mask,
    as_float_rows,
    check_finite_rows,
    check_labels,
    check_logits,
    check_no_overlap,
    check_temperature,
    require_float,
    require_tensor,
    row_layout,
    vocab_launch_config,
)
from .gates import get_gate
from .rows import (
    RowStats,
    check_device,
    check_grid,
    check_not_consumed,
    empty_row_stats,
    launch_logits_grad,
    row_label_logprob,
    row_offset,
    row_softmax_stats,
)

@triton.jit
def _fused_gated_loss_fwd_kernel(
    LOGITS, LABELS, OLD, ADV, LOSS, GRAD, LOGP, MAXZ, LOGL, ENT,
    V, INNER, STRIDE_OUTER, STRIDE_INNER,
    inv_temp, ignore_index,
    P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11,
    GATE: tl.constexpr, HAS_OLD: tl.constexpr, BLOCK: tl.constexpr, ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row)
    if label == ignore_index:
        tl.store(LOSS + row, 0.0)
        tl.store(GRAD + row, 0.0)
        tl.store(LOGP + row, 0.0)
        tl.store(MAXZ + row, 0.0)
        tl.store(LOGL + row, 0.0)
        if ENTROPY:
            tl.store(ENT + row, 0.0)
    else:
        row_ptr = LOGITS + row_offset(row, INNER, STRIDE_OUTER, STRIDE_INNER)
        m, log_l, entropy = row_softmax_stats(row_ptr, V, inv_temp, BLOCK, ENTROPY)
        logp = row_label_logprob(row_ptr, label, V, inv_temp, m, log_l)
        if HAS_OLD:
            old = tl.load(OLD + row).to(tl.float32)
        else:  # on-policy: old = sg(logp), ratio 1
            old = logp
        adv = tl.load(ADV + row).to(tl.float32)
        loss, grad = GATE(logp, old, adv, P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11)
        tl.store(LOSS + row, loss)
        tl.store(GRAD + row, grad)
        tl.store(LOGP + row, logp)
        tl.store(MAXZ + row, m)
        tl.store(LOGL + row, log_l)
        if ENTROPY:
            tl.store(ENT + row, entropy)


class FusedGatedTokenLossFunction(torch.autograd.Function):
    """logits -> per-token (loss, logp, H); saves logits (by reference), labels and O(N) row statistics."""

    @staticmethod
    def forward(ctx, logits, labels, old, adv, gate_fn, params, temperature, return_entropy, inplace_backward,
                ignore_index, block_size):
        logits_rows, rows, inner, so, si = row_layout(logits)
        vocab = logits_rows.shape[-1]
        check_grid(rows)
        inv_temp = 1.0 / temperature
        dev = logits.device
        loss = torch.empty(rows, dtype=torch.float32, device=dev)
        grad = torch.empty(rows, dtype=torch.float32, device=dev)
        stats = empty_row_stats(rows, dev, return_entropy)
        if rows:
            cfg = vocab_launch_config(vocab, "fwd", block_size)
            _fused_gated_loss_fwd_kernel[(rows,)](
                logits_rows, labels, old if old is not None else adv, adv, loss, grad,
                stats.logp, stats.maxz, stats.log_l, stats.entropy if return_entropy else stats.logp,
                vocab, inner, so, si, inv_temp, ignore_index, *params,
                GATE=gate_fn, HAS_OLD=old is not None, BLOCK=cfg.block, ENTROPY=return_entropy,
                num_warps=cfg.num_warps, num_stages=cfg.num_stages,
            )
        ctx.save_for_backward(logits_rows, labels, grad, *stats)
        ctx.inv_temp = inv_temp
        ctx.return_entropy = return_entropy
        ctx.inplace_backward = inplace_backward
        ctx.ignore_index = ignore_index
        ctx.block_size = block_size
        ctx.consumed = False
        ctx.set_materialize_grads(False)
        ent = stats.entropy
        if not return_entropy:
            ent = torch.zeros(rows, dtype=torch.float32, device=dev)
            ctx.mark_non_differentiable(ent)
        return loss, stats.logp, ent

    @staticmethod
    def backward(ctx, dloss, dlogp, dent):
        logits, labels, grad, *saved = ctx.saved_tensors
        stats = RowStats(*saved)
        check_not_consumed(ctx, "fused_policy_loss")
        rows = labels.numel()
        dev = logits.device
        # g_t = dL/dl_t * dl_t/dlogp_t (+ dL/dlogp_t when the returned log_prob is used downstream).
        g = torch.zeros(rows, dtype=torch.float32, device=dev)
        if dloss is not None:
            g = g + as_float_rows(dloss, rows, dev) * grad
        if dlogp is not None:
            g = g + as_float_rows(dlogp, rows, dev)
        use_entropy = ctx.return_entropy and dent is not None
        c = as_float_rows(dent, rows, dev) if use_entropy else None
        dlogits = launch_logits_grad(
            logits, labels, stats, g, c, ctx.inv_temp, ctx.ignore_index, ctx.inplace_backward, ctx.block_size
        )
        return dlogits, None, None, None, None, None, None, None, None, None, None


class FusedPolicyLossOutput(NamedTuple):
    """``token_loss``: float32 per-token loss, shape of ``labels``, exactly 0 at masked positions, differentiable
    (aggregate it, e.g. with ``rlplugins.losses.agg_loss``). ``log_prob``: float32, 0 at masked positions,
    differentiable. ``entropy``: float32 like ``log_prob`` (differentiable) when requested, else None."""

    token_loss: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor | None


def _require_rows(name: str, t: torch.Tensor, logits: torch.Tensor) -> None:
    if t.device != logits.device:
        raise ValueError(f"{name} is on {t.device} but logits is on {logits.device}")
    if t.shape != logits.shape[:-1]:
        raise ValueError(f"{name} must have shape {tuple(logits.shape[:-1])} (logits.shape[:-1]), got "
                         f"{tuple(t.shape)} (no broadcasting)")


def fused_policy_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    old_log_prob: torch.Tensor | None,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss: str = "maspo",
    config: Any = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    *,
    inplace_backward: bool = False,
    ignore_index: int = -100,
    block_size: int | None = None,
) -> FusedPolicyLossOutput:
    """Per-token gated policy loss straight from logits: ``l_t = gate(logp_t, logp_old_t, A_t)``.

    ``logp = log_softmax(z / T)[y]`` is never materialised over the vocabulary; the gradient w.r.t. ``logits``
    is ``dL/dz_j = (dL/dl g)(delta_jy - p_j) / T`` with ``g = dl/dlogp`` from the gate
    (docs/kernels.md#one-gradient-kernel-for-every-loss).

    Args:
        logits: [B, T, V] (or [N, V]) float32/bf16/fp16; strided views with unit vocab stride are read in place.
        labels: int64/int32 ids, shape ``logits.shape[:-1]``; only read where ``response_mask`` is set, and there
            they must lie in [0, V) (ignore_index at a valid position raises).
        old_log_prob: float, shape of ``labels``, or None for the on-policy case (``old = sg(logp)``, ratio 1).
        advantages: float, shape of ``labels`` (per-token; broadcast sequence advantages yourself).
        response_mask: bool or 0/1, shape of ``labels``: masked tokens get zero loss and an exactly zero gradient row.
        loss: gate name (``list_gates()``); config: its hyper-parameters (core config dataclass or mapping).
        temperature: T >= 1e-6.
        return_entropy: also return the per-token entropy (differentiable: an entropy bonus works).
        inplace_backward: write the gradient into ``logits`` (destroys them; saves one [N, V] buffer; refused for
            logits with overlapping memory).

    Returns:
        ``FusedPolicyLossOutput(loss, log_prob, entropy)``.
    """
    spec = get_gate(loss)
    params = spec.params(config)
    check_logits(logits)
    check_device(logits)
    temperature = check_temperature(temperature)
    shape = logits.shape[:-1]
    per_token = {"advantages": advantages}
    if old_log_prob is not None:
        per_token["old_log_prob"] = old_log_prob
    for name, t in per_token.items():
        if t is None:
            continue
        require_tensor(name, t)
        require_float(name, t)
        _require_rows(name, t, logits)
    _require_rows("response_mask", require_tensor("response_mask", response_mask), logits)
    mask = as_bool_mask("response_mask", response_mask)
    # Labels are read only where response_mask is set: there ignore_index or an out-of-range id is an error.
    labels64 = check_labels(labels, logits, ignore_index, valid=mask)
    if inplace_backward:
        check_no_overlap("logits", logits)

    flat_mask = mask.reshape(-1)
    flat_labels = torch.where(flat_mask, labels64, torch.full_like(labels64, ignore_index))
    old = None if old_log_prob is None else old_log_prob.detach().reshape(-1).to(torch.float32).contiguous()
    adv = advantages.detach().reshape(-1).to(torch.float32).contiguous()
    # One host sync for the value check: finite per-token inputs at valid positions.
    finite = torch.isfinite(adv) if old is None else torch.isfinite(adv) & torch.isfinite(old)
    n_bad_value = int((flat_mask & ~finite).sum()) if flat_mask.numel() else 0
    if n_bad_value:
        raise ValueError(f"{n_bad_value} valid position(s) hold non-finite old_log_prob/advantages")

    loss_t, logp, ent = FusedGatedTokenLossFunction.apply(
        logits, flat_labels.contiguous(), old, adv, spec.fn, params, temperature, bool(return_entropy),
        bool(inplace_backward), int(ignore_index), block_size,
    )
    check_finite_rows(logp.detach(), ent.detach() if return_entropy else None, flat_mask)
    # Masked rows were launched as ignored: the kernel stored l = logp = H = 0 and their gradient row is 0.
    return FusedPolicyLossOutput(loss_t.view(shape), logp.view(shape), ent.view(shape) if return_entropy else None)
