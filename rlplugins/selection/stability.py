"""Stability filter of SAGE (docs/sage.md B5, [reconstruction] of arXiv 2602.01207).

A pair is unstable if its scaled margin lies in the boundary band ``|u| < tau_b`` (there ``c(u) = sigma(u)sigma(-u)``
is close to its maximum 1/4, so a small parameter change flips the sign of the margin and the per-pair gradient
direction is unreliable), or, optionally, if its margin history is temporally unstable: a sign change between the last
two observations, or a variance over the last K observations above ``tau_v``. What remains with ``u < 0`` are the
"stable confident errors" the paper's v2 abstract singles out.
"""

from __future__ import annotations

import torch


def in_boundary_band(u: torch.Tensor, band: float) -> torch.Tensor:
    """``|u| < band`` elementwise (False for non-finite u: those are handled as invalid, not as boundary pairs)."""
    return torch.isfinite(u) & (u.abs() < band)


def temporal_unstable(
    history: torch.Tensor, *, sign_consistency: bool = True, variance_threshold: float | None = None
) -> torch.Tensor:
    """Per row of ``history`` ``[N, K]`` (oldest to newest, NaN = missing): True if temporally unstable.

    sign flip: the last two finite entries a (newest), b satisfy ``a * b < 0`` (a margin exactly 0 has no sign, so it
    never counts as a flip); variance: the population variance ``mean((h - mean h)^2)`` of the finite entries exceeds
    ``variance_threshold`` (only when a row has at least two finite entries).
    """
    if not isinstance(history, torch.Tensor) or not history.is_floating_point() or history.dim() != 2:
        raise ValueError(
            "history must be a floating tensor of shape [num_pairs, K], got "
            f"{type(history).__name__} {getattr(history, 'dtype', '')} {tuple(getattr(history, 'shape', ()))}"
        )
    h = history.to(torch.float64)
    n, k = h.shape
    unstable = torch.zeros(n, dtype=torch.bool)
    if n == 0 or k < 2:
        return unstable
    finite = torch.isfinite(h)
    pos = torch.arange(k).expand(n, k)
    last_idx = torch.where(finite, pos, torch.full_like(pos, -1)).max(dim=1).values
    others = finite & (pos != last_idx.unsqueeze(1))
    prev_idx = torch.where(others, pos, torch.full_like(pos, -1)).max(dim=1).values
    if sign_consistency:
        has_two = prev_idx >= 0
        a = h.gather(1, last_idx.clamp(min=0).unsqueeze(1)).squeeze(1)
        b = h.gather(1, prev_idx.clamp(min=0).unsqueeze(1)).squeeze(1)
        unstable |= has_two & (a * b < 0)
    if variance_threshold is not None:
        count = finite.sum(dim=1)
        hz = torch.where(finite, h, torch.zeros_like(h))
        mean = hz.sum(dim=1) / count.clamp(min=1)
        var = (torch.where(finite, h - mean.unsqueeze(1), torch.zeros_like(h)) ** 2).sum(dim=1) / count.clamp(min=1)
        unstable |= (count >= 2) & (var > variance_threshold)
    return unstable
