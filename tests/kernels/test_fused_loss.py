"""fused_policy_loss (logits in, per-token loss out, aggregated with the core's agg_loss) against the core composed
in float64:
log_softmax -> gather -> compute_policy_loss, with autograd down to the logits. Tolerances: _helpers.py."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlplugins.kernels import fused_policy_loss, list_gates
from rlplugins.losses import AGG_MODES, agg_loss, compute_policy_loss, get_policy_loss

import _kernel_helpers as H  # tests/conftest.py maps the name to the file

# Triton on CPU tensors (see conftest.py); the tests marked cuda are governed by that mark instead.
pytestmark = pytest.mark.interpreter

# Non-default settings exercising every branch of the gates (dual clip, MASPO paper/bilateral variants).
CONFIG_OVERRIDES = {
    "maspo": [{}, {"variant": "paper", "alpha": 0.5}, {"dual_clip": 3.0, "bilateral": True}],
    "ppo_clip": [{}, {"eps_high": 0.28, "dual_clip": 3.0}],
    "clip_higher": [{}],
    "dual_clip": [{}],
    "sapo": [{}, {"tau_pos": 2.0, "tau_neg": 0.5}],
    "cispo": [{}, {"eps_low": 1.0, "eps_high": 4.0}],
    "pg": [{}],
    "unclipped": [{}],
}


@st.composite
def policy_case(draw):
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    v = draw(st.integers(1, 160))
    dtype = draw(st.sampled_from(H.DTYPES))
    name = draw(st.sampled_from(list_gates()))
    config = get_policy_loss(name).make_config(draw(st.sampled_from(CONFIG_OVERRIDES.get(name, [{}]))))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = (torch.randn(b, t, v, generator=g) * draw(st.sampled_from([0.5, 3.0, 10.0]))).to(dtype)
    labels = torch.randint(0, v, (b, t), generator=g)
    mask = torch.rand(b, t, generator=g) < 0.75
    labels[~mask] = -7  # garbage where masked: never read
    on_policy = draw(st.booleans())
    # Old log-probs near the current ones (ratios around 1, some clipped).
    with torch.no_grad():
        _, lp64, _ = H.ref_logprobs(logits, torch.where(mask, labels, 0), 1.0)
    old = None if on_policy else (lp64.float() + torch.randn(b, t, generator=g) * 0.3)
    adv = (torch.randn(b, 1, generator=g) * 2).expand(b, t).contiguous()
    weights = torch.rand(b, t, generator=g) + 0.5 if draw(st.booleans()) else None
    return dict(logits=logits, labels=labels, mask=mask, old=old, adv=adv, weights=weights, name=name,
                config=config, temperature=draw(st.sampled_from([0.5, 1.0, 1.5])),
                mode=draw(st.sampled_from(AGG_MODES)), entropy_coef=draw(st.sampled_from([0.0, 0.01])),
                block=draw(st.sampled_from([None, 32])))


def _fused(c, inplace=False, scale=1.0):
    base = c["logits"].clone().requires_grad_()
    z = base * 1 if inplace else base
    out = fused_policy_loss(z, c["labels"], c["old"], c["adv"], c["mask"], c["name"], c["config"], c["temperature"],
                            return_entropy=c["entropy_coef"] > 0, inplace_backward=inplace, block_size=c["block"])
    assert bool((out.token_loss[~c["mask"]] == 0).all())
    total = _agg(out, c["mask"], c["mode"], c["weights"])
    if c["entropy_coef"] > 0:
        total = total - c["entropy_coef"] * torch.where(c["mask"], out.entropy, 0).sum() / c["mask"].sum().clamp(min=1)
    (scale * total).backward()
    return out, total.detach(), base.grad


def _agg(out, mask, mode="token-mean", weights=None):
    """The core's aggregation of the kernel's per-token loss (what policy_loss_from_logits does)."""
    loss_mat = out.token_loss if weights is None else out.token_loss * weights
    return agg_loss(loss_mat, mask, mode)


def _reference(c):
    labels = torch.where(c["mask"], c["labels"], torch.zeros_like(c["labels"]))
    z64, lp64, ent64 = H.ref_logprobs(c["logits"], labels, c["temperature"])
    lp64.retain_grad()
    old = lp64.detach() if c["old"] is None else c["old"].double()
    loss, _ = compute_policy_loss(c["name"], log_prob=lp64, old_log_prob=old, advantages=c["adv"].double(),
                                  response_mask=c["mask"], loss_agg_mode=c["mode"], config=c["config"],
                                  rollout_is_weights=None if c["weights"] is None else c["weights"].double())
    total = loss
    if c["entropy_coef"] > 0:
        total = total - c["entropy_coef"] * torch.where(c["mask"], ent64, 0).sum() / c["mask"].sum().clamp(min=1)
    total.backward()
    return total.detach(), lp64, old, z64.grad


@settings(max_examples=H.examples(40))
@given(policy_case())
def test_loss_and_dlogits_match_the_core_composed_in_float64(c):
    out, total, grad = _fused(c)
    ref_total, lp64, old, ref_grad = _reference(c)
    assert out.token_loss.dtype == torch.float32 and out.token_loss.shape == c["mask"].shape
    H.assert_values_close(total, ref_total, H.loss_atol(ref_total, lp64), "loss")
    lp64 = lp64.detach()
    H.assert_values_close(torch.where(c["mask"], out.log_prob, 0), torch.where(c["mask"], lp64, 0), 1e-5, "log_prob")
    assert grad.dtype == c["logits"].dtype
    stable = H.stable_grad_rows(c["name"], c["config"], lp64, old, c["adv"].double()) | ~c["mask"]
    H.assert_grad_close(grad, ref_grad, c["logits"].dtype, rows=stable)
    assert bool((grad[~c["mask"]] == 0).all()), "masked tokens must get an exactly zero gradient row"


@settings(max_examples=H.examples(10))
@given(policy_case())
def test_inplace_backward_and_upstream_scale(c):
    _, _, grad = _fused(c)
    _, _, grad_inplace = _fused(c, inplace=True)
    assert torch.equal(grad, grad_inplace)
    _, _, grad3 = _fused(c, scale=3.0)
    _, lp64, old, ref_grad = _reference(c)
    lp64 = lp64.detach()
    stable = H.stable_grad_rows(c["name"], c["config"], lp64, old, c["adv"].double()) | ~c["mask"]
    H.assert_grad_close(grad3, 3.0 * ref_grad, c["logits"].dtype, rows=stable)


def test_two_runs_are_bitwise_identical():
    g = torch.Generator().manual_seed(1)
    c = dict(logits=torch.randn(2, 3, 97, generator=g).to(torch.bfloat16), labels=torch.randint(0, 97, (2, 3), generator=g),
             mask=torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.bool), old=-torch.rand(2, 3, generator=g) * 5,
             adv=torch.randn(2, 3, generator=g), weights=None, name="maspo",
             config=get_policy_loss("maspo").make_config(None), temperature=0.8, mode="seq-mean-token-mean",
             entropy_coef=0.01, block=32)
    a, b = _fused(c), _fused(c)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_masked_garbage_never_reaches_loss_or_gradient_and_all_masked_is_zero():
    logits = torch.randn(2, 3, 50, requires_grad=True)
    labels = torch.tensor([[1, -100, 10**9], [3, 4, 5]])
    old = torch.tensor([[-1.0, float("nan"), float("inf")], [-2.0, -1.0, -3.0]])
    adv = torch.tensor([[1.0, float("nan"), 2.0], [0.5, 0.5, 0.5]])
    mask = torch.tensor([[True, False, False], [False, False, False]])
    out = fused_policy_loss(logits, labels, old, adv, mask, "sapo", get_policy_loss("sapo").make_config(None))
    loss = _agg(out, mask)
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(logits.grad).all())
    assert bool((logits.grad[0, 1:] == 0).all()) and bool((logits.grad[1] == 0).all())
    none = torch.zeros_like(mask)
    for mode in AGG_MODES:
        logits.grad = None
        out = fused_policy_loss(logits, labels, old, adv, none, "pg", None)
        loss = _agg(out, none, mode)
        loss.backward()
        assert float(loss.detach()) == 0.0 and bool((logits.grad == 0).all())


def test_flat_token_layout_and_on_policy_ratio_one():
    """[N, V] logits with [N] per-token tensors; old_log_prob=None means ratio 1 (MASPO = PG there)."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(9, 40, generator=g)
    labels = torch.randint(0, 40, (9,), generator=g)
    mask = torch.ones(9, dtype=torch.bool)
    adv = torch.randn(9, generator=g)
    grads = {}
    for name in ("maspo", "pg"):
        z = logits.clone().requires_grad_()
        out = fused_policy_loss(z, labels, None, adv, mask, name, get_policy_loss(name).make_config(None))
        _agg(out, mask).backward()
        grads[name] = z.grad
    torch.testing.assert_close(grads["maspo"], grads["pg"], rtol=1e-6, atol=1e-8)


