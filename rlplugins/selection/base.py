"""`PairSelector`: the stateful protocol every pair selector implements
(docs/selection-api.md#3-the-protocol-what-the-training-loop-does-each-step).

This module owns the constructor's checks, the step (``next_batch`` / ``observe_batch`` / ``set_epoch``), the working
set draw with its uniform fallback, and metrics. The pieces it composes live in their own modules: the scoring
request/feed cycle (`score_requests.ScoreRequests`: ``indices_to_score`` / ``update_scores``), ``state_dict`` /
``load_state_dict`` (`selector_state.SelectorState`), the data-parallel shard (`shard`), the per-pair margin state
(`book.MarginBook`), the margin formula (`margins`), the working set and its shuffled passes (`working.WorkingSet`)
and the state checks (`state`). Subclasses decide when to request scores (``_maybe_open_request``), what to do with
them (``_on_scores``) and, if needed, how to produce a batch.
"""

from __future__ import annotations

import abc
import math

import torch

from rlplugins._config import check_int, check_number

from ._checks import check_float_vector, check_index_vector
from ._rng import make_generator, mix_seed, take_random
from .book import MarginBook
from .config import SageConfig
from .curriculum import tiers_from_difficulty
from .score_requests import ScoreFn, ScoreRequests
from .selector_state import SelectorState
from .shard import make_shard
from .working import WorkingSet

__all__ = ["PairSelector", "ScoreFn"]


