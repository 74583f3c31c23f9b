"""Selected-token log-probabilities (and entropy) from logits, without a vocab-sized log-softmax.

With temperature ``T``, ``x = z / T`` and ``LSE = log sum_j exp(x_j)``:

    logp_t = x_{y_t} - LSE_t                      (always <= 0)
    H_t    = LSE_t - sum_j p_j x_j,  p = softmax(x)

Forward: one program per row streams the vocabulary once (online softmax: running max ``m``, running
``l = sum exp(x - m)`` and, for the entropy, ``s = sum exp(x - m) (x - m)``, all rescaled when ``m`` grows)
and stores float32 ``logp``, ``LSE`` [, ``H``]: O(N) memory. Backward: one program per (row, vocab block)
recomputes ``p_j = exp(x_j - LSE)`` and writes

    dz_j = [ g_t (delta_{j,y} - p_j) - c_t p_j (log p_j + H_t) ] / T,    g_t = dL/dlogp_t,  c_t = dL/dH_t

optionally into the logits buffer itself (``inplace_backward``). Traffic: 1 read forward, 1 read + 1 write
backward, the practical Triton floor (docs/kernels.md §2). The backward kernel is shared with the fused
policy loss (fused_loss.py): any loss that depends on the logits only through ``logp`` and ``H`` reduces to
the two per-row scalars ``g`` and ``c``.

Ignored rows (``label == ignore_index``) get ``logp = H = 0`` and an exactly zero gradient row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import (
    as_float_rows,
    check_labels,
    check_logits,
    check_temperature,
    interpreter_active,
    row_layout,
    vocab_launch_config,
)

# A finite stand-in for -inf as the running-max identity: with it, exp(m_old - m_new) and (m_old - m_new) * l
# stay finite (no inf - inf or 0 * inf) even when a whole block is -inf, e.g. a masked vocabulary slice.
# Any finite float32 logit is above it, so for finite rows it behaves exactly like -inf (verl PR #7439: the
# identity must not be 0, or all-negative rows get a wrong max).
_NEG_BIG = tl.constexpr(-3.0e38)  # compiled Triton only reads constexpr globals


@triton.jit
def row_offset(row, INNER, STRIDE_OUTER, STRIDE_INNER):
    """Element offset of row ``row`` of a [B, T, V] (or [N, V] with INNER = N) tensor; int64 because
    row * V passes 2**31 beyond ~14k rows at V = 151,936."""
    return (row // INNER) * STRIDE_OUTER + (row % INNER) * STRIDE_INNER


@triton.jit
def row_softmax_stats(row_ptr, V, inv_temp, BLOCK: tl.constexpr, ENTROPY: tl.constexpr):
    """One streaming pass over a row: returns (m, l, s) with m = max x, l = sum exp(x - m) >= 1 and
    s = sum exp(x - m) (x - m) <= 0 (0 when ENTROPY is off). Then LSE = m + log l and H = log l - s / l.

    Keeping s relative to the running max (rather than sum p x) makes H a sum of two non-negative terms:
    no cancellation between two ~1e4-sized numbers when the logits are huge."""
    m = _NEG_BIG
    l = 0.0
    s = 0.0
    for start in tl.range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(row_ptr + cols, mask=cols < V, other=-float("inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(x, axis=0))
        alpha = tl.exp(m - m_new)
        e = tl.exp(x - m_new)
        if ENTROPY:
            # -inf logits (padding or a masked vocabulary entry) have e = 0: take 0, not 0 * -inf.
            s = alpha * (s + (m - m_new) * l) + tl.sum(e * tl.where(e > 0.0, x - m_new, 0.0), axis=0)
        l = alpha * l + tl.sum(e, axis=0)
        m = m_new
    return m, l, s


@triton.jit
def row_logprob(row_ptr, label, V, inv_temp, m, l, s):
    """(logp, LSE, H) of a row from its statistics. ``x_y`` is loaded and scaled exactly as in the stream, so
    x_y <= m and l >= 1 make logp <= 0 hold exactly. An out-of-range label gives NaN, never an
    out-of-bounds read (the Python wrappers reject such labels before launching)."""
    log_l = tl.log(l)
    in_range = (label >= 0) & (label < V)
    x_y = tl.load(row_ptr + label, mask=in_range, other=float("nan")).to(tl.float32) * inv_temp
    logp = (x_y - m) - log_l
    entropy = log_l - s / l
    return logp, m + log_l, entropy


@triton.jit
def _logprobs_fwd_kernel(
    LOGITS, LABELS, LOGP, LSE, ENT,
    V, INNER, STRIDE_OUTER, STRIDE_INNER,
    inv_temp, ignore_index,
    BLOCK: tl.constexpr, ENTROPY: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    label = tl.load(LABELS + row)
    if label == ignore_index:
        tl.store(LOGP + row, 0.0)
        tl.store(LSE + row, 0.0)
        if ENTROPY:
            tl.store(ENT + row, 0.0)
    else:
        row_ptr = LOGITS + row_offset(row, INNER, STRIDE_OUTER, STRIDE_INNER)
        m, l, s = row_softmax_stats(row_ptr, V, inv_temp, BLOCK, ENTROPY)
        logp, lse, entropy = row_logprob(row_ptr, label, V, inv_temp, m, l, s)
        tl.store(LOGP + row, logp)
        tl.store(LSE + row, lse)
        if ENTROPY:
            tl.store(ENT + row, entropy)


@triton.jit
def logits_grad_kernel(
    DLOGITS, LOGITS, LABELS, LSE, G, C, ENT,
    V, INNER, STRIDE_OUTER, STRIDE_INNER, D_STRIDE_OUTER, D_STRIDE_INNER,
    inv_temp, ignore_index,
    BLOCK: tl.constexpr, ENTROPY: tl.constexpr,
):
    """dz = [g (onehot_y - p) - c p (log p + H)] / T for one (row, vocab block). DLOGITS may alias LOGITS:
    each program reads its block before writing it and no other program touches that block."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < V
    label = tl.load(LABELS + row)
    d_ptr = DLOGITS + row_offset(row, INNER, D_STRIDE_OUTER, D_STRIDE_INNER)
    if label == ignore_index:
        tl.store(d_ptr + cols, tl.zeros([BLOCK], dtype=tl.float32).to(DLOGITS.dtype.element_ty), mask=cmask)
    else:
        row_ptr = LOGITS + row_offset(row, INNER, STRIDE_OUTER, STRIDE_INNER)
        x = tl.load(row_ptr + cols, mask=cmask, other=-float("inf")).to(tl.float32) * inv_temp
        lse = tl.load(LSE + row)
        g = tl.load(G + row)
        p = tl.exp(x - lse)
        dz = tl.where(cols == label, g, 0.0) - g * p
        if ENTROPY:
            c = tl.load(C + row)
            h = tl.load(ENT + row)
            # p = 0 (a -inf logit) contributes 0, not 0 * -inf.
            dz -= c * p * tl.where(p > 0.0, (x - lse) + h, 0.0)
        tl.store(d_ptr + cols, (dz * inv_temp).to(DLOGITS.dtype.element_ty), mask=cmask)


