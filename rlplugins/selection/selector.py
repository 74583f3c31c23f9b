"""`SageSelector`: stability-aware, gradient-efficient selection of DPO pairs with a competence curriculum.

Paper: arXiv 2602.01207 (Wu et al., 2026). The paper's abstracts state a curriculum over refreshable, difficulty-
stratified candidate pools driven by model competence, and a forward-only, Newton-decrement-inspired score that favours
stable confident errors and filters unstable pairs. The equations and the loop below are the rlplugins reconstruction
(docs/sage.md Part B, B4-B7), consistent with those statements but not taken from the paper's text.

Pool mode, each round: score the pool P_k (forward only), drop non-finite and unstable pairs (B5), keep the top
``ceil(rho * |P_k|)`` by ``S(u) = sigma(-u)^2 / (sigma(u)sigma(-u) + delta)`` (or sample ∝ S) as the working set,
train on shuffled passes over it for R steps, then re-score. Competence = preference accuracy on P_k; when it reaches
kappa_up (or the pool is exhausted) the next tier is mixed in. Online mode: every step score ``ceil(B / rho)`` random
pool candidates and keep the B best. The first round (warm-up) is uniform: at step 0 the policy equals the reference,
so every margin is 0 and the score carries no information (C.8).
"""

from __future__ import annotations

import math

import torch

from ._rng import make_generator, mix_seed, take_random, top_k_random_ties, weighted_sample_without_replacement
from .base import PairSelector, ScoreFn
from .config import SageConfig
from .curriculum import easiest_fraction_pool, schedule_fraction, tier_pool
from .scores import score_from_margin
from .stability import in_boundary_band, temporal_unstable

_EASY_ORDER_SALT = 0xEA5E


