"""The row machinery shared by every logits kernel (flash-attention's Triton cross-entropy is organised the same way).

Device functions: ``row_offset`` (int64 start of a row of a strided [B, T, V] or [N, V] tensor),
``row_softmax_stats`` (one streaming pass: max, log-normaliser, entropy), ``row_label_logprob``, ``one_minus_exp``,
``to_storage``; the gradient kernel ``logits_grad_kernel`` (2 reads + 1 write per row with the forward) and its
launcher, which the log-prob op (logprobs.py) and the fused policy-loss op (fused_loss.py) share: any loss that
depends on the logits only through ``logp`` and ``H`` reduces to two per-row scalars ``g = dL/dlogp`` and
``c = dL/dH``. Also the per-row statistics a forward saves (``RowStats``), the grid and device checks, and the
in-place backward guard. Each op file holds its own forward kernel and entry point.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._utils import interpreter_active, row_layout, vocab_launch_config

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


def check_not_consumed(ctx, name: str) -> None:
    """An in-place backward destroys the logits: a second backward through the graph must fail loudly."""
    if ctx.inplace_backward:
        if ctx.consumed:
            raise RuntimeError(
                f"{name}(inplace_backward=True) already overwrote the logits with their gradient; "
                "a second backward through it (retain_graph) is not possible"
            )
        ctx.consumed = True
