"""Per-pair reference log-probs for the DPO selector adapters (OpenRLHF, TRL): the reference model is frozen, so
each pair's summed reference log-probs are computed once and reused by every later scoring round."""

from __future__ import annotations

import torch


class ReferenceCache:
    """Reference log-probs per pair (sums over response tokens); NaN = not computed yet."""

    def __init__(self, num_pairs: int) -> None:
        self.chosen = torch.full((num_pairs,), float("nan"), dtype=torch.float64)
        self.rejected = torch.full((num_pairs,), float("nan"), dtype=torch.float64)

    def store(self, indices: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        self.chosen[indices] = chosen.detach().to("cpu", torch.float64)
        self.rejected[indices] = rejected.detach().to("cpu", torch.float64)

    def lookup(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        chosen, rejected = self.chosen[indices], self.rejected[indices]
        if torch.isnan(chosen).any() or torch.isnan(rejected).any():
            return None
        return chosen, rejected

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"chosen": self.chosen.clone(), "rejected": self.rejected.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state["chosen"].shape != self.chosen.shape:
            raise ValueError(f"reference cache holds {state['chosen'].numel()} pairs, the dataset {self.chosen.numel()}")
        self.chosen, self.rejected = state["chosen"].clone(), state["rejected"].clone()
