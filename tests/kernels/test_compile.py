"""torch.compile(fullgraph=True) over the torch logits path and compute_policy_loss, on CPU.

The chunked log-prob path is a set of torch.library custom ops (opaque to the compiler, fake implementations for
shapes, registered autograd); compute_policy_loss traces without a host sync (checks as torch._assert_async, metrics
as 0-d tensors). ``fullgraph=True`` makes any graph break an error. Most tests use the ``aot_eager`` backend (traces
forward and backward through AOTAutograd, as inductor does, without generating C++); one runs inductor.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch

from rlplugins.losses import compute_policy_loss, metrics_to_floats
from rlplugins.losses.chunked_logprobs import chunked_logprobs_op
from rlplugins.losses.from_logits import logprobs_from_logits, policy_loss_from_logits

B, T, V = 2, 5, 11


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g) * 2).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0] = True
    old = torch.randn(B, T, generator=g) * 0.3 - 2.0
    adv = torch.randn(B, T, generator=g)
    return logits, labels, mask, old, adv


def _compile(fn, backend: str = "aot_eager"):
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend=backend)


def _eager_and_compiled(fn, x, compiled_fn=None, backend: str = "aot_eager"):
    """Run ``fn`` eagerly and compiled (``compiled_fn``, default ``fn``) on two leaf copies of ``x``, backward through
    each output's first element (the loss); returns (eager outputs, eager grad, compiled outputs, compiled grad)."""
    x_e, x_c = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_e = fn(x_e)
    out_c = _compile(compiled_fn or fn, backend=backend)(x_c)
    out_e[0].backward()
    out_c[0].backward()
    return out_e, x_e.grad, out_c, x_c.grad


def _logits_loss(name: str, labels, mask, old, adv, temperature: float):
    def fn(logits):
        out = policy_loss_from_logits(name, logits=logits, labels=labels, old_log_prob=old, advantages=adv,
                                      response_mask=mask, temperature=temperature, return_entropy=True,
                                      backend="torch", chunk_rows=3)
        lp = logprobs_from_logits(logits, torch.where(mask, labels, -100), temperature=temperature,
                                  return_entropy=True, backend="torch", chunk_rows=4)
        total = out.loss - 0.01 * (lp.entropy * mask).sum() + 0.1 * lp.log_prob.sum()
        return total, out.metrics, out.log_prob
    return fn


@pytest.mark.parametrize("name,dtype,temperature", [("maspo", torch.float32, 1.0), ("gspo", torch.bfloat16, 0.7),
                                                    ("cispo", torch.float32, 1.3)])
def test_logits_path_fullgraph_equals_eager(name, dtype, temperature):
    logits, labels, mask, old, adv = _inputs(1, dtype)
    fn = _logits_loss(name, labels, mask, old, adv, temperature)
    (loss_e, metrics_e, lp_e), grad_e, (loss_c, metrics_c, lp_c), grad_c = _eager_and_compiled(fn, logits)
    assert all(isinstance(v, float) for v in metrics_e.values())
    assert all(isinstance(v, torch.Tensor) and v.dim() == 0 for v in metrics_c.values())
    assert torch.equal(loss_c, loss_e) and torch.equal(lp_c, lp_e)
    assert torch.equal(grad_c, grad_e)
    assert grad_c[~mask].abs().max() == 0  # masked rows: exactly zero gradient in the compiled graph too
    assert metrics_to_floats(metrics_c) == metrics_e


def test_inplace_backward_compiled():
    logits, labels, mask, old, adv = _inputs(2)

    def fn(z):
        return policy_loss_from_logits("ppo_clip", logits=z, labels=labels, old_log_prob=old, advantages=adv,
                                       response_mask=mask, backend="torch", inplace_backward=True).loss

    ref = logits.clone().requires_grad_()
    policy_loss_from_logits("ppo_clip", logits=ref, labels=labels, old_log_prob=old, advantages=adv,
                            response_mask=mask, backend="torch").loss.backward()
    z = logits.clone().requires_grad_()
    leaf = z * 1.0  # the in-place gradient overwrites a non-leaf buffer, as a model's logits are
    _compile(fn)(leaf).backward()
    assert torch.equal(z.grad, ref.grad)
    assert torch.equal(leaf.detach(), ref.grad), "the compiled backward must still write into the logits buffer"


def test_compute_policy_loss_fullgraph_with_weights_and_global_counts():
    _, _, mask, old, adv = _inputs(3)
    lp = (old + 0.2 * torch.randn(B, T, generator=torch.Generator().manual_seed(4)))
    w = torch.rand(B, T, generator=torch.Generator().manual_seed(5)) + 0.5
    gbi = {"global_batch_size": torch.tensor(4), "dp_size": 2}

    def fn(log_prob):
        return compute_policy_loss("maspo", log_prob=log_prob, old_log_prob=old, advantages=adv, response_mask=mask,
                                   loss_agg_mode="seq-mean-token-mean", rollout_is_weights=w, global_batch_info=gbi)

    (loss_e, metrics_e), grad_e, (loss_c, metrics_c), grad_c = _eager_and_compiled(fn, lp)
    assert torch.equal(loss_c, loss_e) and torch.equal(grad_c, grad_e)
    assert metrics_to_floats(metrics_c) == metrics_e


