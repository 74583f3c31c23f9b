"""Long sequences, huge N*V and strided label/mask views.

- One sequence longer than 65,536 tokens goes through the torch backend end to end, and through the Triton launch
  path as rows on the grid's first axis (limit 2**31 - 1 programs; only the gradient kernel's vocabulary blocks use
  the second axis, limit 65,535): the launch grids are checked, and the limits raise clearly beyond them.
- N*V > 2**31: the row offsets are int64 (a probe kernel evaluates ``row_offset`` past 2**31 in the interpreter; the
  AOT test compiles the same code). A real N*V > 2**31 tensor is 4 GiB in bf16 plus its gradient: too much for the
  shared CI machine, so the Triton path is covered by the offset arithmetic and the launch checks, not by a run.
- Non-contiguous / sliced labels and masks (a Liger bug class) pick the same tokens as contiguous copies.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from rlplugins.kernels import logprobs as lp_kernels  # noqa: E402
from rlplugins.kernels import rows as row_kernels  # noqa: E402
from rlplugins.losses.from_logits import logprobs_from_logits, policy_loss_from_logits  # noqa: E402


def test_one_sequence_longer_than_65536_tokens_torch_backend():
    t, v = 70_001, 5
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, t, v, generator=g)
    labels = torch.randint(0, v, (1, t), generator=g)
    mask = torch.rand(1, t, generator=g) < 0.9
    old = -torch.rand(1, t, generator=g)
    adv = torch.full((1, t), 0.7)
    z = logits.clone().requires_grad_()
    out = policy_loss_from_logits("ppo_clip", logits=z, labels=labels, old_log_prob=old, advantages=adv,
                                  response_mask=mask, backend="torch")
    out.loss.backward()
    z64 = logits.double().requires_grad_()
    ref_lp = torch.log_softmax(z64, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    from rlplugins.losses import compute_policy_loss

    ref, _ = compute_policy_loss("ppo_clip", log_prob=ref_lp, old_log_prob=old.double(), advantages=adv.double(),
                                 response_mask=mask)
    ref.backward()
    torch.testing.assert_close(out.loss.double(), ref.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(z.grad.double(), z64.grad, rtol=1e-4, atol=1e-9)
    assert out.metrics["valid_tokens"] == float(mask.sum())


class _GridSpy:
    def __init__(self):
        self.grids = []

    def __getitem__(self, grid):
        self.grids.append(grid)
        return lambda *args, **kwargs: None


def test_triton_launches_put_a_long_sequence_on_the_first_grid_axis(monkeypatch):
    t, v = 100_000, 300
    logits = torch.zeros(1, 1, v).expand(1, t, v)  # no memory: the launch path only reads shapes and strides
    labels = torch.zeros(t, dtype=torch.int64)
    fwd, bwd = _GridSpy(), _GridSpy()
    monkeypatch.setattr(lp_kernels, "_logprobs_fwd_kernel", fwd)
    monkeypatch.setattr(row_kernels, "logits_grad_kernel", bwd)  # the shared gradient kernel lives in rows.py
    stats = lp_kernels.launch_logprobs_fwd(logits, labels, 1.0, -100, False, 64)
    lp_kernels.launch_logits_grad(logits, labels, stats, torch.zeros(t), None, 1.0, -100, False, 64)
    assert fwd.grids == [(t,)]
    assert bwd.grids == [(t, triton.cdiv(v, 64))]


def test_grid_limits_raise_clearly_instead_of_launching():
    rows = 2**31  # an expanded view: the shape exists without its memory
    logits = torch.zeros(1, 1).expand(rows, 1)
    with pytest.raises(ValueError, match=r"2147483648 rows exceed the 2147483647 programs"):
        lp_kernels.launch_logprobs_fwd(logits, torch.zeros(1, dtype=torch.int64).expand(rows), 1.0, -100, False, 16)
    with pytest.raises(ValueError, match=r"65536 vocabulary blocks exceed the 65535"):
        lp_kernels.check_grid(4, 65536)


@triton.jit
def _offset_probe(OUT, BASE, INNER, STRIDE_OUTER, STRIDE_INNER):
    row = tl.program_id(0).to(tl.int64) + BASE
    tl.store(OUT + tl.program_id(0), lp_kernels.row_offset(row, INNER, STRIDE_OUTER, STRIDE_INNER))


@pytest.mark.interpreter
def test_row_offsets_are_int64_past_2_31():
    """Rows of [B, T, V] = [3, 20_000, 151_936] logits: offsets reach 9.1e9, past int32's 2.1e9."""
    t, v = 20_000, 151_936
    base = 2 * t - 2
    out = torch.empty(4, dtype=torch.int64)
    _offset_probe[(4,)](out, base, t, t * v, v)
    want = [((base + i) // t) * t * v + ((base + i) % t) * v for i in range(4)]
    assert out.tolist() == want and max(want) > 2**31


def _layout_case(seed=0):
    g = torch.Generator().manual_seed(seed)
    b, t, v = 3, 5, 11
    logits = torch.randn(b, t + 1, v, generator=g)[:, :-1]  # HF's [:, :-1]: strided rows
    wide_labels = torch.randint(0, v, (b, 2 * t), generator=g)
    labels = wide_labels[:, ::2]  # non-contiguous
    mask = (torch.rand(t, b, generator=g) < 0.7).T  # transposed view
    old = (-torch.rand(b, 2 * t, generator=g))[:, 1::2]
    adv = torch.randn(b, 1, generator=g).expand(b, t)  # stride 0 along T
    return logits, labels, mask, old, adv


@pytest.mark.parametrize("backend", ["torch", pytest.param("triton", marks=pytest.mark.interpreter)])
def test_sliced_and_transposed_labels_and_masks_pick_the_right_tokens(backend):
    logits, labels, mask, old, adv = _layout_case()
    assert not labels.is_contiguous() and not mask.is_contiguous() and not old.is_contiguous()
    results = []
    for contiguous in (False, True):
        z = logits.clone().contiguous() if contiguous else logits.clone()
        z.requires_grad_()
        args = (labels, mask, old, adv)
        if contiguous:
            args = tuple(a.contiguous() for a in args)
        out = policy_loss_from_logits("maspo", logits=z, labels=args[0], old_log_prob=args[2], advantages=args[3],
                                      response_mask=args[1], backend=backend)
        out.loss.backward()
        lp = logprobs_from_logits(z.detach(), args[0], backend=backend).log_prob
        results.append((out.loss.detach(), z.grad, out.log_prob, lp))
    # Per-token values and gradients: bit for bit. The scalar loss: up to the summation order torch picks for a
    # non-contiguous mask (1 float32 ulp).
    torch.testing.assert_close(results[0][0], results[1][0], rtol=2e-7, atol=0)
    for a, b in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # And the tokens picked are the labels: log_softmax gathered at labels.
    want = torch.log_softmax(logits.double(), -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(results[0][3].double(), want, rtol=1e-5, atol=1e-6)
