"""The core's logits-in entry points (rlplugins/losses/from_logits.py, chunked_logprobs.py): the chunked torch
path against float64, its memory property, and the backends against each other and against the core."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from rlplugins.kernels import has_gate
from rlplugins.losses import compute_policy_loss, get_policy_loss, list_policy_losses
from rlplugins.losses.chunked_logprobs import chunked_token_logprobs
from rlplugins.losses.from_logits import logprobs_from_logits, policy_loss_from_logits, resolve_backend

import _kernel_helpers as H  # tests/conftest.py maps the name to the file

IGNORE = -100


@st.composite
def logits_case(draw):
    shape3 = draw(st.booleans())
    n = draw(st.integers(1, 7))
    v = draw(st.integers(1, 300))
    dtype = draw(st.sampled_from(H.DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    scale = draw(st.sampled_from([0.1, 3.0, 30.0, 1e4]))
    shape = (2, n, v) if shape3 else (n, v)
    logits = (torch.randn(shape, generator=g) * scale).to(dtype)
    labels = torch.randint(0, v, shape[:-1], generator=g)
    labels[torch.rand(shape[:-1], generator=g) < 0.2] = IGNORE
    return logits, labels, draw(st.sampled_from([0.3, 1.0, 2.0])), draw(st.sampled_from([None, 1, 3]))


@given(logits_case(), st.booleans())
def test_chunked_torch_path_matches_float64(case, inplace):
    logits, labels, temperature, chunk = case
    base = logits.clone().requires_grad_()
    z = base * 1 if inplace else base
    logp, ent = chunked_token_logprobs(z, labels, temperature, True, inplace, chunk_rows=chunk)
    g = torch.Generator().manual_seed(0)
    up1, up2 = torch.randn(labels.shape, generator=g), torch.randn(labels.shape, generator=g)
    ((logp * up1).sum() + (ent * up2).sum()).backward()
    z64, logp64, ent64 = H.ref_logprobs(logits, labels, temperature)
    H.assert_values_close(logp, logp64, 1e-5, "logp")
    H.assert_values_close(ent, ent64, 1e-5, "entropy")
    assert bool((logp <= 0).all()) and bool((ent >= 0).all())
    assert bool((ent <= math.log(logits.shape[-1]) + 1e-5).all())
    ((logp64 * up1.double()).sum() + (ent64 * up2.double()).sum()).backward()
    H.assert_grad_close(base.grad, z64.grad, logits.dtype)
    assert bool((base.grad[labels == IGNORE] == 0).all())


@pytest.mark.interpreter
@settings(max_examples=H.examples(15))
@given(logits_case())
def test_torch_and_triton_backends_agree(case):
    logits, labels, temperature, _ = case
    outs = {}
    for backend in ("torch", "triton"):
        z = logits.clone().requires_grad_()
        lp, ent = logprobs_from_logits(z, labels, temperature=temperature, return_entropy=True, backend=backend)
        (lp.sum() + 0.5 * ent.sum()).backward()
        outs[backend] = (lp, ent, z.grad)
    H.assert_values_close(outs["triton"][0], outs["torch"][0], 1e-5, "logp")
    H.assert_values_close(outs["triton"][1], outs["torch"][1], 1e-5, "entropy")
    # Both round to the storage dtype: allow one ulp on each side.
    H.assert_grad_close(outs["triton"][2], outs["torch"][2].double(), logits.dtype)


class _LargestFloat32(TorchDispatchMode):
    """Records the largest float32 tensor any op produces (views of existing tensors included)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("inplace", [False, True])
def test_chunked_path_never_materialises_a_float32_row_block_beyond_its_chunk(inplace):
    n, v, chunk = 64, 3000, 8
    logits = torch.randn(n, v).to(torch.bfloat16)
    labels = torch.randint(0, v, (n,))
    base = logits.clone().requires_grad_()
    z = base * 1
    with _LargestFloat32() as probe:
        logp, ent = chunked_token_logprobs(z, labels, 0.7, True, inplace, chunk_rows=chunk)
        (logp.sum() + ent.sum()).backward()
    assert probe.largest <= chunk * v, f"a float32 tensor of {probe.largest} elements (> {chunk} x {v})"
    # The probe can fail: the eager log_softmax path materialises n x v float32 values.
    with _LargestFloat32() as naive:
        lp = torch.log_softmax(z.detach().requires_grad_().float() / 0.7, -1).gather(-1, labels[:, None])
        lp.sum().backward()
    assert naive.largest >= n * v


LOSSES = list_policy_losses()


