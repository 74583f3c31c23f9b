"""Loss aggregation with veRL 0.9.1's ``agg_loss`` semantics (global-batch aware).

With counts from the whole mini-batch across data-parallel ranks (``batch_num_tokens``, ``global_batch_size``)
and ``dp_size`` (DDP/FSDP average gradients over ranks, so each rank scales by dp_size):

    token-mean               sum(m l) / batch_num_tokens * dp_size
    token-sum                sum(m l) * dp_size
    seq-mean-token-sum       sum_i sum_t(m l) / global_batch_size * dp_size
    seq-mean-token-mean      sum_i (sum_t(m l) / sum_t m) / global_batch_size * dp_size
    seq-mean-token-sum-norm  seq-mean-token-sum / loss_scale_factor  (default: the response length)

Without the global counts, token-mean divides by the valid tokens of this call and the seq modes by the
sequences with at least one valid token. Unlike veRL, an all-masked call gives exactly 0 (never 0/0).
"""

from __future__ import annotations

import torch

AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)


def _safe_div(num: torch.Tensor, den: torch.Tensor | float | int) -> torch.Tensor:
    """``num / den``, or 0 where ``den <= 0`` (never 0/0). The same division either way; without a graph to
    protect (no NaN may reach a backward through the unselected branch) it takes fewer operations."""
    if not (num.requires_grad and torch.is_grad_enabled()):
        if not isinstance(den, torch.Tensor):
            return num / den if den > 0 else torch.zeros_like(num)
        den_t = den.to(num.dtype)
        return torch.where(den_t > 0, num / den_t, 0.0)
    den_t = torch.as_tensor(den, dtype=num.dtype, device=num.device)
    return torch.where(den_t > 0, num / torch.where(den_t > 0, den_t, torch.ones_like(den_t)), torch.zeros_like(num))


def agg_loss(
    loss_mat: torch.Tensor,
    loss_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    dp_size: int = 1,
    batch_num_tokens: int | float | torch.Tensor | None = None,
    global_batch_size: int | float | torch.Tensor | None = None,
    loss_scale_factor: int | float | None = None,
    float_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Aggregate a ``[batch, resp_len]`` loss matrix to a scalar (see the module docstring).

    ``float_mask``: ``loss_mask`` as 0./1. in ``loss_mat``'s dtype, for a ``loss_mat`` known to be finite everywhere
    (then ``loss_mat * float_mask`` equals the where() below value for value, and costs less)."""
    if loss_agg_mode not in AGG_MODES:
        raise ValueError(f"loss_agg_mode must be one of {', '.join(AGG_MODES)}; got {loss_agg_mode!r}")
    if loss_mat.shape != loss_mask.shape:
        raise ValueError(f"loss_mask shape {tuple(loss_mask.shape)} must equal loss_mat shape {tuple(loss_mat.shape)}")
    if loss_mat.dim() != 2 and loss_agg_mode.startswith("seq"):
        raise ValueError(f"loss_agg_mode {loss_agg_mode!r} needs [batch, resp_len] tensors, got {tuple(loss_mat.shape)}")
    if isinstance(dp_size, bool) or not isinstance(dp_size, int) or dp_size < 1:
        raise ValueError(f"dp_size must be an int >= 1, got {dp_size!r}")
    mask = loss_mask.bool()
    # where(), not multiplication: a NaN/inf at a masked position must not leak into the sum or the gradient.
    masked = torch.where(mask, loss_mat, 0.0) if float_mask is None else loss_mat * float_mask

    if loss_agg_mode == "token-mean":
        if batch_num_tokens is None:
            if dp_size > 1:
                raise ValueError("batch_num_tokens (global) is required when dp_size > 1")
            batch_num_tokens = torch.count_nonzero(mask)
        return _safe_div(masked.sum(), batch_num_tokens) * dp_size
    if loss_agg_mode == "token-sum":
        return masked.sum() * dp_size

    tokens_per_seq = mask.sum(-1)
    seq_valid = tokens_per_seq > 0
    if global_batch_size is None:
        if dp_size > 1:
            raise ValueError("global_batch_size is required when dp_size > 1")
        global_batch_size = seq_valid.sum()
    seq_sums = masked.sum(-1)
    if loss_agg_mode == "seq-mean-token-mean":
        seq_sums = seq_sums / tokens_per_seq.clamp(min=1).to(seq_sums.dtype)
    loss = _safe_div(torch.where(seq_valid, seq_sums, torch.zeros_like(seq_sums)).sum(), global_batch_size) * dp_size
    if loss_agg_mode == "seq-mean-token-sum-norm":
        if loss_scale_factor is None and loss_mask.shape[-1] == 0:
            return loss  # zero-length responses: no token, loss 0 as in every other mode (nothing to normalise)
        scale = loss_scale_factor if loss_scale_factor is not None else loss_mask.shape[-1]
        if not scale or scale <= 0:
            raise ValueError(f"loss_scale_factor must be > 0, got {scale!r}")
        loss = loss / scale
    return loss


def agg_grad_scale(
    loss_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    *,
    upstream: torch.Tensor,
    dp_size: int = 1,
    batch_num_tokens: int | float | torch.Tensor | None = None,
    global_batch_size: int | float | torch.Tensor | None = None,
    loss_scale_factor: int | float | None = None,
) -> torch.Tensor:
    """``upstream * d agg_loss / d loss_mat`` at the valid positions (the gradient is 0 at masked ones): a 0-d
    tensor for the token modes, ``[batch, 1]`` (one value per sequence) for the seq modes. ``agg_loss`` is linear in
    ``loss_mat``; this runs the operations of its backward in their order (``loss_scale_factor``, ``dp_size``, the
    global count, the per-sequence count), so the bits equal autograd's. Arguments as ``agg_loss`` (call it first:
    it validates them)."""
    mask = loss_mask.bool()
    if loss_agg_mode == "token-sum":
        return upstream * dp_size
    if loss_agg_mode == "token-mean":
        return _safe_div(upstream * dp_size, mask.sum() if batch_num_tokens is None else batch_num_tokens)
    tokens_per_seq = mask.sum(-1, keepdim=True)
    if global_batch_size is None:
        global_batch_size = (tokens_per_seq > 0).sum()
    if loss_agg_mode == "seq-mean-token-sum-norm" and not (loss_scale_factor is None and loss_mask.shape[-1] == 0):
        upstream = upstream / (loss_scale_factor if loss_scale_factor is not None else loss_mask.shape[-1])
    scale = _safe_div(upstream * dp_size, global_batch_size)
    if loss_agg_mode == "seq-mean-token-mean":
        return scale / tokens_per_seq.clamp(min=1).to(scale.dtype)
    return scale
