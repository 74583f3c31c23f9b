"""Float64 references and per-dtype tolerances shared by the kernel tests (imported by path: tests/ is not a package).

Tolerances (kernels compute in float32 whatever the logit dtype; references run in float64 on the same,
upcast logits):

| quantity                         | tolerance                                                             |
|----------------------------------|-----------------------------------------------------------------------|
| logp, entropy, per-token l       | 1e-5 abs + 1e-6 relative                                              |
| dlogits, float32 storage         | 1e-5 * |ref| + 1e-6 * max|ref| + 1e-9                                 |
| dlogits, bfloat16 storage        | 2**-8 * |ref| (one bf16 ulp) + 1e-6 * max|ref|                         |
| dlogits, float16 storage         | 2**-10 * |ref| (one fp16 ulp) + 1e-6 * max|ref| + 6e-8 (subnormal step) |
| scalar loss                      | 1e-5 + 1e-6 relative + sum_t |dL/dlogp_t| 1e-6 (1 + |logp_t|) (loss_atol)|

docs/kernels.md#numerics asks for <= 1e-5 on logp/LSE/entropy/loss and one storage ulp on bf16 gradients; the
relative terms cover |logp| ~ 1e4 (huge logits, small T) and tiny gradients.
"""

from __future__ import annotations

import torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
ULP = {torch.float32: 1e-5, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-10}


def ref_logprobs(logits: torch.Tensor, labels: torch.Tensor, temperature: float, ignore_index: int = -100):
    """(z64 leaf, logp, entropy) in float64; ignored rows give 0. ``z64`` requires grad."""
    z = logits.detach().to(torch.float64).requires_grad_()
    logsm = torch.log_softmax(z / temperature, dim=-1)
    valid = labels != ignore_index
    safe = torch.where(valid, labels, torch.zeros_like(labels)).to(torch.int64)
    logp = logsm.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    p = logsm.exp()
    ent = -torch.where(p > 0, p * logsm, torch.zeros_like(p)).sum(-1)
    zero = torch.zeros((), dtype=torch.float64)
    return z, torch.where(valid, logp, zero), torch.where(valid, ent, zero)


def value_atol(logits: torch.Tensor, temperature: float) -> float:
    """Absolute tolerance of float32 per-row values; assert_values_close adds 1e-6 relative."""
    return 1e-5


def assert_values_close(got: torch.Tensor, ref: torch.Tensor, atol: float, what: str = "value") -> None:
    got64, ref64 = got.detach().to(torch.float64), ref.detach().to(torch.float64)
    err = (got64 - ref64).abs()
    bound = atol + 1e-6 * ref64.abs()
    assert bool((err <= bound).all()), f"{what}: max error {float(err.max()):.3g} (atol {atol:.3g})"


def assert_grad_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "dlogits",
                      rows: torch.Tensor | None = None) -> None:
    """Per-dtype storage tolerance; ``rows`` optionally restricts the check to some rows (leading dims)."""
    got64, ref64 = got.detach().to(torch.float64), ref.detach().to(torch.float64)
    if rows is not None:
        got64, ref64 = got64[rows], ref64[rows]
    if ref64.numel() == 0:
        return
    scale = float(ref64.abs().max())
    bound = ULP[dtype] * ref64.abs() + 1e-6 * scale + 1e-9
    if dtype == torch.float16:
        bound = bound + 6e-8
    err = (got64 - ref64).abs()
    worst = int(torch.argmax(err - bound))
    assert bool((err <= bound).all()), (
        f"{what} ({dtype}): error {float(err.flatten()[worst]):.3g} > bound {float(bound.flatten()[worst]):.3g} "
        f"at flat index {worst} (ref {float(ref64.flatten()[worst]):.4g}, got {float(got64.flatten()[worst]):.4g})"
    )


def loss_atol(ref_total: torch.Tensor, lp64: torch.Tensor) -> float:
    """Tolerance of an aggregated loss: float32 log-probs carry ~1e-6 (1 + |logp|) absolute error, which the
    loss amplifies by dL/dlogp (e.g. A r with r = e^5 for an off-policy token). ``lp64`` must have retained
    its gradient (``lp64.retain_grad()`` before the reference's backward)."""
    g = lp64.grad if lp64.grad is not None else torch.zeros_like(lp64)
    propagated = float((g.abs() * 1e-6 * (1 + lp64.detach().abs())).sum())
    return 1e-5 + propagated


def examples(n: int) -> int:
    """Hypothesis example count for a slow (interpreter) test: ``n`` under the CI profile (60 examples),
    scaled with the active profile (e.g. 5n under RLPLUGINS_HYPOTHESIS_PROFILE=dev)."""
    from hypothesis import settings

    return max(1, n * settings().max_examples // 60)


def stable_grad_rows(name: str, config, logp64: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                     delta: float = 1e-4, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Tokens whose reference d loss / d logp does not jump within +-delta of logp (away from clip kinks).

    Near a kink (clip boundary, dual-clip cap, +-20 log-ratio clamp) float32 and float64 evaluations may pick
    different sides; the loss value is continuous there, its gradient is not.
    """
    from rlplugins.losses import token_policy_loss

    def g(lp):
        return token_policy_loss(name, log_prob=lp, old_log_prob=old.to(lp.dtype), advantages=adv.to(lp.dtype),
                                 config=config, response_mask=mask).grad_logp

    lp = logp64.detach().to(torch.float64)
    lo, mid, hi = g(lp - delta), g(lp), g(lp + delta)
    scale = 1e-3 * mid.abs() + 1e-12
    return ((lo - mid).abs() <= scale) & ((hi - mid).abs() <= scale)
