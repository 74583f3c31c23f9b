"""`SageSelector`: stability-aware, gradient-efficient selection of DPO pairs with a competence curriculum.

Paper: arXiv 2602.01207 (Wu et al., 2026). The paper's abstracts state a curriculum over refreshable, difficulty-
stratified candidate pools driven by model competence, and a forward-only, Newton-decrement-inspired score that favours
stable confident errors and filters unstable pairs. Everything below is the rlplugins reconstruction (second design,
docs/sage.md#our-reconstruction), consistent with those statements but not the paper's text.

Pool mode, one *round* every ``rescore_interval`` steps (a fixed cadence):

1. margins ``u`` of the pool P_k (`margins.pair_margins`, ``margin_source``). ``rescore_scope="cached"`` requests only
   pool pairs never scored and otherwise uses the latest margin known per pair: the step-0 score (free: the policy is
   the reference) or the margin of the pair's last training forward (free, ``observe_batch``); ``"pool"`` re-scores
   the whole pool (one forward per pair, counted in ``selector/pairs_scored``);
2. the stability rule (`stability.stability_masks`: scale-free boundary band, temporal sign flips, noise guard);
3. the working set W_k: the *wanted* pairs, stable errors (``u < 0``) ranked by the score ``S(u)`` (top-k or
   sampled), up to ``max(B, ceil(rho |P_k|))``; when fewer qualify, the rest is drawn uniformly from the pool (noise
   suspects excluded, never by margin), so W_k never shrinks below that floor and a weak signal degrades to uniform
   DPO;
4. competence and refresh: the share of the level's starting errors fixed so far (``competence_source="improvement"``,
   label noise cannot cap it because a plateau of ``plateau_rounds`` rounds without progress also advances), or pool
   preference accuracy (``"pool"``), or a held-out value (``"external"``).

Online mode: every step score ``ceil(B / rho)`` random pool candidates and keep the B best wanted ones (uniform fill).
A step costs O(candidates), not O(pool): candidates are drawn without a permutation of the pool, and the pool
statistics the stability rule and the competence read (band width, per-tier median and MAD, error share) are cached
and recomputed when the pool changes or when the margins fed since their computation reach ``1/16`` of the pool
(every step on pools up to ``16 x`` the pairs fed per step; the cache lives in `pool_view`); competence and refresh
are evaluated at each recomputation.
With ``margin_source="implicit"`` every margin is 0 at step 0, so the first round is a uniform warm-up (C.8).
"""

from __future__ import annotations

import math

import torch

from ._rng import take_random, take_random_valid, top_k_random_ties, weighted_sample_without_replacement
from .base import PairSelector, ScoreFn
from .config import SageConfig
from .curriculum import easiest_first, easiest_fraction_pool, easiest_fraction_size, schedule_fraction, tier_pool
from .pool_view import ONLINE_STATS_STALENESS, PoolView
from .scores import score_from_margin

__all__ = ["ONLINE_STATS_STALENESS", "SageSelector"]


