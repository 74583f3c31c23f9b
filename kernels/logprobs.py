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
backward, the practical Triton floor (docs/kernels.md §2). The backward kernel is shared with the fused
policy loss (fused_loss.py): any loss that depends on the logits only through ``logp`` and ``H`` reduces to
the two per-row scalars ``g`` and ``c``.

Ignored rows (``label == ignore_index``) get ``logp = H = 0`` and an exactly zero gradient row.
"""

from __future__ import annotations

from typing import NamedTuple

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
    interpreter_active,
    row_layout,
    vocab_launch_config,
)

# A finite stand-in for -inf as the running-max identity: with it, (m_old - m_new) stays finite (no
# -inf - -inf) even when a whole block is -inf, e.g. a masked vocabulary slice. Any finite float32 logit is above
# it, so for finite rows it behaves exactly like -inf (verl PR #7439: the identity must not be 0, or
# all-negative rows get a wrong max).
_NEG_BIG = tl.constexpr(-3.0e38)  # compiled Triton only reads constexpr globals


@triton.jit
def row_offset(row, INNER, STRIDE_OUTER, STRIDE_INNER):
    """Element offset of row ``row`` of a [B, T, V] (or [N, V] with INNER = N) tensor; int64 because
    row * V passes 2**31 beyond ~14k rows at V = 151,936."""
    return (row // INNER) * STRIDE_OUTER + (row % INNER) * STRIDE_INNER


@triton.jit
def log1p(x):
    """log(1 + x) for x >= 0, accurate for small x (Goldberg's trick; the interpreter has no log1p)."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))


@triton.jit
def row_softmax_stats(row_ptr, V, inv_temp, BLOCK: tl.constexpr, ENTROPY: tl.constexpr):
    """One streaming pass over a row of raw logits z: returns (m, log_l, H) with

        m = max_j z_j (raw units),  l = sum_j exp((z_j - m)/T) = 1 + r,  H = log l - sum_j e_j d_j / l,

    where d_j = (z_j - m)/T <= 0, e_j = exp(d_j) and r = the sum without (one occurrence of) the max, whose
    term is exactly 1 (H = 0 when ENTROPY is off).

    Precision: (1) the max is kept in raw units and every exponent is formed as (z_j - m) * (1/T); z_j - m is
    exact or nearly (Sterbenz), so exp(d_j) is accurate even for |z| ~ 1e4 with T < 1, where the usual
    exp(z_j/T - LSE) loses ~|z/T| * 2**-24 absolute in its argument (2e-3 at z/T = 4e4). (2) log l is
    log1p(r): for a confident row (p_max -> 1, the common case for sampled tokens) log(1 + r) would round r
    to float32's 6e-8 steps around 1, and 1 - p_y = -expm1(logp_y) (the label's gradient) with it.
    (3) The entropy sum is kept relative to the max: no cancellation between two ~|z/T|-sized numbers."""
    m = _NEG_BIG
    r = 0.0
    s = 0.0
    for start in tl.range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        z = tl.load(row_ptr + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        block_max = tl.max(z, axis=0)
        m_new = tl.maximum(m, block_max)
        # <= 0; bounded before scaling so that the sentinel never overflows to -inf (exp() gives 0 either way).
        shift = tl.maximum(m - m_new, -1.0e30) * inv_temp
        alpha = tl.exp(shift)
        d = (z - m_new) * inv_temp
        e = tl.exp(d)
        at_max = d == 0.0  # exactly the elements equal to the (new) running max
        part = tl.sum(tl.where(at_max, 0.0, e), axis=0)
        n_max = tl.sum(at_max.to(tl.float32), axis=0)
        had_max = m > _NEG_BIG  # False until the first finite logit
        l_old = r + tl.where(had_max, 1.0, 0.0)
        if ENTROPY:
            # Padding and -inf logits have e = 0: take 0, not 0 * -inf; l_old = 0 before the first finite logit.
            s = alpha * (s + tl.where(l_old > 0.0, shift * l_old, 0.0)) + tl.sum(e * tl.where(e > 0.0, d, 0.0), axis=0)
        # A new max: the old terms (old max included) scale by alpha, and one new max element leaves r.
        r = tl.where(block_max > m, alpha * l_old + part + (n_max - 1.0), r + part + n_max)
        m = m_new
    log_l = log1p(r)
    return m, log_l, log_l - s / (1.0 + r)


@triton.jit
def row_label_logprob(row_ptr, label, V, inv_temp, m, log_l):
    """logp_y = (z_y - m)/T - log l: <= 0 exactly, since z_y <= m and log l = log1p(r) >= 0 (r is a sum of
    non-negative terms). An out-of-range label gives NaN, never an out-of-bounds read (the Python wrappers
    reject such labels before launching)."""
    in_range = (label >= 0) & (label < V)
    z_y = tl.load(row_ptr + label, mask=in_range, other=float("nan")).to(tl.float32)
    return (z_y - m) * inv_temp - log_l


@triton.jit
def one_minus_exp(u):
    """1 - exp(u) for u <= 0, accurate near u = 0 (Kahan's expm1 trick; Triton has no expm1). The label's
    gradient g (1 - p_y) otherwise loses ~2**-24 / (1 - p_y) relative precision when p_y -> 1."""
    e = tl.exp(u)
    plain = (e == 1.0) | (u < -1.0)
    em1 = tl.where(e == 1.0, u, (e - 1.0) * u / tl.log(tl.where(plain, 0.5, e)))
    return -tl.where(u < -1.0, e - 1.0, em1)


@triton.jit
def to_storage(x, DTYPE: tl.constexpr, BF16_RTNE_BY_HAND: tl.constexpr):
    """Cast float32 to the gradient's storage dtype with round-to-nearest-even. Compiled Triton does RTNE
    by default; the CPU interpreter (triton 3.9) truncates float32 -> bfloat16, so under it we round by hand
    (classic bias-and-shift on the bit pattern) to test the numerics the GPU produces."""
    if BF16_RTNE_BY_HAND:
        bits = x.to(tl.uint32, bitcast=True)
        bits = bits + (0x7FFF + ((bits >> 16) & 1))
        return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        return x.to(DTYPE)


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


@triton.jit
def logits_grad_kernel(
    DLOGITS, LOGITS, LABELS, MAXZ, LOGL, LOGP, G, C, ENT,
    V, INNER, STRIDE_OUTER, STRIDE_INNER, D_STRIDE_OUTER, D_STRIDE_INNER,
    inv_temp, ignore_index,
    BLOCK: tl.constexpr, ENTROPY: tl.constexpr, BF16_RTNE_BY_HAND: tl.constexpr,
):
    """dz = [g (onehot_y - p) - c p (log p + H)] / T for one (row, vocab block), p = exp((z - m)/T - log l).
    DLOGITS may alias LOGITS: each program reads its block before writing it, no other program touches that
    block, and the label's log-prob comes from the forward (LOGP), not from a reload of z_y."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < V
    label = tl.load(LABELS + row)
    # One load site and one store site (tests/kernels/test_aot.py counts them in the PTX): an ignored row's
    # load is masked off entirely (no memory traffic) and its gradient forced to exactly 0.
    used = cols < tl.where(label != ignore_index, V, 0)
    row_ptr = LOGITS + row_offset(row, INNER, STRIDE_OUTER, STRIDE_INNER)
    z = tl.load(row_ptr + cols, mask=used, other=-float("inf")).to(tl.float32)
    m = tl.load(MAXZ + row)
    log_l = tl.load(LOGL + row)
    g = tl.load(G + row)
    logp_all = (z - m) * inv_temp - log_l
    p = tl.exp(logp_all)
    dz = tl.where(cols == label, g * one_minus_exp(tl.load(LOGP + row)), -g * p)
    if ENTROPY:
        c = tl.load(C + row)
        h = tl.load(ENT + row)
        # p = 0 (a -inf logit) contributes 0, not 0 * -inf.
        dz -= c * p * tl.where(p > 0.0, logp_all + h, 0.0)
    dz = tl.where(used, dz * inv_temp, 0.0)
    d_ptr = DLOGITS + row_offset(row, INNER, D_STRIDE_OUTER, D_STRIDE_INNER)
    tl.store(d_ptr + cols, to_storage(dz, DLOGITS.dtype.element_ty, BF16_RTNE_BY_HAND), mask=cmask)


#: CUDA grid limits: axis 0 (one program per row) takes up to 2**31 - 1 programs, axis 1 (the gradient kernel's
#: vocabulary blocks) up to 65,535. One sequence of any length is rows on axis 0, never a bound of its own.
MAX_GRID_ROWS = 2**31 - 1
MAX_GRID_VOCAB_BLOCKS = 65535


def check_grid(rows: int, vocab_blocks: int = 1) -> None:
    if rows > MAX_GRID_ROWS:
        raise ValueError(f"{rows} rows exceed the {MAX_GRID_ROWS} programs of a CUDA grid's first axis (one per row); "
                         f"split the call")
    if vocab_blocks > MAX_GRID_VOCAB_BLOCKS:
        raise ValueError(f"{vocab_blocks} vocabulary blocks exceed the {MAX_GRID_VOCAB_BLOCKS} of a CUDA grid's second "
                         f"axis; pass a larger block_size")


def check_device(logits: torch.Tensor) -> None:
    if logits.device.type == "cpu" and not interpreter_active():
        raise ValueError(
            "the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for the slow CPU interpreter); "
            "for CPU tensors use rlplugins.losses.logprobs_from_logits(..., backend='torch')"
        )


def launch_logits_grad(
    logits: torch.Tensor,
    labels: torch.Tensor,
    stats: "RowStats",
    g: torch.Tensor,
    c: torch.Tensor | None,
    inv_temp: float,
    ignore_index: int,
    inplace: bool,
    block_size: int | None,
) -> torch.Tensor:
    """Gradient w.r.t. ``logits`` (unit vocab stride, [N, V] or [B, T, V]) from the per-row g [and c]."""
    logits, rows, inner, so, si = row_layout(logits)
    vocab = logits.shape[-1]
    dlogits = logits if inplace else torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    if rows == 0:
        return dlogits
    _, _, _, dso, dsi = row_layout(dlogits)
    use_entropy = c is not None
    if use_entropy and stats.entropy.numel() != rows:
        raise RuntimeError("entropy gradient requested but the forward did not compute the entropy")
    cfg = vocab_launch_config(vocab, "bwd", block_size)
    grid = (rows, triton.cdiv(vocab, cfg.block))
    check_grid(*grid)
    logits_grad_kernel[grid](
        dlogits, logits, labels, stats.maxz, stats.log_l, stats.logp, g,
        c if use_entropy else g, stats.entropy if use_entropy else g,
        vocab, inner, so, si, dso, dsi,
        inv_temp, ignore_index,
        BLOCK=cfg.block, ENTROPY=use_entropy,
        BF16_RTNE_BY_HAND=interpreter_active() and dlogits.dtype == torch.bfloat16,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    return dlogits


class RowStats(NamedTuple):
    """Per-row float32 results of a forward pass (all O(N)); ``entropy`` is empty unless requested."""

    logp: torch.Tensor
    maxz: torch.Tensor
    log_l: torch.Tensor
    entropy: torch.Tensor


def empty_row_stats(rows: int, device: torch.device, return_entropy: bool) -> RowStats:
    def new(n: int) -> torch.Tensor:
        return torch.empty(n, dtype=torch.float32, device=device)

    return RowStats(new(rows), new(rows), new(rows), new(rows if return_entropy else 0))


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


def check_not_consumed(ctx, name: str) -> None:
    """An in-place backward destroys the logits: a second backward through the graph must fail loudly."""
    if ctx.inplace_backward:
        if ctx.consumed:
            raise RuntimeError(
                f"{name}(inplace_backward=True) already overwrote the logits with their gradient; "
                "a second backward through it (retain_graph) is not possible"
            )
        ctx.consumed = True


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
