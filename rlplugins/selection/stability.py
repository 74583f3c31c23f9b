"""Stability filter of SAGE (docs/sage.md#stability-filter, [reconstruction] of arXiv 2602.01207), written once.

A pair is *unstable* (never selected by score) if

* its margin is near the decision boundary: ``|u| < tau``. With ``band_scale="relative"`` (default) ``tau`` is
  ``boundary_band`` times the median ``|u|`` of the pool being selected from, so the band follows the pool's margin
  scale and, for ``boundary_band <= 1``, can never hold half of the pool or more; ``"absolute"`` keeps ``tau =
  boundary_band`` in margin units (the first reconstruction, which on small margins excluded almost everything);
* or its margin history is temporally unstable: a sign change between the last two observations, or a variance over
  the last K observations above ``variance_threshold``;

and it is a *noise suspect* (label-noise guard, ours) if its margin lies far below its peers: a robust z-score
``(u - median) / (1.4826 * MAD)`` over the pool below ``-noise_guard``, now and at its previous observation (a
pair that *stays* confidently wrong far beyond the rest of the pool is more likely mislabelled than informative).
What remains with ``u < 0`` are the "stable confident errors" the paper's v2 abstract singles out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# 1.4826 * MAD estimates the standard deviation of a normal sample.
_MAD_TO_STD = 1.4826


def in_boundary_band(u: torch.Tensor, band: float) -> torch.Tensor:
    """``|u| < band`` elementwise, ``band`` in margin units (`band_threshold` gives it for a pool); False for
    non-finite u (those are handled as invalid, not as boundary pairs)."""
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


def band_threshold(pool_u: torch.Tensor, band: float, scale: str) -> float:
    """The boundary half-width ``tau``: ``band`` (absolute) or ``band * median |u|`` over the finite pool margins."""
    if scale == "absolute":
        return float(band)
    fin = pool_u[torch.isfinite(pool_u)]
    if fin.numel() == 0:
        return 0.0
    return float(band) * float(fin.abs().median())


def robust_z(u: torch.Tensor, pool_u: torch.Tensor) -> torch.Tensor:
    """``(u - median) / (1.4826 MAD)`` against the finite pool margins; 0 when the pool has no spread."""
    fin = pool_u[torch.isfinite(pool_u)]
    if fin.numel() == 0:
        return torch.zeros_like(u)
    med = fin.median()
    mad = (fin - med).abs().median() * _MAD_TO_STD
    if not float(mad) > 0:
        return torch.zeros_like(u)
    return (u - med) / mad


@dataclass
class StabilityMasks:
    """Masks over the pairs examined: finite margin, boundary band, temporal instability, noise suspect, stable."""

    finite: torch.Tensor
    band: torch.Tensor
    temporal: torch.Tensor
    suspect: torch.Tensor
    stable: torch.Tensor


def peer_z(
    u: torch.Tensor, pool_u: torch.Tensor, groups: torch.Tensor | None, pool_groups: torch.Tensor | None
) -> torch.Tensor:
    """Robust z-score of each ``u`` against its peers: the pool pairs of the same group (difficulty tier), or the
    whole pool when no groups are given."""
    if groups is None or pool_groups is None:
        return robust_z(u, pool_u)
    z = torch.zeros_like(u)
    for g in torch.unique(groups).tolist():
        sel = groups == g
        z[sel] = robust_z(u[sel], pool_u[pool_groups == g])
    return z


def pool_statistics(pool_u: torch.Tensor, config, pool_groups: torch.Tensor | None = None) -> dict:
    """What the stability rule needs from the pool, O(pool) once: the band half-width ``tau`` and, for the noise
    guard, ``(median, 1.4826 MAD)`` of the finite pool margins per group (key None: the whole pool).

    Plain floats and ints (a selector saves them in its state). `masks_from_statistics` applies them to any pairs
    in O(pairs); `stability_masks` is the two in one call.
    """
    stats: dict = {"tau": 0.0, "peers": {}}
    if not config.use_filter:
        return stats
    stats["tau"] = band_threshold(pool_u, config.boundary_band, config.band_scale)
    if config.noise_guard is None:
        return stats
    fin_all = torch.isfinite(pool_u)
    keys = [None] if pool_groups is None else torch.unique(pool_groups[fin_all]).tolist()
    for g in keys:
        fin = pool_u[fin_all] if g is None else pool_u[fin_all & (pool_groups == g)]
        if fin.numel() == 0:
            continue
        med = fin.median()
        stats["peers"][g] = (float(med), float((fin - med).abs().median() * _MAD_TO_STD))
    return stats


def _peer_z_from(u: torch.Tensor, peers: dict, groups: torch.Tensor | None) -> torch.Tensor:
    """`peer_z` from `pool_statistics`: 0 for a group absent from the pool or without spread. One gather of the
    per-group (median, MAD) instead of a pass per group; the same arithmetic, so the same values."""
    if groups is None:
        med_mad = peers.get(None)
        if med_mad is None or not med_mad[1] > 0:
            return torch.zeros_like(u)
        return (u - med_mad[0]) / med_mad[1]
    if groups.numel() == 0:
        return torch.zeros_like(u)
    size = int(groups.max()) + 1
    med = torch.zeros(size, dtype=u.dtype)
    mad = torch.ones(size, dtype=u.dtype)
    spread = torch.zeros(size, dtype=torch.bool)
    for g, (m, d) in peers.items():
        if g is not None and 0 <= g < size and d > 0:
            med[g], mad[g], spread[g] = m, d, True
    z = (u - med[groups]) / mad[groups]
    return torch.where(spread[groups], z, torch.zeros_like(z))


def masks_from_statistics(
    u: torch.Tensor,
    history: torch.Tensor | None,
    stats: dict,
    config,
    groups: torch.Tensor | None = None,
) -> StabilityMasks:
    """The stability rule (module docstring) of the pairs ``u`` against pool statistics from `pool_statistics`."""
    finite = torch.isfinite(u)
    none = torch.zeros(u.shape[0], dtype=torch.bool)
    if not config.use_filter:
        return StabilityMasks(finite, none, none.clone(), none.clone(), finite.clone())
    band = in_boundary_band(u, stats["tau"]) | (u == 0)  # a margin of exactly 0 has no sign: always at the boundary
    temporal = none.clone()
    if history is not None and (config.sign_consistency or config.variance_threshold is not None):
        h = history[:, -config.history_size :]
        temporal = temporal_unstable(
            h, sign_consistency=config.sign_consistency, variance_threshold=config.variance_threshold
        ) & finite
    suspect = none.clone()
    if config.noise_guard is not None:
        peers = stats["peers"]
        far = _peer_z_from(u, peers, groups) < -config.noise_guard
        if history is not None and history.shape[1] >= 2:
            prev = history[:, -2]
            # "stays" far below: the previous observation (if any) is far below the current pool too
            prev_far = ~torch.isfinite(prev) | (_peer_z_from(prev, peers, groups) < -config.noise_guard)
            far &= prev_far
        suspect = finite & far
    return StabilityMasks(finite, band, temporal, suspect, finite & ~band & ~temporal & ~suspect)


def stability_masks(
    u: torch.Tensor,
    history: torch.Tensor | None,
    pool_u: torch.Tensor,
    config,
    groups: torch.Tensor | None = None,
    pool_groups: torch.Tensor | None = None,
) -> StabilityMasks:
    """The stability rule of SAGE (module docstring), in one place.

    ``u`` ``[N]`` the latest margins; ``history`` ``[N, K]`` the margins observed so far (oldest to newest, NaN =
    missing, its last column the same observation as ``u``) or None; ``pool_u`` the margins of the pool the band and
    the noise guard are relative to (``u`` itself for a stateless call); ``config`` a ``SageConfig``.
    ``groups`` / ``pool_groups``: the difficulty tier of each pair and of each pool pair; the noise guard compares a
    pair with the pool pairs of its own tier (a confident error is ordinary on a hard tier, suspicious on an easy one).
    ``stable = finite & ~band & ~temporal & ~suspect``; with ``use_filter=False`` only ``finite`` counts.
    """
    if groups is None or pool_groups is None:
        groups = pool_groups = None
    return masks_from_statistics(u, history, pool_statistics(pool_u, config, pool_groups), config, groups)
