"""The scoring request/feed cycle of `PairSelector` (docs/selection-api.md#3-the-protocol-what-the-training-loop-does-each-step).

A selector that needs fresh margins *opens a request* (a set of unique shard indices); the training loop reads it
with ``indices_to_score()`` and feeds forward-only log-probs back with ``update_scores(...)``, in one call or in
chunks. The request closes when every index was fed, or partly fed when ``next_batch()`` comes first, and the
subclass's ``_on_scores`` hook then updates the selection. With a ``score_fn`` callback the selector feeds itself
(``_pull_scores``).

Bookkeeping: ``_request`` (the open request, or None) and ``_received`` (fed since it opened) are saved;
``_unfed`` (members not fed yet) and ``_outstanding`` (their count) are derived from them, so that feeding a request
in chunks costs O(chunk) per call, not O(request).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from ._checks import check_float_vector
from .margins import pair_margins

ScoreFn = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


class ScoreRequests:
    """Mixin of `PairSelector`: opening, feeding and closing scoring requests. The host provides ``config``,
    ``_book`` (a `book.MarginBook`), ``_check_indices``, ``_uses_scores``, ``_on_scores`` and the counters."""

    def _init_requests(self, num_pairs: int, score_fn: ScoreFn | None) -> None:
        if score_fn is not None and not callable(score_fn):
            raise TypeError(f"score_fn must be callable or None, got {type(score_fn).__name__}")
        self._score_fn = score_fn
        self._request: torch.Tensor | None = None
        self._received = torch.zeros(num_pairs, dtype=torch.bool)
        # derived (not saved): members of the open request not fed yet, and how many
        self._unfed = torch.zeros(num_pairs, dtype=torch.bool)
        self._outstanding = 0

    def _rebuild_unfed(self) -> None:
        """Derive ``_unfed`` and ``_outstanding`` from the saved ``_request`` and ``_received`` (after a load)."""
        self._unfed = torch.zeros(self._received.shape[0], dtype=torch.bool)
        self._outstanding = 0
        if self._request is not None:
            self._unfed[self._request] = ~self._received[self._request]
            self._outstanding = int(self._unfed.sum())

    def _margins(self, pc, pr, rc, rr, n: int) -> torch.Tensor:
        if pc.shape[0] != n:
            raise ValueError(
                f"log-prob vectors have length {pc.shape[0]} but indices has length {n}: one per index"
            )
        return pair_margins(pc, pr, rc, rr, self.config.beta, self.config.margin_source)

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
