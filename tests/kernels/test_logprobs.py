"""token_logprobs against a float64 torch reference under the Triton CPU interpreter (tolerances: _helpers.py)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplugins.kernels import token_logprobs

import _kernel_helpers as H  # tests/conftest.py maps the name to the file

# Triton on CPU tensors (see conftest.py); the tests marked cuda are governed by that mark instead.
pytestmark = pytest.mark.interpreter

IGNORE = -100


@st.composite
def logits_case(draw, max_n: int = 6, max_v: int = 300):
    """Random logits [N, V] (any V, not only block multiples), labels with some ignored rows, T, dtype, block."""
    n = draw(st.integers(1, max_n))
    v = draw(st.integers(1, max_v))
    dtype = draw(st.sampled_from(H.DTYPES))
    temperature = draw(st.sampled_from([0.25, 0.6, 1.0, 1.7, 3.0]))
    scale = draw(st.sampled_from([0.1, 2.0, 8.0, 30.0]))
    shift = draw(st.sampled_from([0.0, -50.0, 40.0]))
    block = draw(st.sampled_from([None, 16, 64]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = (torch.randn(n, v, generator=g) * scale + shift).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    ignored = torch.rand(n, generator=g) < draw(st.sampled_from([0.0, 0.3]))
    labels[ignored] = IGNORE
    return logits, labels, temperature, block


def _run(logits, labels, temperature, block, entropy=True, inplace=False, gseed=0):
    z = logits.clone().requires_grad_()
    out = token_logprobs(z, labels, temperature, return_entropy=entropy, inplace_backward=inplace, block_size=block)
    logp, ent = out if entropy else (out, None)
    g = torch.Generator().manual_seed(gseed)
    up_lp = torch.randn(labels.shape, generator=g)
    up_h = torch.randn(labels.shape, generator=g)
    objective = (logp * up_lp).sum() + ((ent * up_h).sum() if entropy else 0.0)
    objective.backward()
    return z, logp, ent, up_lp, up_h


@settings(max_examples=H.examples(30))
@given(logits_case(), st.booleans())
def test_values_and_gradients_match_float64_reference(case, entropy):
    logits, labels, temperature, block = case
    z, logp, ent, up_lp, up_h = _run(logits, labels, temperature, block, entropy)
    z64, logp64, ent64 = H.ref_logprobs(logits, labels, temperature, IGNORE)
    atol = H.value_atol(logits, temperature)
    assert logp.dtype == torch.float32 and logp.shape == labels.shape
    H.assert_values_close(logp, logp64, atol, "logp")
    objective = (logp64 * up_lp.double()).sum()
    if entropy:
        H.assert_values_close(ent, ent64, atol, "entropy")
        objective = objective + (ent64 * up_h.double()).sum()
    objective.backward()
    assert z.grad.dtype == logits.dtype
    H.assert_grad_close(z.grad, z64.grad, logits.dtype)


@settings(max_examples=H.examples(30))
@given(logits_case())
def test_logp_nonpositive_and_entropy_within_zero_log_v(case):
    logits, labels, temperature, block = case
    with torch.no_grad():
        logp, ent = token_logprobs(logits, labels, temperature, return_entropy=True, block_size=block)
    assert bool((logp <= 0).all()), f"logp > 0: max {float(logp.max())}"
    assert bool((ent >= 0).all()), f"entropy < 0: min {float(ent.min())}"
    log_v = math.log(logits.shape[-1])
    assert bool((ent <= log_v + 1e-5).all()), f"entropy {float(ent.max())} > log V = {log_v}"


@pytest.mark.parametrize("dtype", H.DTYPES)
@pytest.mark.parametrize("kind", ["all_negative", "huge", "uniform"])
def test_extreme_logits_stay_finite_and_exact(dtype, kind):
    """All-negative rows (the max identity must be -inf-like, not 0: verl PR #7439), +-1e4 magnitudes, ties."""
    g = torch.Generator().manual_seed(3)
    n, v = 5, 203
    if kind == "all_negative":
        logits = -1e4 - torch.rand(n, v, generator=g) * 50
    elif kind == "huge":
        logits = torch.where(torch.rand(n, v, generator=g) < 0.5, 1e4, -1e4) + torch.randn(n, v, generator=g) * 3
    else:
        logits = torch.full((n, v), -7.0)
    logits = logits.to(dtype)
    labels = torch.randint(0, v, (n,), generator=g)
    for temperature in (0.5, 1.0):
        z, logp, ent, up_lp, up_h = _run(logits, labels, temperature, 64)
        assert bool(torch.isfinite(logp).all() and torch.isfinite(ent).all() and torch.isfinite(z.grad).all())
        z64, logp64, ent64 = H.ref_logprobs(logits, labels, temperature, IGNORE)
        atol = H.value_atol(logits, temperature)
        H.assert_values_close(logp, logp64, atol, "logp")
        H.assert_values_close(ent, ent64, atol, "entropy")
        ((logp64 * up_lp.double()).sum() + (ent64 * up_h.double()).sum()).backward()
        H.assert_grad_close(z.grad, z64.grad, dtype)
        if kind == "uniform":
            torch.testing.assert_close(ent, torch.full_like(ent, math.log(v)), rtol=0, atol=1e-5)


def test_minus_inf_logits_are_a_masked_vocabulary():
    """-inf entries (e.g. a masked vocabulary slice, even a whole first block) have p = 0 and zero gradient."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(4, 100, generator=g)
    logits[:, :40] = -float("inf")
    logits[1, 60:] = -float("inf")
    labels = torch.tensor([50, 45, 99, 41])
    z, logp, ent, up_lp, up_h = _run(logits, labels, 1.0, 16)
    assert bool(torch.isfinite(logp).all() and torch.isfinite(ent).all() and torch.isfinite(z.grad).all())
    assert bool((z.grad[:, :40] == 0).all()) and bool((z.grad[1, 60:] == 0).all())
    finite = torch.where(torch.isinf(logits), torch.full_like(logits, -1e30), logits)
    z64, logp64, ent64 = H.ref_logprobs(finite, labels, 1.0)
    H.assert_values_close(logp, logp64, 1e-5, "logp")
    H.assert_values_close(ent, ent64, 1e-5, "entropy")


@pytest.mark.parametrize("inplace", [False, True])
def test_ignored_rows_get_exactly_zero(inplace):
    g = torch.Generator().manual_seed(5)
    logits = (torch.randn(6, 77, generator=g) * 4).to(torch.bfloat16)
    labels = torch.tensor([3, IGNORE, 76, IGNORE, 0, IGNORE])
    z, logp, ent, _, _ = _run(logits, labels, 0.7, 32, inplace=inplace)
    ignored = labels == IGNORE
    assert bool((logp[ignored] == 0).all()) and bool((ent[ignored] == 0).all())
    assert bool((z.grad[ignored] == 0).all())
    assert bool((z.grad[~ignored] != 0).any())


def test_all_rows_ignored_and_empty_input():
    logits = torch.randn(3, 10, requires_grad=True)
    labels = torch.full((3,), IGNORE)
    logp, ent = token_logprobs(logits, labels, return_entropy=True)
    (logp.sum() + ent.sum()).backward()
    assert bool((logp == 0).all()) and bool((logits.grad == 0).all())
    empty = torch.randn(0, 10, requires_grad=True)
    out = token_logprobs(empty, torch.zeros(0, dtype=torch.long))
    out.sum().backward()
    assert out.shape == (0,) and empty.grad.shape == (0, 10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_runs_are_bitwise_identical(dtype):
    g = torch.Generator().manual_seed(6)
    logits = (torch.randn(5, 333, generator=g) * 5).to(dtype)
    labels = torch.randint(0, 333, (5,), generator=g)
    a = _run(logits, labels, 0.9, 64)
    b = _run(logits, labels, 0.9, 64)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])
    assert torch.equal(a[0].grad, b[0].grad)


def test_block_size_does_not_change_the_result_beyond_rounding():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(4, 1000, generator=g) * 6
    labels = torch.randint(0, 1000, (4,), generator=g)
    ref = _run(logits, labels, 1.3, None)
    for block in (32, 256):
        got = _run(logits, labels, 1.3, block)
        torch.testing.assert_close(got[1], ref[1], rtol=0, atol=2e-6)
        torch.testing.assert_close(got[2], ref[2], rtol=0, atol=2e-6)
        torch.testing.assert_close(got[0].grad, ref[0].grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_inplace_backward_writes_the_gradient_into_the_logits(dtype):
    g = torch.Generator().manual_seed(8)
    logits = (torch.randn(4, 150, generator=g) * 3).to(dtype)
    labels = torch.tensor([1, IGNORE, 149, 7])
    ref = _run(logits, labels, 0.8, 32, inplace=False)
    base = logits.clone().requires_grad_()
    z = base * 1  # a non-leaf, like lm_head's output: its gradient is not copied by AccumulateGrad
    logp, ent = token_logprobs(z, labels, 0.8, return_entropy=True, inplace_backward=True, block_size=32)
    up_lp, up_h = ref[3], ref[4]
    ((logp * up_lp).sum() + (ent * up_h).sum()).backward()
    assert torch.equal(base.grad, ref[0].grad)
    assert torch.equal(z.detach(), ref[0].grad), "the gradient must have been written into the logits buffer"
    # A second backward through the same graph would read the overwritten logits: refuse it.
    leaf2 = logits.clone().requires_grad_()
    lp2 = token_logprobs(leaf2, labels, 0.8, inplace_backward=True)
    lp2.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already overwrote"):
        lp2.sum().backward()


def test_strided_3d_view_is_read_in_place():
    """HF-style logits [B, L+1, V] sliced to [:, :-1]: no copy, same result as the contiguous tensor."""
    g = torch.Generator().manual_seed(9)
    full = torch.randn(2, 5, 90, generator=g) * 3
    labels = torch.randint(0, 90, (2, 4), generator=g)
    labels[1, 3] = IGNORE
    leaf = full.clone().requires_grad_()
    view = leaf[:, :-1]
    assert not view.is_contiguous()
    logp, ent = token_logprobs(view, labels, 1.1, return_entropy=True, block_size=32)
    (logp.sum() + ent.sum()).backward()
    z64, logp64, ent64 = H.ref_logprobs(full[:, :-1], labels, 1.1)
    H.assert_values_close(logp, logp64, 1e-5, "logp")
    H.assert_values_close(ent, ent64, 1e-5, "entropy")
    (logp64.sum() + ent64.sum()).backward()
    H.assert_grad_close(leaf.grad[:, :-1], z64.grad, torch.float32)
    assert bool((leaf.grad[:, -1] == 0).all())


def test_temperature_is_reapplied_in_backward():
    """Fast-LLM #228: a backward that forgets T gives the gradient of the T = 1 objective."""
    g = torch.Generator().manual_seed(10)
    logits = torch.randn(3, 50, generator=g) * 2
    labels = torch.randint(0, 50, (3,), generator=g)
    z, _, _, up_lp, _ = _run(logits, labels, 2.5, 16, entropy=False)
    z1, *_ = _run(logits, labels, 1.0, 16, entropy=False)
    z64, logp64, _ = H.ref_logprobs(logits, labels, 2.5)
    (logp64 * up_lp.double()).sum().backward()
    H.assert_grad_close(z.grad, z64.grad, torch.float32)
    assert not torch.allclose(z.grad, z1.grad)


def test_bad_inputs_raise_clear_errors(monkeypatch):
    logits = torch.randn(3, 10)
    labels = torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match="logits must be float32, bfloat16 or float16"):
        token_logprobs(logits.double(), labels)
    with pytest.raises(ValueError, match=r"logits must have shape \[N, V\]"):
        token_logprobs(torch.randn(10), labels)
    with pytest.raises(ValueError, match=r"labels must have shape \(3,\)"):
        token_logprobs(logits, labels[:2])
    with pytest.raises(TypeError, match="labels must be an int64 or int32 tensor"):
        token_logprobs(logits, labels.float())
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        token_logprobs(logits, torch.tensor([0, 10, 2]))
    with pytest.raises(ValueError, match="temperature must be a finite number >= 1e-06"):
        token_logprobs(logits, labels, temperature=0.0)
    with pytest.raises(ValueError, match="block_size must be a power of two"):
        token_logprobs(logits, labels, block_size=24)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="need CUDA tensors"):
        token_logprobs(logits, labels)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_large_vocab_matches_reference(dtype):
    """Compiled kernels (the interpreter proves the math, not the compilation): V = 151,936, odd N."""
    g = torch.Generator(device="cuda").manual_seed(11)
    n, v = 67, 151_936
    logits = (torch.randn(n, v, generator=g, device="cuda") * 4).to(dtype)
    labels = torch.randint(0, v, (n,), generator=g, device="cuda")
    labels[5] = IGNORE
    for inplace in (False, True):
        z = logits.clone().requires_grad_()
        logp, ent = token_logprobs(z, labels, 0.9, return_entropy=True, inplace_backward=inplace)
        up = torch.randn(n, device="cuda", generator=g)
        ((logp + 0.1 * ent) * up).sum().backward()
        z64, logp64, ent64 = H.ref_logprobs(logits, labels, 0.9)
        ((logp64 + 0.1 * ent64) * up.double()).sum().backward()
        H.assert_values_close(logp, logp64, H.value_atol(logits, 0.9), "logp")
        H.assert_values_close(ent, ent64, H.value_atol(logits, 0.9), "entropy")
        H.assert_grad_close(z.grad, z64.grad, dtype)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_row_offsets_beyond_int32():
    """N x V > 2**31 elements (rows past ~14.1k at V = 151,936): offsets must be int64."""
    n, v = 14_200, 151_936
    if torch.cuda.get_device_properties(0).total_memory < 3 * n * v * 2:
        pytest.skip("not enough GPU memory")
    logits = torch.zeros(n, v, dtype=torch.bfloat16, device="cuda")
    labels = torch.zeros(n, dtype=torch.long, device="cuda")
    logits[-1, 123] = 10.0
    labels[-1] = 123
    z = logits.requires_grad_()
    logp = token_logprobs(z, labels, inplace_backward=True)
    expected = 10.0 - math.log(math.exp(10.0) + v - 1)
    assert abs(float(logp[-1]) - expected) < 1e-4
    logp[-1:].sum().backward()
    assert float(z.grad[-1, 123]) == pytest.approx(1 - math.exp(expected), rel=1e-2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_inplace_backward_saves_one_logits_buffer():
    n, v = 2048, 151_936
    hidden = torch.randn(n, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(v, 64, device="cuda", dtype=torch.bfloat16) * 0.1
    labels = torch.randint(0, v, (n,), device="cuda")
    logits_bytes = n * v * 2
    peaks = {}
    for inplace in (False, True):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        logits = hidden @ weight.t()
        token_logprobs(logits, labels, inplace_backward=inplace).sum().backward()
        del logits
        torch.cuda.synchronize()
        peaks[inplace] = torch.cuda.max_memory_allocated() - base
        hidden.grad = None
    assert peaks[False] - peaks[True] > 0.9 * logits_bytes
    assert peaks[True] < 1.1 * logits_bytes + 64 * n * 2 * 4


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_confident_rows_keep_float32_gradient_precision(backend):
    """p_y -> 1 (most sampled tokens): 1 - p_y and log l = log1p(...) must not round to float32 steps around 1.
    A naive log(l) / 1 - exp(logp) gives ~1e-3 relative error on the label's gradient here."""
    from rlplugins.losses.chunked_logprobs import chunked_token_logprobs

    fn = token_logprobs if backend == "triton" else chunked_token_logprobs
    g = torch.Generator().manual_seed(12)
    logits = torch.randn(3, 50, generator=g) * 0.5
    labels = torch.tensor([7, 0, 49])
    logits[torch.arange(3), labels] += torch.tensor([3.0, 4.0, 5.0])  # 1 - p_y ~ 2e-3, 8e-5, 3e-6 at T = 0.3
    z = logits.clone().requires_grad_()
    logp = fn(z, labels, 0.3)
    logp.sum().backward()
    z64, logp64, _ = H.ref_logprobs(logits, labels, 0.3)
    logp64.sum().backward()
    torch.testing.assert_close(logp.double(), logp64, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-5, atol=1e-12)
