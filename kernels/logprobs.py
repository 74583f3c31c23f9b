"""Selected-token log-probabilities (and entropy) from logits, without a vocab-sized log-softmax.

With temperature ``T``, ``x = z / T`` and ``LSE = log sum_j exp(x_j)``:

    logp_t = x_{y_t} - LSE_t                      (always <= 0)
    H_t    = LSE_t - sum_j p_j x_j,  p = softmax(x)

Forward: one program per row streams the vocabulary once (online softmax: running max ``m`` of the raw
logits, running ``l = sum exp((z - m)/T)`` and, for the entropy, ``sum exp(d) d`` with ``d = (z - m)/T``, all
rescaled when ``m`` grows) and stores float32 ``logp``, ``m``, ``log l`` [, ``H``]: O(N) memory. Backward: one
program per (row, vocab block) recomputes ``p_j = exp((z_j - m)/T - log l)`` and writes

    dz_j = [ g_t (delta_{j,y} - p_j) - c_t p_j (log p_j + H_t) ] / T,    g_t = dL/dlogp_t,  c_t = dL/dH_t

optionally into the logits buffer itself (``inplace_backward``). Traffic: 1 read forward, 1 read + 1 write
backward, the practical Triton floor (docs/kernels.md#memory-traffic). The row machinery and the backward kernel live in
rows.py, shared with the fused policy loss (fused_loss.py): any loss that depends on the logits only through ``logp`` and ``H`` reduces to
the two per-row scalars ``g`` and ``c``.

Ignored rows (``label == ignore_index``) get ``logp = H = 0`` and an exactly zero gradient row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (
    as_float_rows,
    check_finite_rows,
    check_labels,
    check_logits,
    check_no_overlap,
    check_temperature,
    row_layout,
    vocab_launch_config,
)
from .rows import (  # noqa: F401  (re-exported: rlplugins.kernels.logprobs keeps its former names)
    MAX_GRID_ROWS,
    MAX_GRID_VOCAB_BLOCKS,
    RowStats,
    check_device,
    check_grid,
    check_not_consumed,
    empty_row_stats,
    launch_logits_grad,
    log1p,
    logits_grad_kernel,
    one_minus_exp,
    row_label_logprob,
    row_offset,
    row_softmax_stats,
    to_storage,
)


@triton.jit
def _logprobs_fwd_kernel(
    LOGITS, LABELS, LOGP, MAXZ, LOGL, ENT,
    V, INNER, STRIDE_OUTER, STRIDE_INNER,
    inv_temp, ignore_index,
    BLOCK: tl.constexpr, ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row)
    if label == ignore_index:
        tl.store(LOGP + row, 0.0)
        tl.store(MAXZ + row, 0.0)
        tl.store(LOGL + row, 0.0)
        if ENTROPY:
            tl.store(ENT + row, 0.0)
    else:
        row_ptr = LOGITS + row_offset(row, INNER, STRIDE_OUTER, STRIDE_INNER)
        m, log_l, entropy = row_softmax_stats(row_ptr, V, inv_temp, BLOCK, ENTROPY)
        tl.store(LOGP + row, row_label_logprob(row_ptr, label, V, inv_temp, m, log_l))
        tl.store(MAXZ + row, m)
        tl.store(LOGL + row, log_l)
        if ENTROPY:
            tl.store(ENT + row, entropy)


def launch_logprobs_fwd(
    logits: torch.Tensor,
    labels: torch.Tensor,
    inv_temp: float,
    ignore_index: int,
    return_entropy: bool,
    block_size: int | None,
) -> RowStats:
    logits, rows, inner, so, si = row_layout(logits)
    vocab = logits.shape[-1]
    check_grid(rows)
    stats = empty_row_stats(rows, logits.device, return_entropy)
    if rows:
        cfg = vocab_launch_config(vocab, "fwd", block_size)
        _logprobs_fwd_kernel[(rows,)](
            logits, labels, stats.logp, stats.maxz, stats.log_l, stats.entropy if return_entropy else stats.logp,
            vocab, inner, so, si, inv_temp, ignore_index,
            BLOCK=cfg.block, ENTROPY=return_entropy, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return stats


# token_logprobs as torch.library custom ops: opaque to torch.compile (one call each, fake implementations for shapes,
# a registered autograd formula); eager calls launch the same kernels.
@torch.library.custom_op("rlplugins::token_logprobs", mutates_args=())
def token_logprobs_op(logits: torch.Tensor, labels: torch.Tensor, temperature: float, return_entropy: bool,
                      inplace_backward: bool, ignore_index: int, block_size: int | None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, entropy (zeros unless ``return_entropy``), max z, log l): logits -> O(N) row statistics, nothing
    N x V. ``inplace_backward`` only selects the backward op."""
    stats = launch_logprobs_fwd(logits, labels, 1.0 / temperature, ignore_index, return_entropy, block_size)
    shape = logits.shape[:-1]
    ent = stats.entropy.view(shape) if return_entropy else torch.zeros(shape, dtype=torch.float32,
                                                                       device=logits.device)
    return stats.logp.view(shape), ent, stats.maxz, stats.log_l


@token_logprobs_op.register_fake
def _(logits, labels, temperature, return_entropy, inplace_backward, ignore_index, block_size):
    shape, rows = logits.shape[:-1], labels.numel()
    f32 = dict(dtype=torch.float32, device=logits.device)
    return logits.new_empty(shape, **f32), logits.new_empty(shape, **f32), logits.new_empty(rows, **f32), \
        logits.new_empty(rows, **f32)


