"""`WorkingSet`: the pairs a selector currently trains on, drawn as unique batches in shuffled passes."""

from __future__ import annotations

from typing import Any

import torch

from ._rng import shuffled
from .state import check_tensor_like


class WorkingSet:
    def __init__(self, working: torch.Tensor) -> None:
        self.set(working)

    def set(self, working: torch.Tensor) -> None:
        self.working = working.clone()
        self.order: torch.Tensor | None = None
        self.cursor = 0

    def restart_pass(self) -> None:
        self.order = None
        self.cursor = 0

    def draw(self, b: int, invalid: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """``b`` unique indices not flagged ``invalid``, continuing the current shuffled pass (a new pass is
        reshuffled when one ends). The caller guarantees at least ``b`` valid members.

        The next valid entries of the pass in order (vectorised, O(b) when few pairs are invalid); entries already
        taken in this batch are skipped when a pass ends mid-batch."""
        parts: list[torch.Tensor] = []
        need = b
        while need > 0:
            if self.order is None or self.cursor >= self.order.numel():
                self.order = shuffled(self.working, gen)
                self.cursor = 0
            order, start = self.order, self.cursor
            width = need
            while True:
                window = order[start:start + width]
                ok = ~invalid[window]
                if parts:
                    ok &= ~torch.isin(window, torch.cat(parts))
                count = torch.cumsum(ok, 0)
                if window.numel() == 0 or int(count[-1]) >= need or start + width >= order.numel():
                    break
                width *= 2
            if window.numel() and int(count[-1]) >= need:
                stop = int(torch.searchsorted(count, need))  # position of the need-th valid entry
                window, ok = window[: stop + 1], ok[: stop + 1]
            taken = window[ok]
            parts.append(taken)
            need -= taken.numel()
            self.cursor = start + window.numel()
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def state_dict(self) -> dict[str, Any]:
        return {"working": self.working.clone(), "order": None if self.order is None else self.order.clone(),
                "cursor": self.cursor}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        w = state.get("working")
        if not isinstance(w, torch.Tensor) or w.dim() != 1 or w.dtype != torch.int64:
            raise ValueError("state_dict field working must be a 1-D int64 tensor")
        order = state.get("order")
        if order is not None:
            check_tensor_like("order", order, w)
        cursor = state.get("cursor")
        if isinstance(cursor, bool) or not isinstance(cursor, int) or cursor < 0:
            raise ValueError(f"state_dict field cursor must be an int >= 0, got {cursor!r}")
        self.working = w.clone()
        self.order = None if order is None else order.clone()
        self.cursor = cursor
