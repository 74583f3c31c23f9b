"""Baselines SAGE is measured against, behind the same `PairSelector` protocol (docs/sage.md#baselines).

* `UniformSelector` (never scores): ``full`` (standard DPO, uniform over all pairs), ``random_subset`` (a fixed uniform
  subset of ``ceil(rho N)`` pairs: the compute control), ``static_curriculum`` (easy to hard by tiers on a fixed step
  schedule, uniform within the pool) and ``selective_dpo`` (drop the hardest: keep the ``ceil(rho N)`` lowest-difficulty
  pairs; the direction of Selective DPO, arXiv 2502.09650, with pass-rate difficulty instead of its validation loss).
* `StaticScoreSelector` (scores once): after a uniform warm-up, score every pair once and keep for the rest of training
  the ``ceil(rho N)`` smallest signed margins u (``low_gap``: Qi et al., arXiv 2508.04149, "smallest implicit reward
  gap") or the largest (``high_margin``: "Less is More", arXiv 2502.14560); ``external_margins`` (e.g. from a reward
  model) replace the warm-up scoring. With the initial model every implicit gap is 0, hence the warm-up.

The SAGE ablations and ``dynamic_loss`` are `SageSelector` configurations (see `registry.make_selector`).
"""

from __future__ import annotations

import math

import torch

from rlplugins._config import check_choice

from ._checks import check_float_vector
from ._rng import take_random, top_k_random_ties
from .base import PairSelector, ScoreFn
from .config import SageConfig
from .curriculum import easiest_first, static_level, tier_pool

UNIFORM_MODES = ("full", "random_subset", "static_curriculum", "selective_dpo")
STATIC_CRITERIA = ("low_gap", "high_margin")


class UniformSelector(PairSelector):
    """Uniform batches from a working set fixed by ``mode`` (no scoring)."""

    _STATE_FIELDS = PairSelector._STATE_FIELDS + ("_level",)

    def __init__(
        self,
        *,
        mode: str = "full",
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
        check_choice("", "mode", mode, UNIFORM_MODES)
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
            name=name or mode,
        )
        self.mode = mode
        self._level = 0
        n_keep = max(self.batch_size, math.ceil(self.config.selection_ratio * self.shard.numel()))
        if mode == "full":
            working = self.shard.clone()
        elif mode == "random_subset":
            working = torch.sort(take_random(self.shard, n_keep, self._gen)).values
        elif mode == "selective_dpo":
            if difficulty is None and tiers is None:
                raise ValueError("selective_dpo needs difficulty (or tiers) to know which pairs are hardest")
            order = easiest_first(self.shard, self.tiers, self.difficulty, self.config.seed, self.rank)
            working = torch.sort(order[:n_keep]).values
        else:
            if total_steps is None:
                raise ValueError("static_curriculum needs total_steps for its fixed schedule")
            self._levels = torch.unique(self.tiers[self.shard])
            self._level = int(self._levels[0])
            working = self._curriculum_pool()
        self._pool = working.clone()
        self._set_working(working)

    def _curriculum_pool(self) -> torch.Tensor:
        pool = tier_pool(self.shard, self.tiers, self._level, self.config.tier_mix, self._gen)
        return torch.cat([pool, self._fallback(pool, self.batch_size - pool.numel(), self.shard)])

    def _produce_batch(self) -> torch.Tensor:
        if self.mode == "static_curriculum":
            levels = self._levels
            level = int(levels[static_level(self._step, self.total_steps or 1, levels.numel())])
            if level != self._level:
                self._level = level
                self._pool = self._curriculum_pool()
                self._set_working(self._pool)
                self._refreshes += 1
        return self._draw_working()

    def _extra_metrics(self) -> dict[str, float]:
        return {"level": float(self._level)}


class StaticScoreSelector(PairSelector):
    """Score once (after a uniform warm-up) and keep a fixed top-rho subset by signed margin."""

    _STATE_FIELDS = PairSelector._STATE_FIELDS + ("_done", "_warmup_end")

    def __init__(
        self,
        *,
        criterion: str = "low_gap",
        num_pairs: int,
        batch_size: int,
        config: SageConfig | None = None,
        tiers: torch.Tensor | None = None,
        difficulty: torch.Tensor | None = None,
        total_steps: int | None = None,
        rank: int = 0,
        num_replicas: int = 1,
        score_fn: ScoreFn | None = None,
        external_margins: torch.Tensor | None = None,
        name: str | None = None,
    ) -> None:
        check_choice("", "criterion", criterion, STATIC_CRITERIA)
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
            name=name or f"static_{criterion}",
        )
        self.criterion = criterion
        self._n_keep = max(self.batch_size, math.ceil(self.config.selection_ratio * self.shard.numel()))
        self._done = False
        self._warmup_end = (
            self.config.warmup_steps
            if self.config.warmup_steps is not None
            else max(1, self._n_keep // self.batch_size)
        )
        if external_margins is not None:
            ext = check_float_vector("external_margins", external_margins, self.num_pairs)
            self._select(ext.detach().to("cpu", torch.float64))
            self._done = True

    def _uses_scores(self) -> bool:
        return True

    def _maybe_open_request(self) -> torch.Tensor | None:
        if self._done or self._step < self._warmup_end:
            return None
        return self.shard.clone()

    def _on_scores(self, request: torch.Tensor, partial: bool) -> None:
        self._select(self._u)
        self._done = True

    def _select(self, margins: torch.Tensor) -> None:
        shard = self.shard
        ok = torch.isfinite(margins[shard]) & ~self._invalid[shard]
        cand = shard[ok]
        key = -margins[cand] if self.criterion == "low_gap" else margins[cand]
        chosen = top_k_random_ties(cand, key, self._n_keep, self._gen)
        fill = self._fallback(chosen, self.batch_size - chosen.numel(), shard)
        working = torch.cat([chosen, fill])
        self._pool = working.clone()
        self._set_working(working)
        u = margins[chosen]
        self._last = {
            "mean_margin_selected": float(u.mean()) if u.numel() else math.nan,
            "fallback_fraction": fill.numel() / max(1, working.numel()),
        }
