"""Competence curriculum over difficulty tiers ([reconstruction] of SAGE, docs/sage.md#curriculum-and-competence).

Difficulty of a problem ``d(x) = 1 - pass_rate(x)``; tiers are quantiles of d (tier 0 = easiest). The pool at level k
holds the tiers ``<= k`` plus a random share ``tier_mix`` of tier k+1, which softens the transition. The level goes up
when competence (preference accuracy on the pool, or a held-out accuracy) reaches ``kappa_up`` or when the pool is
exhausted. ``refresh_mode="schedule"`` instead takes the easiest ``c(t)`` fraction of the data with
``c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2))`` (Platanios et al., 2019).
"""

from __future__ import annotations

import math

import torch

from rlplugins._config import check_int

from ._rng import make_generator, mix_seed, take_random

# Salt of the random tie-break of the easiest-first order (shared by SAGE's schedule and the baselines).
_EASY_ORDER_SALT = 0xEA5E


def tiers_from_difficulty(difficulty: torch.Tensor, num_tiers: int) -> torch.Tensor:
    """Tier id in ``[0, num_tiers)`` per pair from quantiles of ``difficulty`` (``[N]`` float in [0, 1]).

    ``tier = #{j : d > q_j}`` with ``q_j`` the ``j / num_tiers`` quantile (linear interpolation), so tiers are monotone
    in d, equal difficulties share a tier, and with ``N > num_tiers`` distinct values every tier is non-empty.
    """
    num_tiers = int(check_int("", "num_tiers", num_tiers, low=1))
    if not isinstance(difficulty, torch.Tensor) or not difficulty.is_floating_point():
        raise TypeError(f"difficulty must be a floating torch.Tensor, got {type(difficulty).__name__}")
    if difficulty.dim() != 1:
        raise ValueError(f"difficulty must be 1-D [num_pairs], got shape {tuple(difficulty.shape)}")
    d = difficulty.detach().to("cpu", torch.float64)
    if d.numel() and not bool(torch.all(torch.isfinite(d) & (d >= 0) & (d <= 1))):
        raise ValueError("difficulty must be finite and in [0, 1] (d = 1 - pass_rate)")
    if num_tiers == 1 or d.numel() == 0:
        return torch.zeros(d.numel(), dtype=torch.int64)
    qs = torch.linspace(0, 1, num_tiers + 1, dtype=torch.float64)[1:-1]
    boundaries = torch.quantile(d, qs)
    return torch.bucketize(d, boundaries, right=False).to(torch.int64)


def schedule_fraction(step: int, total_steps: int, c0: float) -> float:
    """Competence-based curriculum fraction ``c(t) = min(1, sqrt(t (1 - c0^2) / T + c0^2))``."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    t = max(0, step)
    return min(1.0, math.sqrt(t * (1.0 - c0 * c0) / total_steps + c0 * c0))


def static_level(step: int, total_steps: int, num_levels: int) -> int:
    """Level of a fixed easy-to-hard schedule: ``min(M - 1, floor(t * M / T))`` (``static_curriculum``)."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return min(num_levels - 1, max(0, step) * num_levels // total_steps)


def tier_pool(
    shard: torch.Tensor, tiers: torch.Tensor, level: int, tier_mix: float, gen: torch.Generator
) -> torch.Tensor:
    """Sorted pool of shard indices: tiers ``<= level`` plus ``ceil(tier_mix * |tier level+1|)`` random members of
    tier ``level + 1``."""
    t = tiers[shard]
    base = shard[t <= level]
    nxt = shard[t == level + 1]
    if tier_mix > 0 and nxt.numel() > 0:
        extra = take_random(nxt, math.ceil(tier_mix * nxt.numel()), gen)
        base = torch.cat([base, extra])
    return torch.sort(base).values


def easiest_fraction_size(n: int, fraction: float, min_size: int) -> int:
    """Size of `easiest_fraction_pool` over ``n`` pairs: ``min(n, max(min_size, ceil(fraction * n)))``."""
    return min(n, max(min_size, math.ceil(fraction * n)))


def easiest_fraction_pool(easy_order: torch.Tensor, fraction: float, min_size: int) -> torch.Tensor:
    """Sorted pool of the easiest ``max(min_size, ceil(fraction * n))`` pairs, ``easy_order`` easiest first."""
    k = easiest_fraction_size(easy_order.numel(), fraction, min_size)
    return torch.sort(easy_order[:k]).values


def easiest_first(
    shard: torch.Tensor, tiers: torch.Tensor, difficulty: torch.Tensor | None, seed: int, rank: int
) -> torch.Tensor:
    """Shard indices ordered by tier, then difficulty, then a random tie-break seeded by ``(seed, rank)``."""
    gen = make_generator(mix_seed(seed, rank, _EASY_ORDER_SALT))
    order = shard[torch.randperm(shard.numel(), generator=gen)]
    if difficulty is not None:
        order = order[torch.argsort(difficulty[order], stable=True)]
    return order[torch.argsort(tiers[order], stable=True)]
