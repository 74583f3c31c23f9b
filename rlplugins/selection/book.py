"""`MarginBook`: what a selector knows about each pair's margin (latest value, history, validity, when scored)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .state import check_tensor_like


class MarginBook:
    """Per-pair margin state over the whole dataset (``n`` pairs), CPU tensors.

    ``u``: latest finite margin, from a scoring forward or from a training forward (``observe``), NaN if none;
    ``history`` ``[n, K]``: the last K margins (oldest to newest, NaN = missing); ``curv``: latest
    ``rejected_curvature``; ``invalid``: the latest margin was non-finite (never selected until a finite score clears
    it); ``scored_gen`` / ``scored_step``: pool generation and step of the latest *score* (-1 = never).
    ``num_invalid`` counts the flagged pairs, kept up to date in O(indices) per call (metrics read it in O(1)).
    """

    _TENSORS = ("u", "history", "curv", "invalid", "scored_gen", "scored_step")

    def __init__(self, n: int, history_size: int) -> None:
        self.u = torch.full((n,), math.nan, dtype=torch.float64)
        self.history = torch.full((n, history_size), math.nan, dtype=torch.float64)
        self.curv = torch.full((n,), math.nan, dtype=torch.float64)
        self.invalid = torch.zeros(n, dtype=torch.bool)
        self.scored_gen = torch.full((n,), -1, dtype=torch.int64)
        self.scored_step = torch.full((n,), -1, dtype=torch.int64)
        self.nonfinite = 0
        self.num_invalid = 0

    def _append(self, idx: torch.Tensor, u: torch.Tensor) -> None:
        if idx.numel() == 0:
            return
        # numpy views of the same memory: a fraction of torch's per-call cost on the small chunks scoring is fed in
        h, i = self.history.numpy(), idx.numpy()
        h[i, :-1] = h[i, 1:]  # fancy indexing reads a copy: no aliasing
        h[i, -1] = u.numpy()

    def record_scores(
        self, idx: torch.Tensor, u: torch.Tensor, finite: torch.Tensor, gen: int, step: int,
        curv: torch.Tensor | None = None,
    ) -> None:
        """A scoring forward of ``idx``: a non-finite margin flags the pair, a finite one clears the flag."""
        bad = idx.numel() - int(finite.sum())
        self.nonfinite += bad
        if curv is not None:
            self.curv[idx] = curv.clamp(0.0, 0.25)
        # indices are unique (checked by the selector), so the count changes by new flags minus cleared ones
        i, invalid = idx.numpy(), self.invalid.numpy()
        if self.num_invalid:
            self.num_invalid -= int(np.count_nonzero(invalid[i]))
        self.num_invalid += bad
        if bad == 0:  # the common case: numpy views, a few microseconds per chunk of a chunked scoring round
            invalid[i] = False
            self.u.numpy()[i] = u.numpy()
            self._append(idx, u)
        else:
            self.invalid[idx] = ~finite
            self.u[idx] = torch.where(finite, u, torch.full_like(u, math.nan))
            self._append(idx[finite], u[finite])
        self.scored_gen.numpy()[i] = gen
        self.scored_step.numpy()[i] = step

    def record_observed(self, idx: torch.Tensor, u: torch.Tensor) -> None:
        """Margins of a trained batch: finite ones update ``u`` and the history; a non-finite one flags the pair
        (only a finite *score* clears the flag)."""
        finite = torch.isfinite(u)
        self.nonfinite += int((~finite).sum())
        flagged = idx[~finite]
        self.num_invalid += int((~self.invalid[flagged]).sum())
        self.invalid[flagged] = True
        self.u[idx[finite]] = u[finite]
        self._append(idx[finite], u[finite])

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k).clone() for k in self._TENSORS}
        out["nonfinite"] = self.nonfinite
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self._TENSORS:
            check_tensor_like(f"book.{k}", state.get(k), getattr(self, k))
        for k in self._TENSORS:
            setattr(self, k, state[k].clone())
        self.nonfinite = int(state["nonfinite"])
        self.num_invalid = int(self.invalid.sum())