class SageSelector(PoolView, PairSelector):
    """SAGE and its ablations (``use_curriculum``, ``use_filter``, ``score_variant``, ``fill`` in `SageConfig`).

    See docs/selection-api.md for the calling protocol; formulas in `rlplugins.selection.scores` and `.margins`.
    """

    _STATE_FIELDS = PairSelector._STATE_FIELDS + (
        "_level",
        "_next_score_step",
        "_warmup_end",
        "_competence",
        "_online_batch",
        "_level_err0",
        "_prev_err",
        "_plateau",
        "_online_view",
        "_dirty",
        "_competence_version",
    )
    #: fields a state saved before the O(batch) rewrite lacks; they keep their fresh value (recomputed at first use)
    _OPTIONAL_FIELDS = ("_online_view", "_dirty", "_competence_version")
    _VARIABLE_SIZE_FIELDS = PairSelector._VARIABLE_SIZE_FIELDS + ("_online_batch",)

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
        self._easy_order = easiest_first(self.shard, self.tiers, self.difficulty, cfg.seed, self.rank)
        self._level = 0
        self._competence = math.nan
        self._online_batch: torch.Tensor | None = None
        self._level_err0 = math.nan
        self._prev_err = math.nan
        self._plateau = 0
        self._init_pool_view()
        self._competence_version = -1  # view version the competence was last computed from
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
        if cfg.warmup_steps is not None:
            self._warmup_end = cfg.warmup_steps
        elif cfg.margin_source == "policy":
            self._warmup_end = 0  # informative at step 0: score before the first update
        else:
            self._warmup_end = max(1, n_nominal // self.batch_size)  # implicit margins are all 0 at step 0
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
            return self._to_score(self._pool)
        if self._step < self._warmup_end or self._online_batch is not None:
            return None  # warm-up, or this step's candidates were already scored and selected
        if self._schedule:
            self._rebuild_schedule_pool()
        return self._draw_candidates()

    def _to_score(self, pairs: torch.Tensor) -> torch.Tensor | None:
        """Pairs of ``pairs`` a pool round needs scored: all of them (``"pool"``) or those with no margin yet."""
        if self.config.rescore_scope == "pool":
            return pairs.clone()
        unknown = pairs[~torch.isfinite(self._u[pairs]) & ~self._invalid[pairs]]
        return unknown if unknown.numel() else None

    def _on_scores(self, request: torch.Tensor, partial: bool) -> None:
        if self.config.granularity == "pool":
            self._round()
        else:
            self._select_online(request)
            self._update_competence_and_refresh()

    def _round(self) -> None:
        pool = self._pool
        view = self._view()
        self._update_competence_and_refresh(view)
        # no margin changes in between: the statistics hold unless a refresh rebuilt the pool
        self._select_pool(view["stats"] if self._pool is pool else None)

    def _produce_batch(self) -> torch.Tensor:
        cfg = self.config
        if cfg.granularity == "pool" and self._step >= self._next_score_step:
            # a round whose margins were all known already (rescore_scope="cached"): nothing was requested
            self._rounds += 1
            self._round()
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
        return {"level": float(self._level), "competence": float(self._competence)}

    # ------------------------------------------------------------------ pools and competence

    def _nominal_size(self) -> int:
        """Working-set size of a round, ``max(B, ceil(rho * |P|))`` (also the floor: W never shrinks below it)."""
        return max(self.batch_size, math.ceil(self.config.selection_ratio * self._pool.numel()))

    def _rebuild_schedule_pool(self) -> None:
        frac = schedule_fraction(self._step, self.total_steps or 1, self.config.schedule_c0)
        # the pool is the easiest k pairs: only a new size changes it (no O(pool) rebuild per step)
        if easiest_fraction_size(self._easy_order.numel(), frac, self.batch_size) != self._pool.numel():
            new = easiest_fraction_pool(self._easy_order, frac, self.batch_size)
            self._pool = new
            self._refreshes += 1
            self._level = int(self.tiers[new].max())

    def _update_competence_and_refresh(self, view: dict | None = None) -> None:
        cfg = self.config
        view = view or self._view()
        if cfg.granularity == "online":
            if view["version"] == self._competence_version:
                return  # nothing new since the last evaluation (cached statistics)
            self._competence_version = view["version"]
        err, acc, exhausted = view["errors"]
        advance = exhausted
        if cfg.competence_source == "external":
            comp = self._external_competence
        elif cfg.competence_source == "pool":
            comp = acc
        else:
            if math.isfinite(err) and not math.isfinite(self._level_err0):
                self._level_err0 = err
            e0 = self._level_err0
            comp = (1.0 - err / e0 if e0 > 0 else 1.0) if math.isfinite(err) and math.isfinite(e0) else math.nan
            if math.isfinite(err) and cfg.plateau_rounds > 0:
                # label noise cannot cap this trigger: an error share that stops falling advances the curriculum
                improved = not math.isfinite(self._prev_err) or err < self._prev_err - 1e-12
                self._plateau = 0 if improved else self._plateau + 1
                advance |= self._plateau >= cfg.plateau_rounds
            if math.isfinite(err):
                self._prev_err = err
        self._competence = comp
        if not cfg.use_curriculum or self._schedule or self._level >= self._max_level:
            return
        if not ((math.isfinite(comp) and comp >= cfg.competence_threshold) or advance):
            return
        size = self._pool.numel()
        new = self._pool
        while self._level < self._max_level and new.numel() <= size:
            self._level += 1
            new = tier_pool(self.shard, self.tiers, self._level, cfg.tier_mix, self._gen)
        self._pool = new
        self._pool_gen += 1
        self._refreshes += 1
        self._level_err0 = math.nan
        self._prev_err = math.nan
        self._plateau = 0
        self._external_competence = math.nan  # a new level needs a new held-out measurement
        fresh = new[(self._scored_step[new] == self._step) & torch.isfinite(self._u[new])]
        self._book.scored_gen[fresh] = self._pool_gen
        if cfg.granularity == "pool":
            if cfg.rescore_scope == "pool":
                need = new[self._scored_step[new] != self._step]
            else:
                need = self._to_score(new)
            if need is not None and need.numel() > 0:
                self._open(need)

    # ------------------------------------------------------------------ selection

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

    def _choose(
        self, candidates: torch.Tensor, k: int, stats: dict
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
        """Up to k *wanted* candidates by score, the noise suspects among the candidates, and the selection metrics.

        Wanted: stable pairs with ``u < 0`` (``fill="uniform"``, the default), or every stable pair (``fill="score"``:
        the top-k by score, as loss-ranked baselines do).
        """
        cfg = self.config
        m = self._stability(candidates, stats)
        u = self._u[candidates]
        wanted_mask = m.stable & (u < 0) if cfg.fill == "uniform" else m.stable
        eligible = candidates[wanted_mask]
        scores = self._scores(eligible)
        k = min(k, eligible.numel())
        if cfg.selection_mode == "topk":
            chosen, pos = top_k_random_ties(eligible, scores, k, self._gen, with_positions=True)
        else:
            # Scores of finite margins are > 0 (u is clipped); the floor only guards against underflow.
            chosen, pos = weighted_sample_without_replacement(eligible, scores.clamp(min=1e-300), k, self._gen,
                                                              with_positions=True)
        n_fin = int(m.finite.sum())
        chosen_u = self._u[chosen]
        nan = math.nan
        stats = {
            "unstable_fraction": float((m.finite & ~m.stable).sum()) / n_fin if n_fin else nan,
            "boundary_fraction": float(m.band.sum()) / n_fin if n_fin else nan,
            "sign_flip_fraction": float(m.temporal.sum()) / n_fin if n_fin else nan,
            "noise_suspect_fraction": float(m.suspect.sum()) / n_fin if n_fin else nan,
            "mean_score_selected": float(scores[pos].mean()) if chosen.numel() else nan,
            "mean_margin_selected": float(chosen_u.mean()) if chosen.numel() else nan,
            "confident_error_fraction": float((chosen_u < 0).double().mean()) if chosen.numel() else nan,
        }
        return chosen, candidates[m.suspect], stats

    def _select_pool(self, pool_stats: dict | None = None) -> None:
        pool = self._pool
        n = self._nominal_size()
        chosen, suspects, stats = self._choose(pool, n, pool_stats or self._pool_stats_now())
        # No trivial fill: what the score does not want is drawn uniformly from the pool (noise suspects excluded),
        # up to the floor. Uniform members of the previous working set stay (they were drawn uniformly already), so
        # a round that changes nothing does not restart the pass over the working set.
        taken = torch.zeros(self.num_pairs, dtype=torch.bool)
        taken[chosen] = True
        taken[suspects] = True
        in_pool = torch.zeros(self.num_pairs, dtype=torch.bool)
        in_pool[pool] = True
        old = self._working
        keep = old[~taken[old] & in_pool[old] & ~self._invalid[old]][: max(0, n - chosen.numel())]
        taken[keep] = True
        fill = torch.cat([keep, self._fallback(taken.nonzero().flatten(), n - chosen.numel() - keep.numel(), pool)])
        working = torch.cat([chosen, fill])
        if working.numel() != old.numel() or not torch.equal(torch.sort(working).values, torch.sort(old).values):
            self._set_working(working)
        stats["fallback_fraction"] = fill.numel() / max(1, chosen.numel() + fill.numel())
        self._last = stats
        r = self.config.rescore_interval or max(1, self._working.numel() // self.batch_size)
        self._next_score_step = self._step + r

    def _draw_candidates(self) -> torch.Tensor:
        n_c = math.ceil(self.batch_size / self.config.selection_ratio)
        pool = self._pool
        cand = None
        if pool.numel() > 4 * n_c:
            cand = take_random_valid(pool, n_c, self._gen, self._invalid)  # O(candidates)
        if cand is None:  # a small or mostly invalid pool: a permutation of its valid pairs
            cand = take_random(self._valid(pool), n_c, self._gen)
        cand = torch.cat([cand, self._fallback(cand, self.batch_size - cand.numel(), self._pool)])
        return torch.sort(cand).values

    def _select_online(self, candidates: torch.Tensor) -> None:
        chosen, suspects, stats = self._choose(candidates, self.batch_size, self._view()["stats"])
        fill = self._fallback(torch.cat([chosen, suspects]), self.batch_size - chosen.numel(), candidates)
        self._online_batch = torch.cat([chosen, fill])
        stats["fallback_fraction"] = fill.numel() / self.batch_size
        self._last = stats