def _logits_grad(logits, labels, logp, ent, maxz, log_l, dlogp, dent, temperature, ignore_index, inplace,
                 block_size) -> torch.Tensor:
    rows = labels.numel()
    stats = RowStats(logp.reshape(-1), maxz, log_l, ent.reshape(-1) if dent is not None else ent.new_empty(0))
    g = as_float_rows(dlogp, rows, logits.device)
    c = as_float_rows(dent, rows, logits.device) if dent is not None else None
    return launch_logits_grad(logits, labels, stats, g, c, 1.0 / temperature, ignore_index, inplace, block_size)


@torch.library.custom_op("rlplugins::token_logprobs_backward", mutates_args=())
def token_logprobs_backward_op(logits: torch.Tensor, labels: torch.Tensor, logp: torch.Tensor, ent: torch.Tensor,
                               maxz: torch.Tensor, log_l: torch.Tensor, dlogp: torch.Tensor | None,
                               dent: torch.Tensor | None, temperature: float, ignore_index: int,
                               block_size: int | None) -> torch.Tensor:
    """dL/dlogits in a new buffer (``dent`` None: no entropy term)."""
    return _logits_grad(logits, labels, logp, ent, maxz, log_l, dlogp, dent, temperature, ignore_index, False,
                        block_size)


@token_logprobs_backward_op.register_fake
def _(logits, labels, logp, ent, maxz, log_l, dlogp, dent, temperature, ignore_index, block_size):
    return torch.empty_like(logits)


@torch.library.custom_op("rlplugins::token_logprobs_backward_", mutates_args=("logits",))
def token_logprobs_backward_inplace_op(logits: torch.Tensor, labels: torch.Tensor, logp: torch.Tensor,
                                       ent: torch.Tensor, maxz: torch.Tensor, log_l: torch.Tensor,
                                       dlogp: torch.Tensor | None, dent: torch.Tensor | None, temperature: float,
                                       ignore_index: int, block_size: int | None) -> None:
    """dL/dlogits written over ``logits`` (unit vocabulary stride: see ``_backward``)."""
    _logits_grad(logits, labels, logp, ent, maxz, log_l, dlogp, dent, temperature, ignore_index, True, block_size)


@token_logprobs_backward_inplace_op.register_fake
def _(logits, labels, logp, ent, maxz, log_l, dlogp, dent, temperature, ignore_index, block_size):
    return None


def _setup_context(ctx, inputs, output):
    logits, labels, temperature, return_entropy, inplace_backward, ignore_index, block_size = inputs
    logp, ent, maxz, log_l = output
    ctx.save_for_backward(logits, labels, logp, ent, maxz, log_l)
    ctx.temperature = temperature
    ctx.return_entropy = return_entropy
    ctx.inplace_backward = inplace_backward
    ctx.ignore_index = ignore_index
    ctx.block_size = block_size
    ctx.consumed = False
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(maxz, log_l)
    if not return_entropy:
        ctx.mark_non_differentiable(ent)


def _backward(ctx, dlogp, dent, _dmaxz, _dlog_l):
    check_not_consumed(ctx, "token_logprobs")  # before saved_tensors, whose version check would fire first
    logits, labels, logp, ent, maxz, log_l = ctx.saved_tensors
    args = (labels, logp, ent, maxz, log_l, dlogp, dent if ctx.return_entropy else None, ctx.temperature,
            ctx.ignore_index, ctx.block_size)
    # A vocabulary stride != 1 is read through a contiguous copy: the gradient then goes to a new buffer anyway.
    if ctx.inplace_backward and logits.stride(-1) == 1:
        token_logprobs_backward_inplace_op(logits, *args)
        return logits, None, None, None, None, None, None
    return token_logprobs_backward_op(logits, *args), None, None, None, None, None, None


token_logprobs_op.register_autograd(_backward, setup_context=_setup_context)


def token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    inplace_backward: bool = False,
    *,
    ignore_index: int = -100,
    block_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-probability of each label under ``softmax(logits / temperature)``, and optionally the entropy.

    ``logp_t = z_{t,y_t}/T - logsumexp_j(z_{t,j}/T)``; ``H_t = -sum_j p_tj log p_tj``.

    Args:
        logits: [N, V] or [B, T, V], float32/bfloat16/float16, any V; a strided view (e.g. ``logits[:, :-1]``)
            is read in place as long as the vocabulary dimension has unit stride.
        labels: int64/int32 tensor of shape ``logits.shape[:-1]``; ``ignore_index`` marks rows to skip.
        temperature: sampling temperature T >= 1e-6, applied to every logit (also when they are reloaded in backward).
        return_entropy: also return the (differentiable) entropy.
        inplace_backward: write the gradient into ``logits`` itself (saves one [N, V] buffer). The logits are
            destroyed by the backward: do not read them afterwards.
        ignore_index: label value of rows that get logp = H = 0 and an exactly zero gradient.
        block_size: vocabulary block (power of two); None picks a default.

    Returns:
        float32 ``logp`` of shape ``labels.shape`` (<= 0), or ``(logp, entropy)`` with 0 <= entropy <= log V.
        A non-ignored row whose logits hold NaN/+inf, are all -inf or give its label probability 0 raises
        ValueError (as the torch path ``rlplugins.losses.logprobs_from_logits``); nothing returns NaN/-inf.
    """
    check_logits(logits)
    check_device(logits)
    temperature = check_temperature(temperature)
    flat_labels = check_labels(labels, logits, ignore_index)
    if inplace_backward:
        check_no_overlap("logits", logits)
    logp, ent, _, _ = token_logprobs_op(
        logits, flat_labels, temperature, bool(return_entropy), bool(inplace_backward), int(ignore_index), block_size
    )
    check_finite_rows(logp.detach(), ent.detach() if return_entropy else None, labels != ignore_index)
    return (logp, ent) if return_entropy else logp