@pytest.mark.interpreter
@pytest.mark.parametrize("name", LOSSES)
def test_policy_loss_from_logits_equals_the_core_on_every_backend(name):
    g = torch.Generator().manual_seed(LOSSES.index(name))
    b, t, v = 3, 5, 70
    logits = (torch.randn(b, t, v, generator=g) * 3).to(torch.bfloat16)
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) < 0.8
    mask[0, 0] = True
    labels[~mask] = 10**6  # garbage where masked
    with torch.no_grad():
        _, lp64, _ = H.ref_logprobs(logits, torch.where(mask, labels, 0), 0.9)
    old = lp64.float() + 0.3 * torch.randn(b, t, generator=g)
    adv = torch.randn(b, 1, generator=g).expand(b, t).contiguous()
    weights = torch.rand(b, t, generator=g) + 0.5
    gbi = {"dp_size": 2, "batch_num_tokens": 40, "global_batch_size": 6}
    mode = "seq-mean-token-mean" if name in ("sapo", "gspo") else "token-mean"
    common = dict(labels=labels, old_log_prob=old, advantages=adv, response_mask=mask, loss_agg_mode=mode,
                  temperature=0.9, rollout_is_weights=weights, global_batch_info=gbi, return_entropy=True)

    z64, lp64, ent64 = H.ref_logprobs(logits, torch.where(mask, labels, 0), 0.9)
    lp64.retain_grad()
    ref_loss, ref_metrics = compute_policy_loss(name, log_prob=lp64, old_log_prob=old.double(), advantages=adv.double(),
                                                response_mask=mask, loss_agg_mode=mode, rollout_is_weights=weights.double(),
                                                global_batch_info=gbi)
    (ref_loss - 0.01 * torch.where(mask, ent64, 0).sum()).backward()

    paths = set()
    for backend, fused in (("torch", None), ("triton", None), ("triton", False)):
        z = logits.clone().requires_grad_()
        out = policy_loss_from_logits(name, logits=z, backend=backend, fused=fused, **common)
        paths.add(out.path)
        (out.loss - 0.01 * torch.where(mask, out.entropy, 0).sum()).backward()
        H.assert_values_close(out.loss, ref_loss, H.loss_atol(ref_loss, lp64), f"{backend}/{out.path} loss")
        for key, value in ref_metrics.items():
            assert out.metrics[key] == pytest.approx(value, rel=1e-4, abs=1e-5), f"{out.path}: metric {key}"
        stable = H.stable_grad_rows(name, get_policy_loss(name).make_config(None), lp64.detach(), old.double(),
                                    adv.double(), mask=mask) | ~mask
        H.assert_grad_close(z.grad, z64.grad, torch.bfloat16, rows=stable)
        assert bool((z.grad[~mask] == 0).all())
    # Losses with a Triton gate run fused; the others (gspo) take the composed Triton path.
    expected = {"torch", "triton"} | ({"triton-fused"} if has_gate(name) else set())
    assert paths == expected


@pytest.mark.interpreter
def test_backend_resolution_and_errors(monkeypatch):
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="backend must be one of auto, torch, triton"):
        resolve_backend("cuda", torch.device("cpu"))
    logits = torch.randn(1, 2, 5)
    kw = dict(logits=logits, labels=torch.zeros(1, 2, dtype=torch.long), old_log_prob=torch.zeros(1, 2),
              advantages=torch.zeros(1, 2), response_mask=torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="fused=True needs backend='triton'"):
        policy_loss_from_logits("maspo", backend="torch", fused=True, **kw)
    with pytest.raises(ValueError, match="fused=True but loss 'gspo' has no Triton gate"):
        policy_loss_from_logits("gspo", backend="triton", fused=True, **kw)
    with pytest.raises(ValueError, match=r"logits must be \[batch, response_len, vocab\]"):
        policy_loss_from_logits("maspo", **{**kw, "logits": logits[0]})
    with pytest.raises(ValueError, match="chunk_rows must be a positive int"):
        chunked_token_logprobs(logits, kw["labels"], chunk_rows=0)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="backend='triton' needs CUDA tensors"):
        policy_loss_from_logits("maspo", backend="triton", **kw)
    out = policy_loss_from_logits("maspo", backend="auto", **kw)
    assert out.path == "torch"


def test_importing_the_core_does_not_import_triton():
    code = ("import sys, rlplugins, rlplugins.losses, rlplugins.losses.from_logits; "
            "assert 'triton' not in sys.modules, 'triton imported'; "
            "assert 'rlplugins.kernels' not in sys.modules, 'kernels imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