class SageSelector(PairSelector):
    """SAGE and its ablations (``use_curriculum``, ``use_filter``, ``score_variant`` in `SageConfig`).

    See docs/selection-api.md for the calling protocol; formulas in `rlplugins.selection.scores`.
    """

    _STATE_FIELDS = PairSelector._STATE_FIELDS + (
        "_level",
        "_next_score_step",
        "_warmup_end",
        "_competence",
        "_online_batch",
    )

    def __init__(
        self,
        *,
        num_pairs: int,
        batch_size: int,
        config: SageConfig | None = None,
        tiers: torch.Tensor | None = None,
        difficulty: torch.Tensor | None = None,
        total_steps: int | None = None,
        rank: int = 0,
        num_replicas: int = 1,
        score_fn: ScoreFn | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(
            num_pairs=num_pairs,
            batch_size=batch_size,
            config=config,
            tiers=tiers,
            difficulty=difficulty,
            total_steps=total_steps,
            rank=rank,
            num_replicas=num_replicas,
            score_fn=score_fn,
            name=name or "sage",
        )
        cfg = self.config
        self._schedule = cfg.use_curriculum and cfg.refresh_mode == "schedule"
        if self._schedule and total_steps is None:
            raise ValueError("total_steps is required when config.refresh_mode='schedule'")
        shard_tiers = self.tiers[self.shard]
        self._max_level = int(shard_tiers.max())
        self._easy_order = self._easiest_first()
        self._level = 0
        self._competence = math.nan
        self._online_batch: torch.Tensor | None = None
        if not cfg.use_curriculum:
            self._pool = self.shard.clone()
            self._level = self._max_level
        elif self._schedule:
            frac = schedule_fraction(0, self.total_steps or 1, cfg.schedule_c0)
            self._pool = easiest_fraction_pool(self._easy_order, frac, self.batch_size)
            self._level = int(self.tiers[self._pool].max())
        else:
            self._level = int(shard_tiers.min())
            self._pool = tier_pool(self.shard, self.tiers, self._level, cfg.tier_mix, self._gen)
        n_nominal = self._nominal_size()
        warm = take_random(self._pool, n_nominal, self._gen)
        warm = torch.cat([warm, self._fallback(warm, self.batch_size - warm.numel(), self._pool)])
        self._set_working(warm)
        self._warmup_end = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, n_nominal // self.batch_size)
        self._next_score_step = self._warmup_end

    # ------------------------------------------------------------------ hooks

    def _uses_scores(self) -> bool:
        return True

    def _maybe_open_request(self) -> torch.Tensor | None:
        if self.config.granularity == "pool":
            if self._step < self._next_score_step:
                return None
            if self._schedule:
                self._rebuild_schedule_pool()
            return self._pool.clone()
        if self._step < self._warmup_end or self._online_batch is not None:
            return None  # warm-up, or this step's candidates were already scored and selected
        if self._schedule:
            self._rebuild_schedule_pool()
        return self._draw_candidates()

    def _on_scores(self, request: torch.Tensor, partial: bool) -> None:
        if self.config.granularity == "pool":
            self._update_competence_and_refresh()
            self._select_pool()
        else:
            self._select_online(request)
            self._update_competence_and_refresh()

    def _produce_batch(self) -> torch.Tensor:
        if self._online_batch is not None:
            batch = self._online_batch
            self._online_batch = None
            batch = batch[~self._invalid[batch]]
            if batch.numel() < self.batch_size:
                batch = torch.cat([batch, self._fallback(batch, self.batch_size - batch.numel(), self._pool)])
            if batch.numel() == self.batch_size:
                return batch
        return self._draw_working()

    def _extra_metrics(self) -> dict[str, float]:
        return {"selector/level": float(self._level), "selector/competence": float(self._competence)}

    # ------------------------------------------------------------------ pools and competence

    def _nominal_size(self) -> int:
        """Working-set size of a round before filtering, ``max(B, ceil(rho * |P|))``."""
        return max(self.batch_size, math.ceil(self.config.selection_ratio * self._pool.numel()))

    def _easiest_first(self) -> torch.Tensor:
        """Shard indices ordered by tier, then difficulty, then a seeded random tie-break."""
        gen = make_generator(mix_seed(self.config.seed, self.rank, _EASY_ORDER_SALT))
        order = self.shard[torch.randperm(self.shard.numel(), generator=gen)]
        if self.difficulty is not None:
            order = order[torch.argsort(self.difficulty[order], stable=True)]
        return order[torch.argsort(self.tiers[order], stable=True)]

    def _rebuild_schedule_pool(self) -> None:
        frac = schedule_fraction(self._step, self.total_steps or 1, self.config.schedule_c0)
        new = easiest_fraction_pool(self._easy_order, frac, self.batch_size)
        if new.numel() != self._pool.numel():
            self._pool = new
            self._refreshes += 1
            self._level = int(self.tiers[new].max())

    def _current(self, pool: torch.Tensor) -> torch.Tensor:
        """Mask over ``pool``: scored since the pool was (re)built, finite and valid."""
        return (self._scored_gen[pool] == self._pool_gen) & torch.isfinite(self._u[pool]) & ~self._invalid[pool]

    def _pool_competence(self) -> float:
        pool = self._pool
        cur = self._current(pool)
        n = int(cur.sum())
        if n == 0 or n < self.config.competence_min_coverage * pool.numel():
            return math.nan
        return float((self._u[pool][cur] > 0).double().mean())

    def _exhausted(self) -> bool:
        """Few stable confident errors left (< exhaust_fraction * |P|) while most pairs are off the boundary."""
        cfg = self.config
        pool = self._pool
        cur = self._current(pool)
        n = int(cur.sum())
        if n == 0 or n < cfg.competence_min_coverage * pool.numel():
            return False
        idx = pool[cur]
        _, band, _, stable = self._stability(idx)
        errors = int((stable & (self._u[idx] < 0)).sum())
        # Without the boundary condition a freshly warmed-up model (all |u| small) would look "exhausted".
        return errors < cfg.exhaust_fraction * pool.numel() and float(band.double().mean()) < 0.5

    def _update_competence_and_refresh(self) -> None:
        cfg = self.config
        comp = self._pool_competence() if cfg.competence_source == "pool" else self._external_competence
        self._competence = comp
        if not cfg.use_curriculum or self._schedule or self._level >= self._max_level:
            return
        if not ((math.isfinite(comp) and comp >= cfg.competence_threshold) or self._exhausted()):
            return
        size = self._pool.numel()
        new = self._pool
        while self._level < self._max_level and new.numel() <= size:
            self._level += 1
            new = tier_pool(self.shard, self.tiers, self._level, cfg.tier_mix, self._gen)
        self._pool = new
        self._pool_gen += 1
        self._refreshes += 1
        self._external_competence = math.nan  # a new level needs a new held-out measurement
        fresh = new[(self._scored_step[new] == self._step) & torch.isfinite(self._u[new])]
        self._scored_gen[fresh] = self._pool_gen
        if cfg.granularity == "pool":
            unscored = new[self._scored_step[new] != self._step]
            if unscored.numel() > 0:
                self._open(unscored)

    # ------------------------------------------------------------------ selection

    def _stability(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(finite, in_band, temporally_unstable, stable) masks over ``idx``."""
        cfg = self.config
        u = self._u[idx]
        finite = torch.isfinite(u) & ~self._invalid[idx]
        if cfg.score_variant == "token_curvature":
            finite &= torch.isfinite(self._curv[idx])
        none = torch.zeros(idx.numel(), dtype=torch.bool)
        if not cfg.use_filter:
            return finite, none, none, finite
        band = in_boundary_band(u, cfg.boundary_band) & finite
        if cfg.sign_consistency or cfg.variance_threshold is not None:
            temporal = temporal_unstable(
                self._history[idx],
                sign_consistency=cfg.sign_consistency,
                variance_threshold=cfg.variance_threshold,
            ) & finite
        else:
            temporal = none
        return finite, band, temporal, finite & ~band & ~temporal

    def _scores(self, idx: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        curv = self._curv[idx] if cfg.score_variant == "token_curvature" else None
        return score_from_margin(
            self._u[idx],
            variant=cfg.score_variant,
            damping=cfg.damping,
            margin_clip=cfg.margin_clip,
            rejected_curvature=curv,
        )

    def _choose(self, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Up to k eligible candidates by score; plus the selection metrics."""
        finite, band, temporal, stable = self._stability(candidates)
        eligible = candidates[stable]
        scores = self._scores(eligible)
        k = min(k, eligible.numel())
        if self.config.selection_mode == "topk":
            chosen = top_k_random_ties(eligible, scores, k, self._gen)
        else:
            # Scores of finite margins are > 0 (u is clipped); the floor only guards against underflow.
            chosen = weighted_sample_without_replacement(eligible, scores.clamp(min=1e-300), k, self._gen)
        n_fin = int(finite.sum())
        chosen_scores = self._scores(chosen)
        chosen_u = self._u[chosen]
        nan = math.nan
        stats = {
            "selector/unstable_fraction": float((finite & ~stable).sum()) / n_fin if n_fin else nan,
            "selector/boundary_fraction": float(band.sum()) / n_fin if n_fin else nan,
            "selector/sign_flip_fraction": float(temporal.sum()) / n_fin if n_fin else nan,
            "selector/mean_score_selected": float(chosen_scores.mean()) if chosen.numel() else nan,
            "selector/mean_margin_selected": float(chosen_u.mean()) if chosen.numel() else nan,
            "selector/confident_error_fraction": float((chosen_u < 0).double().mean()) if chosen.numel() else nan,
        }
        return chosen, stats

    def _select_pool(self) -> None:
        pool = self._pool
        chosen, stats = self._choose(pool, self._nominal_size())
        # The working set shrinks to the eligible pairs rather than being padded with unstable ones; the fallback
        # only tops it up to one batch (docs/selection-api.md §6).
        fill = self._fallback(chosen, self.batch_size - chosen.numel(), pool)
        working = torch.cat([chosen, fill])
        self._set_working(working)
        stats["selector/fallback_fraction"] = fill.numel() / max(1, working.numel())
        self._last = stats
        # R defaults to one pass over the working set W_k (B7 step 3), so a small W_k is re-scored sooner; the
        # extra scoring cost is counted in selector/pairs_scored.
        r = self.config.rescore_interval or max(1, working.numel() // self.batch_size)
        self._next_score_step = self._step + r

    def _draw_candidates(self) -> torch.Tensor:
        n_c = math.ceil(self.batch_size / self.config.selection_ratio)
        cand = take_random(self._valid(self._pool), n_c, self._gen)
        cand = torch.cat([cand, self._fallback(cand, self.batch_size - cand.numel(), self._pool)])
        return torch.sort(cand).values

    def _select_online(self, candidates: torch.Tensor) -> None:
        chosen, stats = self._choose(candidates, self.batch_size)
        fill = self._fallback(chosen, self.batch_size - chosen.numel(), candidates)
        self._online_batch = torch.cat([chosen, fill])
        stats["selector/fallback_fraction"] = fill.numel() / self.batch_size
        self._last = stats
