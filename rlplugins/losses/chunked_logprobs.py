"""Selected-token log-probabilities (and entropy) from logits in pure PyTorch, a few rows at a time.

The torch path of ``backend="auto"`` on machines without Triton/CUDA (and the reference for memory
behaviour): the same contract and the same O(N) saved state as the Triton kernel ``token_logprobs``, so a
full float32 ``[N, V]`` log-softmax never exists. Per chunk of rows, in float32:

    x = z / T,  LSE = logsumexp(x),  logp = x_y - LSE,  H = -sum_j p_j log p_j
    backward: dz_j = [g (delta_jy - p_j) - c p_j (log p_j + H)] / T,   g = dL/dlogp, c = dL/dH

Only ``max z``, ``LSE`` and ``H`` ([N] float32) are saved; the backward recomputes each chunk's softmax. Two
float32 work buffers of one chunk each are allocated once per call (not per chunk: on CPU a large block freed and
re-allocated is unmapped and faulted in again), plus the gradient buffer, which ``inplace_backward`` replaces by
the logits buffer itself. On CPU a chunk is cache-sized (``DEFAULT_CPU_CHUNK_BYTES``); on other devices it is 64 MiB.

Passes over a chunk (CPU, no entropy): forward 5 (block maxima, ``z - max`` read straight from the logits, ``/T``,
``exp``, ``sum``; the label's log-prob is gathered, not a whole log-softmax row), backward 6 (``z - max``, ``/T``,
``- LSE``, ``exp``, ``* -g``, ``/T`` written straight into the gradient). The results are the same bits as the
straightforward sequence (copy, max with indices, ..., a full log-softmax chunk), which tests/kernels/
test_chunked_bits.py keeps as a frozen reference.
"""

from __future__ import annotations

from typing import Iterator

import torch

from ..tensor_checks import check_finite_rows, check_labels, check_logits, check_no_overlap, check_temperature

__all__ = ["check_temperature", "chunked_token_logprobs", "default_chunk_rows"]

#: Default size of one float32 chunk off the CPU: 64 MiB, i.e. ~110 rows at V = 151,936.
DEFAULT_CHUNK_BYTES = 64 * 2**20
#: Default size of one float32 chunk on CPU: the two work buffers stay in a core's L2 cache (3 rows at V = 151,936).
DEFAULT_CPU_CHUNK_BYTES = 2 * 2**20

_BLOCK = 256  # width of the blocks whose maxima locate each row's first maximum


