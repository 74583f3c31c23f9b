"""The CPU chunked log-prob path (rlplugins/losses/chunked_logprobs.py) against a frozen copy of the algorithm it
replaced (the 64 MiB-chunk version before issue 16): log-probs, entropies and logits gradients must be the same bits
for float32 / bfloat16 / float16 logits, with ignored rows, entropy on or off, in-place gradients on or off, a ragged
last chunk, strided [B, T, V] views, ties at the row max and -inf logits; plus accuracy against float64.
"""

from __future__ import annotations

import pytest
import torch

from rlplugins.losses.chunked_logprobs import chunked_token_logprobs, default_chunk_rows


# ------------------------------------------------------------------ frozen copy of the previous algorithm (reference)


def _old_row_chunks(t, chunk_rows):
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


def _old_forward(logits, labels, temperature, return_entropy, ignore_index, chunk_rows):
    rows = labels.numel()
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    logp = torch.zeros(rows, dtype=torch.float32)
    lse = torch.zeros(rows, dtype=torch.float32)
    maxz = torch.zeros(rows, dtype=torch.float32)
    ent = torch.zeros(rows, dtype=torch.float32)
    with torch.no_grad():
        for r0, r1, view in _old_row_chunks(logits, chunk_rows):
            x = view.to(torch.float32, copy=True)
            row_max, arg_max = x.max(dim=-1)
            x.sub_(row_max.unsqueeze(-1)).div_(temperature)
            e = x.exp()
            e.scatter_(-1, arg_max.unsqueeze(-1), 0.0)
            rel_lse = torch.log1p(e.sum(dim=-1))
            x.sub_(rel_lse.unsqueeze(-1))
            logp[r0:r1] = x.gather(-1, safe[r0:r1].unsqueeze(-1)).squeeze(-1)
            maxz[r0:r1] = row_max
            lse[r0:r1] = rel_lse
            if return_entropy:
                p = x.exp()
                ent[r0:r1] = -p.mul_(x).nan_to_num_(nan=0.0).sum(-1)
        zero = torch.zeros((), dtype=torch.float32)
        logp = torch.where(valid, logp, zero)
        if return_entropy:
            ent = torch.where(valid, ent, zero)
    shape = logits.shape[:-1]
    return logp.view(shape), ent.view(shape), maxz, lse


def _old_backward_into(out, logits, labels, logp, maxz, lse, ent, dlogp, dent, temperature, ignore_index, chunk_rows):
    rows = labels.numel()
    valid = labels != ignore_index
    logp, ent = logp.reshape(-1), ent.reshape(-1)
    g = torch.zeros(rows, dtype=torch.float32) if dlogp is None else dlogp.reshape(-1).float()
    use_entropy = dent is not None
    c = dent.reshape(-1).float() if use_entropy else None
    zero = torch.zeros((), dtype=torch.float32)
    g = torch.where(valid, g, zero)
    if use_entropy:
        c = torch.where(valid, c, zero)
    safe = torch.where(valid, labels, torch.zeros_like(labels))
    label_grad = g * -torch.expm1(logp)
    if use_entropy:
        p_y = logp.exp()
        label_grad = label_grad - c * p_y * (logp + ent)
    inv_temp = 1.0 / temperature
    with torch.no_grad():
        for (r0, r1, view), (_, _, out_view) in zip(_old_row_chunks(logits, chunk_rows),
                                                    _old_row_chunks(out, chunk_rows)):
            x = view.to(torch.float32, copy=True).sub_(maxz[r0:r1].unsqueeze(-1))
            x.div_(temperature).sub_(lse[r0:r1].unsqueeze(-1))
            p = x.exp()
            if use_entropy:
                term = x.add_(ent[r0:r1].unsqueeze(-1)).mul_(p).nan_to_num_(nan=0.0)
                term.mul_(c[r0:r1].unsqueeze(-1))
                dz = p.mul_(-g[r0:r1].unsqueeze(-1)).sub_(term)
            else:
                dz = p.mul_(-g[r0:r1].unsqueeze(-1))
            dz.scatter_(-1, safe[r0:r1].unsqueeze(-1), label_grad[r0:r1].unsqueeze(-1))
            dz.mul_(inv_temp)
            dz.masked_fill_(~valid[r0:r1].unsqueeze(-1), 0.0)
            out_view.copy_(dz)


