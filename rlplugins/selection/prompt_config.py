"""`PromptGroupSelectorConfig`: the parameters of `prompt_groups.PromptGroupSelector` and their checks (what each one
does: the `prompt_groups` module docstring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from rlplugins._config import ConfigMixin, check_bool, check_int, check_number

__all__ = ["PromptGroupSelectorConfig"]


@dataclass(frozen=True)
class PromptGroupSelectorConfig(ConfigMixin):
    """Parameters of ``PromptGroupSelector`` (what each one does: the `prompt_groups` module docstring)."""

    success_threshold: float = 0.5
    tier_edges: tuple[float, ...] = (1.0 / 3.0, 2.0 / 3.0)
    drop_degenerate: bool = True
    history_size: int = 4
    stability_tau: float = 0.25
    curriculum: bool = True
    initial_tiers: int = 2
    unlock_at: tuple[float, ...] = (0.5,)
    competence_momentum: float = 0.9
    max_prompts: int = 1_000_000

    def __post_init__(self) -> None:
        o = "PromptGroupSelectorConfig"
        check_number(o, "success_threshold", self.success_threshold)
        edges = tuple(self.tier_edges)
        object.__setattr__(self, "tier_edges", edges)
        if not edges:
            raise ValueError("PromptGroupSelectorConfig.tier_edges must hold at least one pass-rate edge, e.g. (1/3, 2/3)")
        for e in edges:
            check_number(o, "tier_edges[...]", e, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"PromptGroupSelectorConfig.tier_edges must be strictly increasing, got {edges!r}")
        for name in ("drop_degenerate", "curriculum"):
            check_bool(o, name, getattr(self, name))
        for name in ("history_size", "initial_tiers", "max_prompts"):
            check_int(o, name, getattr(self, name), low=1)
        if self.initial_tiers > self.num_tiers:
            raise ValueError(
                f"PromptGroupSelectorConfig.initial_tiers must be <= the number of tiers ({self.num_tiers} from "
                f"tier_edges={edges!r}), got {self.initial_tiers}"
            )
        check_number(o, "stability_tau", self.stability_tau, low=0.0)
        check_number(o, "competence_momentum", self.competence_momentum, low=0.0, high=1.0, high_inclusive=False)
        unlock = tuple(self.unlock_at)
        object.__setattr__(self, "unlock_at", unlock)
        locked = self.num_tiers - self.initial_tiers
        if self.curriculum and len(unlock) != locked:
            raise ValueError(
                f"PromptGroupSelectorConfig.unlock_at needs one competence threshold per locked tier "
                f"({locked} = {self.num_tiers} tiers - initial_tiers {self.initial_tiers}), got {unlock!r}"
            )
        for u in unlock:
            check_number(o, "unlock_at[...]", u, low=0.0, high=1.0)
        if any(b < a for a, b in zip(unlock, unlock[1:])):
            raise ValueError(f"PromptGroupSelectorConfig.unlock_at must be non-decreasing, got {unlock!r}")

    @property
    def num_tiers(self) -> int:
        return len(self.tier_edges) + 1

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "PromptGroupSelectorConfig":
        """Build from a mapping (e.g. framework kwargs); an unknown key raises and names the closest field."""
        kwargs = dict(values) if isinstance(values, Mapping) else values
        for key in ("tier_edges", "unlock_at"):
            if isinstance(kwargs, dict) and kwargs.get(key) is not None:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return super().from_mapping(kwargs)