def test_aggregation_with_global_batch_info_scales_the_per_token_gradient():
    """Aggregation lives in the core: any mode or global count reaches the kernel as the per-token dL/dl."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 30, generator=g)
    labels = torch.randint(0, 30, (2, 4), generator=g)
    mask = torch.ones(2, 4, dtype=torch.bool)
    old = -torch.rand(2, 4, generator=g)
    adv = torch.randn(2, 4, generator=g)
    grads = []
    for gbi in ({"dp_size": 4, "batch_num_tokens": 32}, {}):
        z = logits.clone().requires_grad_()
        out = fused_policy_loss(z, labels, old, adv, mask, "pg", None)
        agg_loss(out.token_loss, mask, "token-mean", **gbi).backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1] * 8 * 4 / 32)


def test_bad_inputs_raise_clear_errors():
    logits = torch.randn(2, 3, 10)
    labels = torch.zeros(2, 3, dtype=torch.long)
    x = torch.zeros(2, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"advantages must have shape \(2, 3\)"):
        fused_policy_loss(logits, labels, x, x[:, :2], mask, "pg")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\) at valid"):
        fused_policy_loss(logits, labels + 10, x, x, mask, "pg")
    with pytest.raises(ValueError, match="non-finite"):
        fused_policy_loss(logits, labels, x, x.masked_fill(mask, float("nan")), mask, "pg")
    with pytest.raises(ValueError, match=r"response_mask must contain only 0 and 1 \(or be bool\)"):
        fused_policy_loss(logits, labels, x, x, x + 0.5, "pg")
    with pytest.raises(ValueError, match="no Triton gate for loss 'gspo'"):
        fused_policy_loss(logits, labels, x, x, mask, "gspo")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", ["maspo", "sapo", "ppo_clip"])
def test_cuda_large_vocab_matches_reference(name):
    g = torch.Generator(device="cuda").manual_seed(4)
    b, t, v = 4, 33, 151_936
    logits = (torch.randn(b, t, v, generator=g, device="cuda") * 3).to(torch.bfloat16)
    labels = torch.randint(0, v, (b, t), generator=g, device="cuda")
    mask = torch.rand(b, t, generator=g, device="cuda") < 0.8
    with torch.no_grad():
        _, lp64, _ = H.ref_logprobs(logits, labels, 0.9)
    c = dict(logits=logits, labels=labels, mask=mask, old=lp64.float() + 0.2 * torch.randn(b, t, device="cuda", generator=g),
             adv=torch.randn(b, 1, device="cuda", generator=g).expand(b, t).contiguous(), weights=None, name=name,
             config=get_policy_loss(name).make_config(None), temperature=0.9, mode="token-mean", entropy_coef=0.01,
             block=None)
    for inplace in (False, True):
        out, total, grad = _fused(c, inplace=inplace)
        ref_total, lp, old, ref_grad = _reference(c)
        H.assert_values_close(total, ref_total, H.loss_atol(ref_total, lp), "loss")
        lp = lp.detach()
        stable = H.stable_grad_rows(name, c["config"], lp, old, c["adv"].double()) | ~mask
        H.assert_grad_close(grad, ref_grad, torch.bfloat16, rows=stable)


@pytest.mark.parametrize("liger_type,name,mode", [("sapo", "sapo", "seq-mean-token-mean"), ("dapo", "ppo_clip", "token-mean")])
def test_matches_liger_triton_grpo_loss_where_they_share_a_loss(liger_type, name, mode):
    """Cross-check against the peer (Liger-Kernel's triton_grpo_loss, run under the same interpreter) on the loss
    types both implement; skipped unless liger-kernel is installed (it is not a dependency)."""
    liger = pytest.importorskip("liger_kernel.transformers.grpo_loss")
    g = torch.Generator().manual_seed(5)
    b, t, v = 2, 3, 60
    full = torch.randn(b, t + 1, v, generator=g) * 2  # Liger takes HF's [B, L+1, V] and drops the last position
    ids = torch.randint(0, v, (b, t), generator=g)
    old = -torch.rand(b, t, generator=g) * 4 - 1
    adv = torch.randn(b, generator=g)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]], dtype=torch.float32)
    z_liger = full.clone().requires_grad_()
    loss_liger, _ = liger.triton_grpo_loss(z_liger, old, None, ids, adv, mask, temperature=0.9, beta=0.0, eps_low=0.2,
                                           eps_high=0.2, inplace=False, loss_type=liger_type, reduce=True)
    loss_liger.backward()
    z_ours = full.clone().requires_grad_()
    out = fused_policy_loss(z_ours[:, :-1], ids, old, adv[:, None].expand(b, t).contiguous(), mask.bool(), name,
                            get_policy_loss(name).make_config(None), 0.9)
    loss = _agg(out, mask.bool(), mode)
    loss.backward()
    torch.testing.assert_close(loss, loss_liger, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z_ours.grad, z_liger.grad, rtol=1e-4, atol=1e-7)