def test_compiled_checks_raise_without_host_sync():
    logits, labels, mask, old, adv = _inputs(6)
    gbi = {"batch_num_tokens": torch.tensor(float(mask.sum()))}

    def fn(z, lab, o, counts):
        return policy_loss_from_logits("maspo", logits=z, labels=lab, old_log_prob=o, advantages=adv,
                                       response_mask=mask, backend="torch", global_batch_info=counts).loss

    compiled = _compile(fn)
    assert torch.equal(compiled(logits, labels, old, gbi), fn(logits, labels, old, gbi))
    bad_old = old.clone()
    bad_old[0, 0] = math.nan
    with pytest.raises(RuntimeError, match="non-finite"):
        compiled(logits, labels, bad_old, gbi)
    bad_labels = labels.clone()
    bad_labels[0, 0] = V
    with pytest.raises(RuntimeError, match=r"labels must lie in \[0, 11\)"):
        compiled(logits, bad_labels, old, gbi)
    bad_logits = logits.clone()
    bad_logits[0, 0, 3] = math.inf
    with pytest.raises(RuntimeError, match="non-finite log-prob"):
        compiled(bad_logits, labels, old, gbi)
    with pytest.raises(RuntimeError, match="smaller than the valid tokens"):
        compiled(logits, labels, old, {"batch_num_tokens": torch.tensor(1.0)})


def test_compiled_on_nonfinite_mask_drops_like_eager():
    _, _, mask, old, adv = _inputs(7)
    lp = old + 0.1
    lp[0, 0] = math.nan  # valid (mask[0, 0] is set): dropped and counted

    def fn(log_prob):
        return compute_policy_loss("ppo_clip", log_prob=log_prob, old_log_prob=old, advantages=adv,
                                   response_mask=mask, on_nonfinite="mask")

    (loss_e, metrics_e), grad_e, (loss_c, metrics_c), grad_c = _eager_and_compiled(fn, lp)
    assert torch.equal(loss_c, loss_e) and torch.equal(grad_c, grad_e)
    floats = metrics_to_floats(metrics_c)
    assert floats["nonfinite_tokens"] == metrics_e["nonfinite_tokens"] == 1.0
    assert floats.keys() == metrics_e.keys()
    assert all(math.isclose(floats[k], metrics_e[k], rel_tol=1e-6, abs_tol=1e-7) for k in floats)


@pytest.mark.interpreter
def test_triton_backend_fullgraph_equals_eager():
    """backend="triton" under the interpreter: token_logprobs is a custom op too; fused=None takes it while tracing."""
    logits, labels, mask, old, adv = _inputs(10)

    def fn(z, fused):
        out = policy_loss_from_logits("maspo", logits=z, labels=labels, old_log_prob=old, advantages=adv,
                                      response_mask=mask, return_entropy=True, backend="triton", fused=fused)
        lp = logprobs_from_logits(z, torch.where(mask, labels, -100), return_entropy=True, backend="triton")
        return out.loss - 0.01 * (lp.entropy * mask).sum() + 0.1 * lp.log_prob.sum(), out.metrics, out.path

    (loss_e, metrics_e, _), grad_e, (loss_c, metrics_c, path), grad_c = _eager_and_compiled(
        lambda z: fn(z, False), logits, compiled_fn=lambda z: fn(z, None))
    assert path == "triton"
    assert torch.equal(loss_c, loss_e) and torch.equal(grad_c, grad_e)
    assert metrics_to_floats(metrics_c) == metrics_e


def _token_logprobs_op():
    from rlplugins.kernels.logprobs import token_logprobs_op

    return token_logprobs_op


@pytest.mark.parametrize("op,block", [pytest.param(lambda: chunked_logprobs_op, 3, id="chunked"),  # 3-row chunks
                                      pytest.param(_token_logprobs_op, 16, id="triton", marks=pytest.mark.interpreter)])
def test_custom_op_registration(op, block):
    """torch.library.opcheck: schema, fake implementation and autograd registration of each log-prob op."""
    logits, labels, _, _, _ = _inputs(8)
    labels[1, 2] = -100
    for entropy in (False, True):
        torch.library.opcheck(op(), (logits.requires_grad_(), labels.reshape(-1), 0.9, entropy, False, -100, block))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="inductor's CPU backend "
                    "needs a C++ compiler")
def test_inductor_logits_path():
    logits, labels, mask, old, adv = _inputs(9)
    fn = _logits_loss("maspo", labels, mask, old, adv, 1.0)
    (loss_e, metrics_e, _), grad_e, (loss_c, metrics_c, _), grad_c = _eager_and_compiled(fn, logits,
                                                                                         backend="inductor")
    # inductor may fuse and reorder the float32 arithmetic around the custom ops: equal to rounding.
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_c, grad_e, rtol=1e-5, atol=1e-6)
    floats = metrics_to_floats(metrics_c)
    assert all(math.isclose(floats[k], metrics_e[k], rel_tol=1e-5, abs_tol=1e-6) for k in floats)
