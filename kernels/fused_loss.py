"""Fused gated policy loss: logits in, scalar loss out, gradient to the logits, O(N) memory besides it.

Per valid token t (temperature T, x = z / T, p = softmax(x)):

    logp_t = x_{t,y_t} - LSE_t,   (l_t, g_t) = gate(logp_t, logp_old_t, A_t),   L = agg(l * w_IS, mask)
    dL/dz_tj = (dL/dl_t g_t + dL/dlogp_t) (delta_{j,y_t} - p_tj) / T  -  dL/dH_t p_tj (log p_tj + H_t) / T

Forward: one kernel streams each row once (online softmax) and evaluates the gate in its epilogue, storing
l, g, logp, LSE [, H] (O(N)). Aggregation runs in torch on [N] tensors, so the upstream gradient of every
token (including a ``grad_output`` != 1, gradient accumulation scales, any aggregation mode) arrives in
backward as the per-token ``dL/dl_t``: no second pass over [N, V] to rescale a gradient computed in forward.
Backward: the shared gradient kernel of logprobs.py (1 read + 1 write, optionally into the logits buffer).
Total traffic 2 reads + 1 write of the logits, the Triton floor (docs/kernels.md §2).

The gate is a ``tl.constexpr`` function argument (gates.py): one kernel body for every loss.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

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
from .logprobs import (
    RowStats,
    check_device,
    check_not_consumed,
    empty_row_stats,
    launch_logits_grad,
    row_label_logprob,
    row_offset,
    row_softmax_stats,
)

AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")


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
    """``loss``: scalar float32. ``log_prob``: float32 [labels shape], 0 at masked positions, differentiable.
    ``entropy``: float32 like ``log_prob`` (differentiable) when requested, else None."""

    loss: torch.Tensor
    log_prob: torch.Tensor
    entropy: torch.Tensor | None


AggFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def aggregate(loss_mat: torch.Tensor, mask: torch.Tensor, loss_agg_mode: str | AggFn) -> torch.Tensor:
    """Aggregate a per-token loss with veRL's modes, micro-batch normalisation (no global counts).

    This mirrors the core's ``rlplugins.losses.agg_loss`` without its global-batch arguments (tested equal to
    it); pass a callable ``(loss_mat, mask) -> scalar`` (e.g. a ``functools.partial`` of the core's agg_loss
    with ``global_batch_info``) for anything else. An all-masked batch gives exactly 0.
    """
    if callable(loss_agg_mode):
        return loss_agg_mode(loss_mat, mask)
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {', '.join(AGG_MODES)} or a callable; got {loss_agg_mode!r}")
    if loss_agg_mode.startswith("seq") and loss_mat.dim() != 2:
        raise ValueError(f"loss_agg_mode {loss_agg_mode!r} needs [batch, resp_len] inputs, got {tuple(loss_mat.shape)}")
    masked = torch.where(mask, loss_mat, torch.zeros_like(loss_mat))
    if loss_agg_mode == "token-sum":
        return masked.sum()
    if loss_agg_mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1).to(masked.dtype)
    tokens = mask.sum(-1)
    seq = masked.sum(-1)
    if loss_agg_mode == "seq-mean-token-mean":
        seq = seq / tokens.clamp(min=1).to(seq.dtype)
    loss = seq.sum() / (tokens > 0).sum().clamp(min=1).to(seq.dtype)
    if loss_agg_mode == "seq-mean-token-sum-norm" and loss_mat.shape[-1]:  # zero-length responses: loss 0
        loss = loss / loss_mat.shape[-1]
    return loss


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
    loss_agg_mode: str | AggFn = "token-mean",
    return_entropy: bool = False,
    *,
    rollout_is_weights: torch.Tensor | None = None,
    inplace_backward: bool = False,
    ignore_index: int = -100,
    block_size: int | None = None,
) -> FusedPolicyLossOutput:
    """Gated policy loss straight from logits: ``L = agg(gate(logp, logp_old, A) * w_IS, mask)``.

    ``logp = log_softmax(z / T)[y]`` is never materialised over the vocabulary; the gradient w.r.t. ``logits``
    is ``dL/dz_j = (dL/dl g)(delta_jy - p_j) / T`` with ``g = dl/dlogp`` from the gate (docs/kernels.md §1).

    Args:
        logits: [B, T, V] (or [N, V]) float32/bf16/fp16; strided views with unit vocab stride are read in place.
        labels: int64/int32 ids, shape ``logits.shape[:-1]``; only read where ``response_mask`` is set, and there
            they must lie in [0, V) (ignore_index at a valid position raises).
        old_log_prob: float, shape of ``labels``, or None for the on-policy case (``old = sg(logp)``, ratio 1).
        advantages: float, shape of ``labels`` (per-token; broadcast sequence advantages yourself).
        response_mask: bool or 0/1, shape of ``labels``: masked tokens get zero loss and an exactly zero gradient row.
        loss: gate name (``list_gates()``); config: its hyper-parameters (core config dataclass or mapping).
        temperature: T >= 1e-6. loss_agg_mode: one of veRL's five modes (micro-batch counts) or a callable
            ``(loss_mat, mask) -> scalar``.
        return_entropy: also return the per-token entropy (differentiable: an entropy bonus works).
        rollout_is_weights: optional detached per-token weights multiplying the loss before aggregation.
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
    per_token = {"advantages": advantages, "rollout_is_weights": rollout_is_weights}
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
    # One host sync for the value checks: finite per-token inputs and non-negative weights at valid positions.
    finite = torch.isfinite(adv) if old is None else torch.isfinite(adv) & torch.isfinite(old)
    negative = torch.zeros_like(flat_mask)
    if rollout_is_weights is not None:
        w_flat = rollout_is_weights.detach().reshape(-1)
        finite &= torch.isfinite(w_flat)
        negative = flat_mask & (w_flat < 0)
    bad_value = flat_mask & ~finite
    n_bad_value, n_negative = (torch.stack([bad_value.sum(), negative.sum()]).tolist() if flat_mask.numel() else (0, 0))
    if n_bad_value:
        raise ValueError(f"{n_bad_value} valid position(s) hold non-finite old_log_prob/advantages/rollout_is_weights")
    if n_negative:
        raise ValueError(f"rollout_is_weights must be >= 0 at valid positions (a negative importance weight flips the "
                         f"sign of the loss); {n_negative} are negative")

    loss_t, logp, ent = FusedGatedTokenLossFunction.apply(
        logits, flat_labels.contiguous(), old, adv, spec.fn, params, temperature, bool(return_entropy),
        bool(inplace_backward), int(ignore_index), block_size,
    )
    check_finite_rows(logp.detach(), ent.detach() if return_entropy else None, flat_mask)
    loss_mat = loss_t.view(shape)
    if rollout_is_weights is not None:
        w = rollout_is_weights.detach().to(torch.float32)
        loss_mat = loss_mat * torch.where(mask, w, torch.zeros_like(w))
    total = aggregate(loss_mat, mask, loss_agg_mode)
    return FusedPolicyLossOutput(total, logp.view(shape), ent.view(shape) if return_entropy else None)
