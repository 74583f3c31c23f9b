"""Stability filter of SAGE (docs/sage.md B5, [reconstruction] of arXiv 2602.01207).

A pair is unstable if its scaled margin lies in the boundary band ``|u| < tau_b`` (there ``c(u) = sigma(u)sigma(-u)``
is close to its maximum 1/4, so a small parameter change flips the sign of the margin and the per-pair gradient
direction is unreliable), or, optionally, if its margin history is temporally unstable: a sign change between the last
two observations, or a variance over the last K observations above ``tau_v``. What remains with ``u < 0`` are the
"stable confident errors" the paper's v2 abstract singles out.
"""

from __future__ import annotations

import math

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
    if sign_consistency:
        # newest (a) and second-newest (b) finite entries; K is small, so loop over columns, vectorised over rows
        nan = torch.full((n,), math.nan, dtype=torch.float64)
        a, b = nan.clone(), nan.clone()
        for j in range(k - 1, -1, -1):
            col, f = h[:, j], finite[:, j]
            have_a = torch.isfinite(a)
            take_b = f & have_a & ~torch.isfinite(b)
            b = torch.where(take_b, col, b)
            a = torch.where(f & ~have_a, col, a)
        unstable |= torch.isfinite(a) & torch.isfinite(b) & (a * b < 0)
    if variance_threshold is not None:
        count = finite.sum(dim=1)
        hz = torch.where(finite, h, torch.zeros_like(h))
        mean = hz.sum(dim=1) / count.clamp(min=1)
        var = (torch.where(finite, h - mean.unsqueeze(1), torch.zeros_like(h)) ** 2).sum(dim=1) / count.clamp(min=1)
        unstable |= (count >= 2) & (var > variance_threshold)
    return unstable