class _Old(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, labels, temperature, return_entropy, ignore_index, chunk_rows):
        logp, ent, maxz, lse = _old_forward(logits, labels.reshape(-1), temperature, return_entropy, ignore_index,
                                            chunk_rows)
        ctx.save_for_backward(logits, labels.reshape(-1), logp, maxz, lse, ent)
        ctx.args = (temperature, return_entropy, ignore_index, chunk_rows)
        ctx.set_materialize_grads(False)
        return logp, ent

    @staticmethod
    def backward(ctx, dlogp, dent):
        logits, labels, logp, maxz, lse, ent = ctx.saved_tensors
        temperature, return_entropy, ignore_index, chunk_rows = ctx.args
        out = torch.empty_like(logits)
        _old_backward_into(out, logits, labels, logp, maxz, lse, ent, dlogp, dent if return_entropy else None,
                           temperature, ignore_index, chunk_rows)
        return out, None, None, None, None, None


OLD_DEFAULT_CHUNK_ROWS = lambda vocab: max(1, 64 * 2**20 // (4 * vocab))  # noqa: E731 - the previous default


# --------------------------------------------------------------------------------------------------------- inputs


def _logits(shape, dtype, seed, special=True):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g) * 3
    flat = z.view(-1, shape[-1])
    if special:
        flat[0] *= 0.0  # every entry ties at the max
        flat[1, 5:9] = flat[1].max() + 1.0  # a four-way tie at the max
        flat[2, 3] = 60.0  # a confident row: p_max -> 1
        flat[3, ::7] = float("-inf")  # -inf logits (p = 0, entropy term 0 * -inf)
        flat[4, [shape[-1] // 2, shape[-1] - 3]] = 30.0  # a tie across blocks of columns, the first not in block 0
        flat[5, -1] = 30.0  # the maximum in the last (partial) block
    return z.to(dtype)


def _labels(shape, vocab, seed, ignore):
    g = torch.Generator().manual_seed(seed + 1)
    labels = torch.randint(0, vocab, shape, generator=g)
    flat = labels.view(-1)
    flat[2] = 3  # the confident row's label is its max
    flat[3] = 1  # a finite logit of the -inf row
    if ignore == "some":
        flat[4::5] = -100
    elif ignore == "chunk":
        flat[6:12] = -100  # a run of ignored rows that covers whole chunks
    return labels


def _run_new(z, labels, temperature, entropy, inplace, chunk, uses):
    base = z.clone().requires_grad_()
    leaf = base * 1 if inplace else base  # in place: the gradient is written into a non-leaf buffer
    out = chunked_token_logprobs(leaf, labels, temperature, entropy, inplace, chunk_rows=chunk)
    logp, ent = out if entropy else (out, None)
    _backward(logp, ent, uses)
    return logp.detach(), None if ent is None else ent.detach(), base.grad


def _run_old(z, labels, temperature, entropy, chunk, uses):
    base = z.clone().requires_grad_()
    logp, ent = _Old.apply(base, labels, temperature, entropy, -100, chunk)
    _backward(logp, ent if entropy else None, uses)
    return logp.detach(), ent.detach() if entropy else None, base.grad


def _backward(logp, ent, uses):
    g = torch.Generator().manual_seed(7)
    loss = torch.zeros(())
    if "logp" in uses:
        loss = loss + (logp * torch.randn(logp.shape, generator=g)).sum()
    if ent is not None and "ent" in uses:
        loss = loss + (ent * torch.randn(ent.shape, generator=g)).sum()
    loss.backward()


def _same_bits(a, b, what):
    assert a.dtype == b.dtype and a.shape == b.shape, what
    ints = {1: torch.int8, 2: torch.int16, 4: torch.int32}
    same = torch.equal(a.contiguous().view(ints[a.element_size()]), b.contiguous().view(ints[b.element_size()]))
    assert same, f"{what}: {int((a != b).sum())} values differ, max |diff| {float((a.float() - b.float()).abs().max())}"


DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("entropy,uses", [(False, ("logp",)), (True, ("logp", "ent")), (True, ("ent",)),
                                          (True, ("logp",))])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("ignore", ["none", "some", "chunk"])
def test_same_bits_as_the_previous_path_flat(dtype, entropy, uses, inplace, ignore):
    n, v, chunk = 23, 1031, 4  # 23 rows in chunks of 4: a ragged last chunk of 3
    z = _logits((n, v), dtype, seed=DTYPES.index(dtype) * 10 + len(ignore))
    labels = _labels((n,), v, 3, ignore)
    new = _run_new(z, labels, 0.7, entropy, inplace, chunk, uses)
    old = _run_old(z, labels, 0.7, entropy, chunk, uses)
    for a, b, what in zip(new, old, ("logp", "entropy", "dlogits")):
        if a is not None:
            _same_bits(a, b, what)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("chunk", [None, 1, 5, 64])
def test_same_bits_as_the_previous_path_strided_3d(dtype, inplace, chunk):
    """HF's ``logits[:, :-1]`` view, temperature 1.3; the previous path at its own default chunk (64 MiB): the
    bits do not depend on how rows are chunked."""
    b, t, v = 3, 9, 777
    full = _logits((b, t + 1, v), dtype, seed=11)
    labels = _labels((b, t), v, 5, "some")
    z = full[:, :-1]

    def run(fn_new):
        base = full.clone().requires_grad_()
        view = (base * 1)[:, :-1] if inplace and fn_new else base[:, :-1]
        if fn_new:
            logp, ent = chunked_token_logprobs(view, labels, 1.3, True, inplace, chunk_rows=chunk)
        else:
            logp, ent = _Old.apply(view, labels, 1.3, True, -100, OLD_DEFAULT_CHUNK_ROWS(v))
        _backward(logp, ent, ("logp", "ent"))
        return logp.detach(), ent.detach(), base.grad

    assert z.stride(0) == (t + 1) * v
    for a, b_, what in zip(run(True), run(False), ("logp", "entropy", "dlogits")):
        _same_bits(a, b_, what)


def test_default_chunk_is_cache_sized_on_cpu_and_unchanged_elsewhere():
    v = 151936
    rows = default_chunk_rows(v)
    assert 1 <= rows and rows * v * 4 <= 4 * 2**20, "a CPU chunk of float32 rows must fit in a few MiB of cache"
    assert default_chunk_rows(v, torch.device("cuda")) == OLD_DEFAULT_CHUNK_ROWS(v)
    assert default_chunk_rows(10**8) == 1


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
def test_log_probs_are_float32_accurate_against_float64(dtype):
    n, v = 40, 151936 // 8
    z = _logits((n, v), dtype, seed=3, special=False)
    z.view(-1, v)[::4, 17] = 40.0  # confident rows
    labels = _labels((n,), v, 9, "none")
    labels[::8] = 17
    logp, ent = chunked_token_logprobs(z, labels, 0.9, True)
    ref = torch.log_softmax(z.double() / 0.9, -1)
    ref_logp = ref.gather(-1, labels[:, None]).squeeze(-1)
    ref_ent = -(ref.exp() * ref).sum(-1)
    assert float((logp.double() - ref_logp).abs().max()) <= 1e-5
    assert float((ent.double() - ref_ent).abs().max()) <= 1e-4