def default_chunk_rows(vocab: int, device: torch.device | str = "cpu") -> int:
    """Rows per chunk: ``DEFAULT_CPU_CHUNK_BYTES`` of float32 on CPU, ``DEFAULT_CHUNK_BYTES`` elsewhere."""
    budget = DEFAULT_CPU_CHUNK_BYTES if torch.device(device).type == "cpu" else DEFAULT_CHUNK_BYTES
    return max(1, budget // (4 * max(vocab, 1)))


def _row_chunks(t: torch.Tensor, chunk_rows: int) -> Iterator[tuple[int, int, torch.Tensor]]:
    """(row_start, row_end, 2-D view) over the rows of [N, V] or [B, T, V] without copying (a strided
    [B, T, V] view such as ``logits[:, :-1]`` is walked one batch row at a time)."""
    if t.dim() == 2:
        for r0 in range(0, t.shape[0], chunk_rows):
            r1 = min(r0 + chunk_rows, t.shape[0])
            yield r0, r1, t[r0:r1]
        return
    b, tt, _ = t.shape
    for i in range(b):
        for c0 in range(0, tt, chunk_rows):
            c1 = min(c0 + chunk_rows, tt)
            yield i * tt + c0, i * tt + c1, t[i, c0:c1]


def _work_buffers(logits: torch.Tensor, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two float32 [rows of the largest chunk, V] buffers, allocated once per call."""
    longest = logits.shape[0] if logits.dim() == 2 else logits.shape[1]
    shape = (max(1, min(chunk_rows, longest)), logits.shape[-1])
    return (torch.empty(shape, dtype=torch.float32, device=logits.device),
            torch.empty(shape, dtype=torch.float32, device=logits.device))


def _row_max_first_index(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``view.max(dim=-1)`` (value, index of the first maximum) without its index-tracking reduction, which on CPU
    costs ~10-30x an ``amax``: maxima of blocks of ``_BLOCK`` columns, the first block that holds the row maximum,
    then the first position in it. A row holding NaN gets NaN and an arbitrary index (its results are NaN anyway)."""
    rows, vocab = view.shape
    blocks = vocab // _BLOCK
    if view.device.type != "cpu" or view.stride(-1) != 1 or blocks < 2:
        return view.max(dim=-1)
    block_max = view[:, : blocks * _BLOCK].view(rows, blocks, _BLOCK).amax(-1)
    if blocks * _BLOCK < vocab:
        block_max = torch.cat([block_max, view[:, blocks * _BLOCK:].amax(-1, keepdim=True)], dim=-1)
    row_max = block_max.amax(-1)
    first_block = (block_max == row_max.unsqueeze(-1)).to(torch.uint8).argmax(-1)
    cols = (first_block.unsqueeze(-1) * _BLOCK + torch.arange(_BLOCK, device=view.device)).clamp_(max=vocab - 1)
    within = (view.gather(-1, cols) == row_max.unsqueeze(-1)).to(torch.uint8).argmax(-1, keepdim=True)
    return row_max, cols.gather(-1, within).squeeze(-1)


def _forward(logits: torch.Tensor, labels: torch.Tensor, temperature: float, return_entropy: bool,
             ignore_index: int, chunk_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, entropy, max z, LSE - max z / T): the first two of shape ``logits.shape[:-1]`` (entropy zeros unless
    ``return_entropy``), the saved row statistics [rows]."""
    rows = labels.numel()
    dev = logits.device
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    logp = torch.empty(rows, dtype=torch.float32, device=dev)
    lse = torch.empty(rows, dtype=torch.float32, device=dev)  # LSE - max z / T
    maxz = torch.empty(rows, dtype=torch.float32, device=dev)
    ent = (torch.empty if return_entropy else torch.zeros)(rows, dtype=torch.float32, device=dev)
    with torch.no_grad():
        x_buf, e_buf = _work_buffers(logits, chunk_rows)
        for r0, r1, view in _row_chunks(logits, chunk_rows):
            x, e = x_buf[: r1 - r0], e_buf[: r1 - r0]
            row_max, arg_max = _row_max_first_index(view)
            row_max = row_max.to(torch.float32)  # exact: the maximum of the values converted one by one
            # Subtract the row max in raw units before scaling by 1/T: z - max is (nearly) exact, so log p
            # keeps its precision at |z/T| ~ 1e4, where z/T - LSE would lose ~|z/T| * 2**-24. The subtraction
            # reads the logits in their own dtype and computes in float32 (no separate float32 copy).
            torch.sub(view, row_max.unsqueeze(-1), out=x)
            x.div_(temperature)  # division: no 1/T rounding bias
            # LSE - max/T = log1p(sum of the other terms): the max's term is exactly 1, and log(1 + r) would
            # round r to float32 steps of 6e-8 for confident rows (p_max -> 1), and 1 - p_y with it.
            torch.exp(x, out=e)
            e.scatter_(-1, arg_max.unsqueeze(-1), 0.0)
            rel_lse = torch.log1p(e.sum(dim=-1))  # in [0, log V]
            # log p_y = x_y - rel_lse: the label's element only, not a whole log-softmax chunk.
            logp[r0:r1] = x.gather(-1, safe[r0:r1].unsqueeze(-1)).squeeze(-1).sub_(rel_lse)
            maxz[r0:r1] = row_max
            lse[r0:r1] = rel_lse
            if return_entropy:
                x.sub_(rel_lse.unsqueeze(-1))  # log p
                plogp = torch.exp(x, out=e).mul_(x)
                h = plogp.sum(-1)
                # -inf logits: p = 0 and 0 * -inf = NaN, whose true value is 0 (the only NaN a finite row makes,
                # so rows without one skip the pass).
                if dev.type != "cpu" or bool(h.isnan().any()):
                    h = plogp.nan_to_num_(nan=0.0).sum(-1)
                ent[r0:r1] = -h
        zero = torch.zeros((), dtype=torch.float32, device=dev)
        logp = torch.where(valid, logp, zero)
        if return_entropy:
            ent = torch.where(valid, ent, zero)
    shape = logits.shape[:-1]
    return logp.view(shape), ent.view(shape), maxz, lse


def _backward_into(out: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, logp: torch.Tensor,
                   maxz: torch.Tensor, lse: torch.Tensor, ent: torch.Tensor, dlogp: torch.Tensor | None,
                   dent: torch.Tensor | None, temperature: float, ignore_index: int, chunk_rows: int) -> None:
    """Write dL/dlogits into ``out`` (a fresh buffer, or ``logits`` itself for the in-place gradient)."""
    rows = labels.numel()
    dev = logits.device
    valid = labels != ignore_index
    logp, ent = logp.reshape(-1), ent.reshape(-1)
    g = torch.zeros(rows, dtype=torch.float32, device=dev) if dlogp is None else dlogp.reshape(-1).float()
    use_entropy = dent is not None
    c = dent.reshape(-1).float() if use_entropy else None
    zero = torch.zeros((), dtype=torch.float32, device=dev)
    g = torch.where(valid, g, zero)
    if use_entropy:
        c = torch.where(valid, c, zero)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    # 1 - p_y as -expm1(logp_y): exact where p_y -> 1 (1 - exp() would cancel).
    label_grad = g * -torch.expm1(logp)
    if use_entropy:
        p_y = logp.exp()
        label_grad = label_grad - c * p_y * (logp + ent)
    neg_g = -g
    all_valid = dev.type == "cpu" and bool(valid.all())
    inv_temp = 1.0 / temperature
    with torch.no_grad():
        x_buf, p_buf = _work_buffers(logits, chunk_rows)
        for (r0, r1, view), (_, _, out_view) in zip(_row_chunks(logits, chunk_rows), _row_chunks(out, chunk_rows)):
            x, p = x_buf[: r1 - r0], p_buf[: r1 - r0]
            torch.sub(view, maxz[r0:r1].unsqueeze(-1), out=x)
            x.div_(temperature).sub_(lse[r0:r1].unsqueeze(-1))  # log p
            torch.exp(x, out=p)
            if use_entropy:
                term = x.add_(ent[r0:r1].unsqueeze(-1)).mul_(p).nan_to_num_(nan=0.0)
                term.mul_(c[r0:r1].unsqueeze(-1))
                dz = p.mul_(neg_g[r0:r1].unsqueeze(-1)).sub_(term)
            else:
                dz = p.mul_(neg_g[r0:r1].unsqueeze(-1))
            dz.scatter_(-1, safe[r0:r1].unsqueeze(-1), label_grad[r0:r1].unsqueeze(-1))
            if not all_valid:  # ignored rows: exactly zero (0 / T is 0 below)
                chunk_valid = valid[r0:r1]
                if dev.type != "cpu" or not bool(chunk_valid.all()):
                    dz.masked_fill_(~chunk_valid.unsqueeze(-1), 0.0)
            # Scaled in float32 and rounded once to the gradient's dtype, straight into it (``out`` may alias
            # ``logits``: this chunk's logits were read above).
            torch.mul(dz, inv_temp, out=out_view)


# The chunked path as torch.library custom ops: opaque to torch.compile (the Python row loop is never traced), with
# fake implementations for shape propagation and a registered autograd formula. Eager calls run the same code.
@torch.library.custom_op("rlplugins::chunked_logprobs", mutates_args=())
def chunked_logprobs_op(logits: torch.Tensor, labels: torch.Tensor, temperature: float, return_entropy: bool,
                        inplace_backward: bool, ignore_index: int, chunk_rows: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logp, entropy, max z, relative LSE); ``inplace_backward`` only selects the backward op."""
    return _forward(logits, labels, temperature, return_entropy, ignore_index, chunk_rows)


@chunked_logprobs_op.register_fake
def _(logits, labels, temperature, return_entropy, inplace_backward, ignore_index, chunk_rows):
    shape = logits.shape[:-1]
    rows = labels.numel()
    f32 = dict(dtype=torch.float32, device=logits.device)
    return logits.new_empty(shape, **f32), logits.new_empty(shape, **f32), logits.new_empty(rows, **f32), \
        logits.new_empty(rows, **f32)


@torch.library.custom_op("rlplugins::chunked_logprobs_backward", mutates_args=())
def chunked_logprobs_backward_op(logits: torch.Tensor, labels: torch.Tensor, logp: torch.Tensor, maxz: torch.Tensor,
                                 lse: torch.Tensor, ent: torch.Tensor, dlogp: torch.Tensor | None,
                                 dent: torch.Tensor | None, temperature: float, ignore_index: int,
                                 chunk_rows: int) -> torch.Tensor:
    """dL/dlogits in a new buffer shaped and typed like ``logits``."""
    out = torch.empty_like(logits)
    _backward_into(out, logits, labels, logp, maxz, lse, ent, dlogp, dent, temperature, ignore_index, chunk_rows)
    return out


@chunked_logprobs_backward_op.register_fake
def _(logits, labels, logp, maxz, lse, ent, dlogp, dent, temperature, ignore_index, chunk_rows):
    return torch.empty_like(logits)


@torch.library.custom_op("rlplugins::chunked_logprobs_backward_", mutates_args=("logits",))
def chunked_logprobs_backward_inplace_op(logits: torch.Tensor, labels: torch.Tensor, logp: torch.Tensor,
                                         maxz: torch.Tensor, lse: torch.Tensor, ent: torch.Tensor,
                                         dlogp: torch.Tensor | None, dent: torch.Tensor | None, temperature: float,
                                         ignore_index: int, chunk_rows: int) -> None:
    """dL/dlogits written over ``logits`` (``inplace_backward=True``)."""
    _backward_into(logits, logits, labels, logp, maxz, lse, ent, dlogp, dent, temperature, ignore_index, chunk_rows)


@chunked_logprobs_backward_inplace_op.register_fake
def _(logits, labels, logp, maxz, lse, ent, dlogp, dent, temperature, ignore_index, chunk_rows):
    return None


def _setup_context(ctx, inputs, output):
    logits, labels, temperature, return_entropy, inplace_backward, ignore_index, chunk_rows = inputs
    logp, ent, maxz, lse = output
    ctx.save_for_backward(logits, labels, logp, maxz, lse, ent)
    ctx.temperature = temperature
    ctx.return_entropy = return_entropy
    ctx.inplace_backward = inplace_backward
    ctx.ignore_index = ignore_index
    ctx.chunk_rows = chunk_rows
    ctx.consumed = False
    ctx.set_materialize_grads(False)
    ctx.mark_non_differentiable(maxz, lse)
    if not return_entropy:
        ctx.mark_non_differentiable(ent)


def _backward(ctx, dlogp, dent, _dmaxz, _dlse):
    if ctx.inplace_backward:  # before saved_tensors, whose version check would fire first
        if ctx.consumed:
            raise RuntimeError("inplace_backward=True already overwrote the logits with their gradient; "
                               "a second backward through it (retain_graph) is not possible")
        ctx.consumed = True
    logits, labels, logp, maxz, lse, ent = ctx.saved_tensors
    dent = dent if ctx.return_entropy else None
    args = (labels, logp, maxz, lse, ent, dlogp, dent, ctx.temperature, ctx.ignore_index, ctx.chunk_rows)
    if ctx.inplace_backward:
        chunked_logprobs_backward_inplace_op(logits, *args)
        grad = logits
    else:
        grad = chunked_logprobs_backward_op(logits, *args)
    return grad, None, None, None, None, None, None


chunked_logprobs_op.register_autograd(_backward, setup_context=_setup_context)


def chunked_token_logprobs(
    logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = 1.0,
    return_entropy: bool = False,
    inplace_backward: bool = False,
    *,
    ignore_index: int = -100,
    chunk_rows: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Pure-torch twin of ``rlplugins.kernels.token_logprobs`` (same arguments, same results and gradients).

    ``logp_t = z_{t,y_t}/T - logsumexp_j(z_{t,j}/T)``; ``H_t = -sum_j p_tj log p_tj``. ``chunk_rows`` rows are
    processed at a time (default ``default_chunk_rows``: 2 MiB of float32 per chunk on CPU, 64 MiB elsewhere).
    Returns float32 ``logp`` (and ``entropy``) of shape ``labels.shape``; ignored rows give 0 and a zero gradient
    row.
    """
    flat = check_logits_and_labels(logits, labels, ignore_index)
    temperature = check_temperature(temperature)
    if inplace_backward:
        check_no_overlap("logits", logits)
    if chunk_rows is None:
        chunk_rows = default_chunk_rows(logits.shape[-1], logits.device)
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive int, got {chunk_rows!r}")
    logp, ent, _, _ = chunked_logprobs_op(
        logits, flat, temperature, bool(return_entropy), bool(inplace_backward), int(ignore_index), chunk_rows
    )
    check_finite_rows(logp.detach(), ent.detach() if return_entropy else None, labels != ignore_index)
    return (logp, ent) if return_entropy else logp


def check_logits_and_labels(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Check both (shared rules: ``rlplugins.tensor_checks``); return the labels flattened to int64."""
    return check_labels(labels, check_logits(logits), ignore_index)
