"""`PairSelector`: the stateful protocol every pair selector implements
(docs/selection-api.md#3-the-protocol-what-the-training-loop-does-each-step).

This module owns the request/feed cycle (``indices_to_score`` / ``update_scores`` / ``next_batch`` /
``observe_batch``), the uniform fallback, metrics and ``state_dict``. The pieces it composes live in their own modules:
the data-parallel shard (`shard`), the per-pair margin state (`book.MarginBook`), the margin formula (`margins`), the
working set and its shuffled passes (`working.WorkingSet`) and the state checks (`state`). Subclasses decide when to
request scores (``_maybe_open_request``), what to do with them (``_on_scores``) and, if needed, how to produce a batch.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ._checks import check_float_vector, check_index_vector
from ._rng import make_generator, mix_seed, take_random
from .book import MarginBook
from .config import SageConfig
from .curriculum import tiers_from_difficulty
from .margins import pair_margins
from .shard import make_shard
from .state import check_tensor_like, config_identity, fingerprint
from .working import WorkingSet

ScoreFn = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]

def _check_pos_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class PairSelector(abc.ABC):
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
        self.num_pairs = _check_pos_int("num_pairs", num_pairs, 1)
        self.batch_size = _check_pos_int("batch_size", batch_size, 1)
        if config is None:
            config = SageConfig()
        if not isinstance(config, SageConfig):
            raise TypeError(f"config must be a SageConfig, got {type(config).__name__}")
        self.config = config
        if total_steps is not None:
            _check_pos_int("total_steps", total_steps, 1)
        self.total_steps = total_steps
        self.num_replicas = _check_pos_int("num_replicas", num_replicas, 1)
        self.rank = _check_pos_int("rank", rank, 0)
        if self.rank >= self.num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}), got {rank}")
        if score_fn is not None and not callable(score_fn):
            raise TypeError(f"score_fn must be callable or None, got {type(score_fn).__name__}")
        self._score_fn = score_fn
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
        self._request: torch.Tensor | None = None
        self._received = torch.zeros(n, dtype=torch.bool)
        # derived (not saved): members of the open request not fed yet, and how many, so that feeding a request in
        # chunks costs O(chunk) per call, not O(request)
        self._unfed = torch.zeros(n, dtype=torch.bool)
        self._outstanding = 0
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

    def _margins(self, pc, pr, rc, rr, n: int) -> torch.Tensor:
        if pc.shape[0] != n:
            raise ValueError(
                f"log-prob vectors have length {pc.shape[0]} but indices has length {n}: one per index"
            )
        return pair_margins(pc, pr, rc, rr, self.config.beta, self.config.margin_source)

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

    def indices_to_score(self) -> torch.Tensor:
        """int64 ``[K]``: the pairs whose forward-only log-probs are needed before the next ``next_batch()``."""
        if self._request is None:
            req = self._maybe_open_request()
            if req is not None and req.numel() > 0:
                self._open(req)
        if self._request is None:
            return torch.empty(0, dtype=torch.int64)
        return self._request[~self._received[self._request]].clone()

    def update_scores(
        self,
        indices: torch.Tensor,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
        *,
        rejected_curvature: torch.Tensor | None = None,
    ) -> None:
        """Feed forward-only sequence log-probs (sums over response tokens) of ``indices`` (``[K]`` each)."""
        idx = self._check_indices(indices)
        u = self._margins(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                          idx.shape[0])
        curv = None
        if rejected_curvature is not None:
            curv = check_float_vector("rejected_curvature", rejected_curvature, idx.shape[0])
            curv = curv.detach().to("cpu", torch.float64)
            bad = torch.isfinite(curv) & ((curv < 0) | (curv > 0.25 + 1e-6))
            if bool(bad.any()):
                raise ValueError("rejected_curvature must be the mean of p_t(1 - p_t) over rejected tokens, in [0, 0.25]")
        elif self.config.score_variant == "token_curvature" and self._uses_scores():
            raise ValueError("score_variant='token_curvature' needs rejected_curvature in update_scores")
        finite = torch.isfinite(u)
        if curv is not None and self.config.score_variant == "token_curvature":
            finite &= torch.isfinite(curv)
        self._book.record_scores(idx, u, finite, self._pool_gen, self._step, curv)
        self._pairs_scored += int(idx.numel())
        if self._request is not None:
            i, unfed = idx.numpy(), self._unfed.numpy()
            self._outstanding -= int(np.count_nonzero(unfed[i]))
            unfed[i] = False
            self._received.numpy()[i] = True
            if self._outstanding == 0:
                self._close(partial=False)

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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise ValueError(f"competence must be a number in [0, 1], got {value!r}")
        self._external_competence = float(value)

    def set_epoch(self, epoch: int) -> None:
        """Reseed from ``(seed, rank, epoch)`` and start a fresh pass over the working set."""
        _check_pos_int("epoch", epoch, 0)
        self._epoch = epoch
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

    # ------------------------------------------------------------------ state

    def _identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": type(self).__name__,
            "num_pairs": self.num_pairs,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "num_replicas": self.num_replicas,
            "total_steps": self.total_steps,
            "config": config_identity(self.config),
        }

    def _fingerprint(self) -> str:
        return fingerprint(
            self._identity(), {"shard": self.shard, "tiers": self.tiers, "difficulty": self.difficulty}
        )

    @staticmethod
    def _copy(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.clone()
        if isinstance(v, dict):
            return dict(v)
        return v

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain Python values (loads with
        ``torch.load(..., weights_only=True)``)."""
        return {
            "identity": self._identity(),
            "fingerprint": self._fingerprint(),
            "shard": self.shard.clone(),
            "tiers": self.tiers.clone(),
            "generator": self._gen.get_state(),
            "book": self._book.state_dict(),
            "working": self._ws.state_dict(),
            "fields": {key: self._copy(getattr(self, key)) for key in self._STATE_FIELDS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from a selector built with the same arguments.

        Refused (``ValueError``, nothing changed) when the identity (name, sizes, rank, config) differs, when the
        fingerprint of shard, tiers and difficulty differs (e.g. another ``difficulty`` with the same tiers), or when a
        tensor has another shape or dtype than this selector's.
        """
        keys = {"identity", "fingerprint", "shard", "tiers", "generator", "book", "working", "fields"}
        if not isinstance(state, dict) or not keys <= state.keys():
            missing = sorted(keys - set(state)) if isinstance(state, dict) else sorted(keys)
            raise ValueError(f"state must be a dict returned by PairSelector.state_dict(); missing {missing}")
        mine = self._identity()
        if state["identity"] != mine:
            theirs = state["identity"] if isinstance(state["identity"], dict) else {}
            diff = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ValueError(f"state_dict was saved by a different selector: mismatch in {diff}")
        check_tensor_like("shard", state["shard"], self.shard)
        check_tensor_like("tiers", state["tiers"], self.tiers)
        if not torch.equal(state["shard"], self.shard) or not torch.equal(state["tiers"], self.tiers):
            raise ValueError("state_dict was saved with a different shard or different tiers")
        if state["fingerprint"] != self._fingerprint():
            raise ValueError(
                "state_dict was saved by a selector built from different data (difficulty, tiers or shard differ: "
                "fingerprint mismatch); build the selector with the same arguments as the saved run"
            )
        fields = state["fields"]
        missing = [k for k in self._STATE_FIELDS if k not in fields and k not in self._OPTIONAL_FIELDS]
        if missing:
            raise ValueError(f"state_dict lacks fields {missing}")
        present = [k for k in self._STATE_FIELDS if k in fields]
        for key in present:
            cur, new = getattr(self, key), fields[key]
            if isinstance(cur, torch.Tensor) and (key not in self._VARIABLE_SIZE_FIELDS):
                check_tensor_like(key, new, cur)
            elif key in self._VARIABLE_SIZE_FIELDS and new is not None:
                self._check_index_state(key, new)
        gen_state = state["generator"]
        if not isinstance(gen_state, torch.Tensor) or gen_state.shape != self._gen.get_state().shape:
            raise ValueError("state_dict field generator must be a torch.Generator state (uint8 tensor)")
        book = MarginBook(self.num_pairs, self.config.history_size)
        book.load_state_dict(state["book"])
        ws = WorkingSet(self.shard)
        ws.load_state_dict(state["working"])
        self._check_index_state("working", ws.working)
        # every check passed: apply
        self._book, self._ws = book, ws
        for key in present:
            setattr(self, key, self._copy(fields[key]))
        self._gen.set_state(gen_state)
        self._unfed = torch.zeros(self.num_pairs, dtype=torch.bool)
        self._outstanding = 0
        if self._request is not None:
            self._unfed[self._request] = ~self._received[self._request]
            self._outstanding = int(self._unfed.sum())
        self._after_load()

    #: index tensors whose length changes during training (pool, working set, open request, ...)
    _VARIABLE_SIZE_FIELDS: tuple[str, ...] = ("_pool", "_request")

    def _check_index_state(self, key: str, value: object) -> None:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.dim() != 1:
            raise ValueError(f"state_dict field {key} must be a 1-D int64 tensor of shard indices")
        if value.numel() and not bool(((value >= 0) & (value < self.num_pairs)).all() and self._in_shard[value].all()):
            raise ValueError(f"state_dict field {key} holds indices outside this rank's shard")

    # ------------------------------------------------------------------ helpers for subclasses

    def _uses_scores(self) -> bool:
        return False

    def _check_indices(self, indices: torch.Tensor) -> torch.Tensor:
        idx = check_index_vector("indices", indices, self.num_pairs)
        if self.num_replicas > 1 and idx.numel() and not bool(self._in_shard[idx].all()):
            bad = idx[~self._in_shard[idx]][:5].tolist()
            raise ValueError(f"indices {bad} are not in rank {self.rank}'s shard (see selector.shard)")
        return idx

    def _after_load(self) -> None:
        """Rebuild state derived from the saved fields (subclasses)."""

    def _open(self, request: torch.Tensor) -> None:
        self._request = request.clone()
        self._received[request] = False
        self._unfed[request] = True
        self._outstanding = int(request.numel())  # requests hold unique indices

    def _close(self, partial: bool) -> None:
        req = self._request
        assert req is not None
        self._request = None
        self._unfed[req] = False
        self._outstanding = 0
        self._rounds += 1
        self._on_scores(req, partial)

    def _pull_scores(self) -> None:
        assert self._score_fn is not None
        # A refresh can open one follow-up request per curriculum level; more than that means the callback is broken.
        for _ in range(self.config.num_tiers + 3):
            if self._request is None:
                return
            idx = self._request[~self._received[self._request]].clone()
            out = self._score_fn(idx)
            if not isinstance(out, (tuple, list)) or len(out) not in (4, 5):
                raise TypeError(
                    "score_fn must return (policy_chosen, policy_rejected, ref_chosen, ref_rejected[, rejected_curvature])"
                )
            curv = out[4] if len(out) == 5 else None
            self.update_scores(idx, out[0], out[1], out[2], out[3], rejected_curvature=curv)
        if self._request is not None:
            raise RuntimeError("score_fn kept the scoring request open; it must return one score per index")

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