def check_device(logits: torch.Tensor) -> None:
    if logits.device.type == "cpu" and not interpreter_active():
        raise ValueError(
            "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for the slow CPU interpreter); "
            "for CPU tensors use rlplugins.losses.logprobs_from_logits(..., backend='torch')"
        )


def launch_logits_grad(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lse: torch.Tensor,
    g: torch.Tensor,
    c: torch.Tensor | None,
    entropy: torch.Tensor | None,
    inv_temp: float,
    ignore_index: int,
    inplace: bool,
    block_size: int | None,
) -> torch.Tensor:
    """Gradient w.r.t. ``logits`` (a unit-vocab-stride [N, V] or [B, T, V] tensor) from per-row g [and c]."""
    logits, rows, inner, so, si = row_layout(logits)
    vocab = logits.shape[-1]
    dlogits = logits if inplace else torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if rows == 0:
        return dlogits
    _, _, _, dso, dsi = row_layout(dlogits)
    use_entropy = c is not None
    cfg = vocab_launch_config(vocab, "bwd", block_size)
    grid = (rows, triton.cdiv(vocab, cfg.block))
    logits_grad_kernel[grid](
        dlogits, logits, labels, lse, g, c if use_entropy else g, entropy if use_entropy else lse,
        vocab, inner, so, si, dso, dsi,
        inv_temp, ignore_index,
        BLOCK=cfg.block, ENTROPY=use_entropy, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dlogits


def launch_logprobs_fwd(
    logits: torch.Tensor,
    labels: torch.Tensor,
    inv_temp: float,
    ignore_index: int,
    return_entropy: bool,
    block_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, LSE, H) per row, float32; H is an empty tensor when not requested."""
    logits, rows, inner, so, si = row_layout(logits)
    vocab = logits.shape[-1]
    logp = torch.empty(rows, dtype=torch.float32, device=logits.device)
    lse = torch.empty(rows, dtype=torch.float32, device=logits.device)
    ent = torch.empty(rows if return_entropy else 0, dtype=torch.float32, device=logits.device)
    if rows:
        cfg = vocab_launch_config(vocab, "fwd", block_size)
        _logprobs_fwd_kernel[(rows,)](
            logits, labels, logp, lse, ent if return_entropy else lse,
            vocab, inner, so, si, inv_temp, ignore_index,
            BLOCK=cfg.block, ENTROPY=return_entropy, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
    return logp, lse, ent


class TokenLogprobsFunction(torch.autograd.Function):
    """logits -> (logp, H); saves logits (by reference), labels, LSE and H: nothing of size N x V."""

    @staticmethod
    def forward(ctx, logits, labels, temperature, return_entropy, inplace_backward, ignore_index, block_size):
        logits_rows, _, _, _, _ = row_layout(logits)
        inv_temp = 1.0 / temperature
        logp, lse, ent = launch_logprobs_fwd(logits_rows, labels, inv_temp, ignore_index, return_entropy, block_size)
        ctx.save_for_backward(logits_rows, labels, lse, ent)
        ctx.inv_temp = inv_temp
        ctx.return_entropy = return_entropy
        ctx.inplace_backward = inplace_backward
        ctx.ignore_index = ignore_index
        ctx.block_size = block_size
        ctx.consumed = False
        ctx.set_materialize_grads(False)
        shape = logits.shape[:-1]
        if not return_entropy:
            ent_out = torch.zeros(shape, dtype=torch.float32, device=logits.device)
            ctx.mark_non_differentiable(ent_out)
            return logp.view(shape), ent_out
        return logp.view(shape), ent.view(shape)

    @staticmethod
    def backward(ctx, dlogp, dent):
        logits, labels, lse, ent = ctx.saved_tensors
        if ctx.inplace_backward:
            if ctx.consumed:
                raise RuntimeError(
                    "token_logprobs(inplace_backward=True) already overwrote the logits with their gradient; "
                    "a second backward through it (retain_graph) is not possible"
                )
            ctx.consumed = True
        rows = labels.numel()
        g = as_float_rows(dlogp, rows, logits.device)
        use_entropy = ctx.return_entropy and dent is not None
        c = as_float_rows(dent, rows, logits.device) if use_entropy else None
        dlogits = launch_logits_grad(
            logits, labels, lse, g, c, ent if use_entropy else None,
            ctx.inv_temp, ctx.ignore_index, ctx.inplace_backward, ctx.block_size,
        )
        return dlogits, None, None, None, None, None, None


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
        labels: integer tensor of shape ``logits.shape[:-1]``; ``ignore_index`` marks rows to skip.
        temperature: sampling temperature T > 0, applied to every logit (also when they are reloaded in backward).
        return_entropy: also return the (differentiable) entropy.
        inplace_backward: write the gradient into ``logits`` itself (saves one [N, V] buffer). The logits are
            destroyed by the backward: do not read them afterwards.
        ignore_index: label value of rows that get logp = H = 0 and an exactly zero gradient.
        block_size: vocabulary block (power of two); None picks a default.

    Returns:
        float32 ``logp`` of shape ``labels.shape`` (<= 0), or ``(logp, entropy)`` with 0 <= entropy <= log V.
    """
    check_logits(logits)
    check_device(logits)
    temperature = check_temperature(temperature)
    flat_labels = check_labels(labels, logits, ignore_index)
    logp, ent = TokenLogprobsFunction.apply(
        logits, flat_labels, temperature, bool(return_entropy), bool(inplace_backward), int(ignore_index), block_size
    )
    return (logp, ent) if return_entropy else logp