class PairSelector(ScoreRequests, SelectorState, abc.ABC):
    """Chooses which preference pairs (dataset indices) to train on, step by step.

    Loop (docs/selection-api.md#3-the-protocol-what-the-training-loop-does-each-step):
    ``indices_to_score()`` → feed ``update_scores(...)`` → ``next_batch()`` →
    optionally ``observe_batch(...)``; ``state_dict()``/``load_state_dict()`` resume exactly.
    """

    #: names of attributes saved by ``state_dict`` (subclasses append theirs)
    _STATE_FIELDS: tuple[str, ...] = (
        "_step",
        "_epoch",
        "_pool_gen",
        "_pool",
        "_request",
        "_received",
        "_pairs_scored",
        "_pairs_observed",
        "_rounds",
        "_refreshes",
        "_score_pending",
        "_external_competence",
        "_last",
    )
    #: fields of ``_STATE_FIELDS`` an older state may lack (they keep the fresh selector's value)
    _OPTIONAL_FIELDS: tuple[str, ...] = ()
    #: index tensors whose length changes during training (pool, working set, open request, ...)
    _VARIABLE_SIZE_FIELDS: tuple[str, ...] = ("_pool", "_request")

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
        self.num_pairs = int(check_int("", "num_pairs", num_pairs, low=1))
        self.batch_size = int(check_int("", "batch_size", batch_size, low=1))
        if config is None:
            config = SageConfig()
        if not isinstance(config, SageConfig):
            raise TypeError(f"config must be a SageConfig, got {type(config).__name__}")
        self.config = config
        check_int("", "total_steps", total_steps, low=1, allow_none=True)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.num_replicas = int(check_int("", "num_replicas", num_replicas, low=1))
        self.rank = int(check_int("", "rank", rank, low=0))
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        self._init_requests(self.num_pairs, score_fn)
        self.name = name or type(self).__name__

        n = self.num_pairs
        self.difficulty: torch.Tensor | None = None
        if difficulty is not None:
            check_float_vector("difficulty", difficulty, n)
            self.difficulty = difficulty.detach().to("cpu", torch.float64)
        if tiers is not None:
            if not isinstance(tiers, torch.Tensor) or tiers.is_floating_point() or tiers.dtype == torch.bool:
                raise TypeError(f"tiers must be an integer torch.Tensor, got {getattr(tiers, 'dtype', type(tiers))}")
            if tiers.dim() != 1 or tiers.shape[0] != n:
                raise ValueError(f"tiers must have shape ({n},), got {tuple(tiers.shape)}")
            t = tiers.detach().to("cpu", torch.int64)
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= config.num_tiers):
                raise ValueError(
                    f"tiers must lie in [0, config.num_tiers={config.num_tiers}), got [{int(t.min())}, {int(t.max())}]"
                )
            self.tiers = t
        elif self.difficulty is not None:
            self.tiers = tiers_from_difficulty(self.difficulty, config.num_tiers)
        else:
            self.tiers = torch.zeros(n, dtype=torch.int64)

        self.shard = make_shard(n, config.seed, self.rank, self.num_replicas, self.batch_size)
        self._in_shard = torch.zeros(n, dtype=torch.bool)
        self._in_shard[self.shard] = True

        self._gen = make_generator(mix_seed(config.seed, self.rank, 0))
        self._step = 0
        self._epoch = 0
        self._book = MarginBook(n, config.history_size)
        self._pool_gen = 0
        self._pool = self.shard.clone()
        self._ws = WorkingSet(self.shard)
        # scratch mask for `_fallback` (all False between calls): marking what is taken costs O(taken), not O(N)
        self._scratch = torch.zeros(n, dtype=torch.bool)
        self._pairs_scored = 0
        self._pairs_observed = 0
        self._rounds = 0
        self._refreshes = 0
        self._score_pending = False
        self._external_competence = math.nan
        self._last: dict[str, float] = {}

    # ------------------------------------------------------------------ margin book and working set views

    @property
    def _u(self) -> torch.Tensor:
        return self._book.u

    @property
    def _history(self) -> torch.Tensor:
        return self._book.history

    @property
    def _curv(self) -> torch.Tensor:
        return self._book.curv

    @property
    def _invalid(self) -> torch.Tensor:
        return self._book.invalid

    @property
    def _scored_gen(self) -> torch.Tensor:
        return self._book.scored_gen

    @property
    def _scored_step(self) -> torch.Tensor:
        return self._book.scored_step

    @property
    def _working(self) -> torch.Tensor:
        return self._ws.working

    # ------------------------------------------------------------------ subclass hooks

    def _maybe_open_request(self) -> torch.Tensor | None:
        """Indices to score now, or None when nothing is due. Called at most once per open request."""
        return None

    def _on_scores(self, request: torch.Tensor, partial: bool) -> None:
        """The request ``request`` is closed (fully fed, or ``partial``): update the selection."""

    def _produce_batch(self) -> torch.Tensor:
        return self._draw_working()

    def _extra_metrics(self) -> dict[str, float]:
        return {}

    # ------------------------------------------------------------------ protocol

    def next_batch(self) -> torch.Tensor:
        """int64 ``[batch_size]``: unique, valid indices of this rank's shard to train on next; advances the step."""
        self.indices_to_score()
        pending = False
        if self._request is not None:
            if self._score_fn is not None:
                self._pull_scores()
            else:
                pending = True
                self._close(partial=True)
        self._score_pending = pending
        batch = self._produce_batch()
        self._check_batch(batch)
        self._step += 1
        return batch

    def observe_batch(
        self,
        indices: torch.Tensor,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
    ) -> None:
        """Optional: margins of a trained batch (free from the training forward) update the margin book."""
        idx = self._check_indices(indices)
        u = self._margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                          idx.shape[0])
        self._book.record_observed(idx, u)
        self._pairs_observed += int(idx.numel())

    def set_competence(self, value: float) -> None:
        """Held-out competence in [0, 1] (used when ``config.competence_source == "external"``)."""
        check_number("", "competence", value, low=0.0, high=1.0)
        self._external_competence = float(value)

    def set_epoch(self, epoch: int) -> None:
        """Reseed from ``(seed, rank, epoch)`` and start a fresh pass over the working set."""
        self._epoch = int(check_int("", "epoch", epoch, low=0))
        self._gen = make_generator(mix_seed(self.config.seed, self.rank, epoch))
        self._ws.restart_pass()

    def metrics(self) -> dict[str, float]:
        """Plain floats, unprefixed names (docs/selection-api.md#5-metrics-plain-floats); O(1): counters only.

        Adapters log them under ``selector/<name>``."""
        out = {
            "step": float(self._step),
            "pool_size": float(self._pool.numel()),
            "working_set_size": float(self._working.numel()),
            "rounds": float(self._rounds),
            "refreshes": float(self._refreshes),
            "pairs_scored": float(self._pairs_scored),
            "pairs_observed": float(self._pairs_observed),
            "nonfinite_margins": float(self._book.nonfinite),
            # every flagged pair is in this rank's shard: indices outside it are refused on input
            "invalid_pairs": float(self._book.num_invalid),
            "score_pending": 1.0 if self._score_pending else 0.0,
        }
        out.update(self._last)
        out.update(self._extra_metrics())
        return out

    # ------------------------------------------------------------------ helpers for subclasses

    def _uses_scores(self) -> bool:
        return False

    def _check_indices(self, indices: torch.Tensor) -> torch.Tensor:
        idx = check_index_vector("indices", indices, self.num_pairs)
        if self.num_replicas > 1 and idx.numel() and not bool(self._in_shard[idx].all()):
            bad = idx[~self._in_shard[idx]][:5].tolist()
            raise ValueError(f"indices {bad} are not in rank {self.rank}'s shard (see selector.shard)")
        return idx

    def _valid(self, idx: torch.Tensor) -> torch.Tensor:
        return idx[~self._invalid[idx]]

    def _fallback(self, taken: torch.Tensor, need: int, prefer: torch.Tensor) -> torch.Tensor:
        """Up to ``need`` valid pairs not in ``taken``: first from ``prefer`` (e.g. the pool), then from the rest of
        the shard, uniformly at random (docs/selection-api.md#6-working-set-and-fallback-never-an-empty-batch)."""
        if need <= 0:
            return torch.empty(0, dtype=torch.int64)
        mask = self._scratch
        marked = [taken]
        mask[taken] = True
        try:
            a = prefer[~self._invalid[prefer] & ~mask[prefer]]
            fa = take_random(a, need, self._gen)
            if fa.numel() >= need:
                return fa
            marked.append(prefer)
            mask[prefer] = True
            b = self.shard[~self._invalid[self.shard] & ~mask[self.shard]]
            fb = take_random(b, need - fa.numel(), self._gen)
            return torch.cat([fa, fb])
        finally:
            for m in marked:  # back to all False, in O(marked)
                mask[m] = False

    def _set_working(self, working: torch.Tensor) -> None:
        self._ws.set(working)

    def _draw_working(self) -> torch.Tensor:
        """``batch_size`` unique valid indices, cycling through shuffled passes over the working set."""
        b = self.batch_size
        working = self._working
        # O(1) unless pairs are flagged: at least |W| - (flagged pairs anywhere) members of W are valid
        n_valid = working.numel() - self._book.num_invalid
        if n_valid < b:
            n_valid = int((~self._invalid[working]).sum())
        if n_valid < b:
            extra = self._fallback(self._working, b - n_valid, self._pool)
            if n_valid + extra.numel() < b:
                raise RuntimeError(
                    f"only {n_valid + extra.numel()} pairs of rank {self.rank}'s shard have finite margins, fewer "
                    f"than batch_size={b}: the log-probs fed to the selector are non-finite (upstream bug)"
                )
            self._set_working(torch.cat([self._working, extra]))
        return self._ws.draw(b, self._invalid, self._gen)

    def _check_batch(self, batch: torch.Tensor) -> None:
        # Internal invariants of the documented contract; a violation is a bug in this module, not in the caller.
        if batch.numel() != self.batch_size or torch.unique(batch).numel() != batch.numel():
            raise AssertionError(f"selector produced an invalid batch of {batch.numel()} indices")
        if bool(self._invalid[batch].any()) or not bool(self._in_shard[batch].all()):
            raise AssertionError("selector produced an invalid or out-of-shard index")
