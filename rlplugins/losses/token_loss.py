"""The per-token result every policy loss returns, and the ratio helper they share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

# veRL and OpenRLHF clamp the log-ratio to +-20 before exp; we keep their bound so results match bit for bit.
LOG_RATIO_CLAMP = 20.0


@dataclass
class TokenLoss:
    """Elementwise terms of a policy loss, before aggregation.

    loss:      per-token loss ``l``; differentiable with respect to ``log_prob``.
    grad_logp: the analytic ``dl/dlog_prob`` per token (detached). Kernels use it as the per-token scalar
               ``g_t`` of ``dl/dz_j = g_t (delta_jy - p_j) / T``; tests check it against autograd.
    gate:      detached factor applied to the ungated gradient (MASPO's ``w``, 1/0 for hard clipping,
               ``4s(1-s)`` for SAPO, ``c/r`` for CISPO); 1 means "full gradient".
    ratio:     detached importance ratio used by the loss (after clamping), for metrics.
    clipped:   optional detached bool tensor, the loss's own notion of a clipped token (pg_clipfrac).
    clipped_lower: optional detached bool tensor for dual-clip (pg_clipfrac_lower).
    quadrants: optional detached bool tensors ``(A > 0 and r > 1, A < 0 and r < 1)`` for the quad_*_frac metrics,
               when the loss computes exactly these anyway (MASPO's gated quadrants); else the metrics compute them.
    vjp:       optional backward of ``loss``: maps the upstream gradient ``dL/dl`` per token to ``dL/dlog_prob``
               with the operations autograd would run, in its order (so the same bits as ``loss.backward()``
               through the formula). The built-ins set it; compute_policy_loss then evaluates the loss without a
               graph and calls it in one backward node.
    """

    loss: torch.Tensor
    grad_logp: torch.Tensor
    gate: torch.Tensor
    ratio: torch.Tensor
    clipped: torch.Tensor | None = None
    clipped_lower: torch.Tensor | None = None
    vjp: Callable[[torch.Tensor], torch.Tensor] | None = None
    quadrants: tuple[torch.Tensor, torch.Tensor] | None = None


def clamped_log_ratio(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, bound: float = LOG_RATIO_CLAMP
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(clamp(logp - logp_old, -bound, bound), passes)``.

    ``passes`` is where the clamp lets the gradient through (torch's clamp is inclusive at the bounds),
    so the analytic gradients can mirror autograd exactly.
    """
    raw = log_prob - old_log_prob
    clamped = torch.clamp(raw, min=-bound, max=bound)
    with torch.no_grad():
        passes = raw.abs() <= bound  # False for NaN, as the two-sided test
    return clamped, passes


def masked_by(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``torch.where(keep, x, 0)`` for a finite ``x`` (what every ``vjp`` multiplies: finite inputs, clamped
    ratios), as a product with the 0./1. mask: the same values (``x * 0`` may be -0.0, which equals 0), and several
    times cheaper than where() on CPU."""
    return x * keep.to(x.dtype)


def apply_dual_clip(
    loss: torch.Tensor, advantages: torch.Tensor, grad_logp: torch.Tensor, gate: torch.Tensor, c: float | None,
    vjp: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None] | tuple:
    """Dual clip (Ye et al., arXiv 1912.09729): for A < 0, ``l <- min(l, -c A)``.

    Returns the new loss, gradient, gate and the mask of tokens the dual clip bounded (None when off), and, when
    ``vjp`` (the backward of ``loss``) is given, the backward of the new loss as a fifth element.
    """
    if c is None:
        return (loss, grad_logp, gate, None) if vjp is None else (loss, grad_logp, gate, None, vjp)
    cap = -advantages * c
    capped = torch.minimum(loss, cap)
    with torch.no_grad():
        neg = advantages < 0
    new_loss = torch.where(neg, capped, loss)
    with torch.no_grad():
        hit = neg & (loss > cap)
        grad_logp = torch.where(hit, 0.0, grad_logp)
        gate = torch.where(hit, 0.0, gate)
    if vjp is None:
        return new_loss, grad_logp, gate, hit
    with torch.no_grad():
        tie = neg & (loss == cap)
        above = hit

    def dual_vjp(up: torch.Tensor) -> torch.Tensor:
        # where() and minimum()'s backward: A >= 0 passes up; A < 0 passes it where l < cap, half at a tie, 0 above.
        return vjp(torch.where(above, 0.0, torch.where(tie, up / 2, up)))

    return new_loss, grad_logp, gate, hit, dual_vjp
