"""The pool statistics `SageSelector` reads, and their online-mode cache.

The stability rule and the competence read statistics of the current pool's margins (band width, per-tier median
and MAD: `stability.pool_statistics`) and the pool's error share. Pool mode computes them at each round (a round
costs O(pool) anyway). Online mode must cost O(candidates) per step, so it caches them in a *view* and recomputes it
when the pool changes or when the margins fed since its computation (``_dirty``, counted by ``update_scores`` and
``observe_batch``) reach ``ONLINE_STATS_STALENESS`` of the pool: every step on pools up to ``16 x`` the pairs fed per
step, amortised O(candidates) beyond.
"""

from __future__ import annotations

import math

import torch

from .stability import StabilityMasks, masks_from_statistics, pool_statistics

# Online mode recomputes its cached pool statistics once the margins fed since the last computation reach this share
# of the pool (amortised O(candidates) per step; exact, i.e. every step, on pools up to 16x the pairs fed per step).
ONLINE_STATS_STALENESS = 1.0 / 16.0

_VIEW_KEYS = {"stats", "errors", "pool_gen", "pool_size", "version"}


class PoolView:
    """Mixin of `SageSelector` (placed before `PairSelector` in its bases: it counts the margins fed through
    ``update_scores`` and ``observe_batch``). Saved fields: ``_online_view`` (the cached view, or None) and
    ``_dirty``."""

    def _init_pool_view(self) -> None:
        self._online_view: dict | None = None  # online mode: cached pool statistics (see ONLINE_STATS_STALENESS)
        self._dirty = 0  # margins fed since the view was computed

    def update_scores(self, indices, *args, **kwargs) -> None:
        # counted before the call: a round closed by this call must see these margins as fed (same as observe_batch)
        n = indices.numel() if isinstance(indices, torch.Tensor) else 0
        self._dirty += n
        try:
            super().update_scores(indices, *args, **kwargs)
        except Exception:
            self._dirty -= n  # refused input changed nothing
            raise

    def observe_batch(self, indices, *args, **kwargs) -> None:
        n = indices.numel() if isinstance(indices, torch.Tensor) else 0
        super().observe_batch(indices, *args, **kwargs)
        self._dirty += n

    def _after_load(self) -> None:
        if self._online_view is not None and not (
            isinstance(self._online_view, dict) and _VIEW_KEYS <= self._online_view.keys()
        ):
            raise ValueError("state_dict field _online_view is not a SageSelector online view")

    def _known(self, pool: torch.Tensor) -> torch.Tensor:
        """Mask over ``pool``: a usable margin (pool mode ``"pool"``: scored since the pool was (re)built)."""
        ok = torch.isfinite(self._u[pool]) & ~self._invalid[pool]
        if self.config.rescore_scope == "pool" or self.config.granularity == "online":
            ok &= self._scored_gen[pool] == self._pool_gen
        return ok

    def _pool_stats_now(self) -> dict:
        """`stability.pool_statistics` of the current pool's finite, valid margins (per tier), O(pool)."""
        pool = self._pool
        pool_u = self._u[pool]
        ok = torch.isfinite(pool_u) & ~self._invalid[pool]
        return pool_statistics(pool_u[ok], self.config, self.tiers[pool][ok])

    def _view(self) -> dict:
        """Pool statistics (and the competence inputs) the selection reads: computed now in pool mode (a round costs
        O(pool) anyway); in online mode cached until the pool changes or ``ONLINE_STATS_STALENESS`` of it was fed."""
        if self.config.granularity == "pool":
            stats = self._pool_stats_now()
            return {"stats": stats, "errors": self._pool_errors(stats)}
        v = self._online_view
        size = self._pool.numel()
        if (v is None or v["pool_gen"] != self._pool_gen or v["pool_size"] != size
                or self._dirty >= max(1, math.ceil(ONLINE_STATS_STALENESS * size))):
            stats = self._pool_stats_now()
            v = {"stats": stats, "errors": self._pool_errors(stats), "pool_gen": self._pool_gen, "pool_size": size,
                 "version": 0 if v is None else v["version"] + 1}
            self._online_view = v
            self._dirty = 0
        return v

    def _pool_errors(self, stats: dict) -> tuple[float, float, bool]:
        """(error share, preference accuracy, exhausted) over the pool's known margins; NaN if too few known."""
        cfg = self.config
        pool = self._pool
        known = self._known(pool)
        n = int(known.sum())
        if n == 0 or n < cfg.competence_min_coverage * pool.numel():
            return math.nan, math.nan, False
        idx = pool[known]
        u = self._u[idx]
        masks = self._stability(idx, stats)
        wanted = int((masks.stable & (u < 0)).sum())
        exhausted = wanted < cfg.exhaust_fraction * pool.numel()
        if cfg.margin_source == "implicit":
            # at step 0 every implicit margin is 0 (all in the band): not exhausted, just uninformed
            exhausted &= float(masks.band.double().mean()) < 0.5
        return float((u < 0).double().mean()), float((u > 0).double().mean()), exhausted

    def _stability(self, idx: torch.Tensor, stats: dict) -> StabilityMasks:
        """The stability rule's masks for the pairs ``idx`` under the pool statistics ``stats``."""
        cfg = self.config
        u = torch.where(self._invalid[idx], torch.full_like(self._u[idx], math.nan), self._u[idx])
        if cfg.score_variant == "token_curvature":
            u = torch.where(torch.isfinite(self._curv[idx]), u, torch.full_like(u, math.nan))
        return masks_from_statistics(u, self._history[idx], stats, cfg, self.tiers[idx])
