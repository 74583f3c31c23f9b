"""`make_selector`: every selector by name, one constructor contract (docs/selection-api.md#1-names)."""

from __future__ import annotations

import dataclasses

import torch

from rlplugins._config import did_you_mean

from .base import PairSelector, ScoreFn
from .baselines import StaticScoreSelector, UniformSelector
from .config import SageConfig
from .selector import SageSelector

SELECTOR_NAMES: tuple[str, ...] = (
    "sage",
    "sage_no_curriculum",
    "sage_no_filter",
    "signal_only",
    "dynamic_loss",
    "dpo_full",
    "random_subset",
    "static_curriculum",
    "selective_dpo",
    "static_low_gap",
    "static_high_margin",
)

# SAGE ablations and dynamic_loss are SageSelector configurations (docs/sage.md#baselines).
_SAGE_OVERRIDES: dict[str, dict[str, object]] = {
    "sage": {},
    "sage_no_curriculum": {"use_curriculum": False},
    "sage_no_filter": {"use_filter": False},
    "signal_only": {"score_variant": "signal"},
    # loss ranking on the implicit DPO margin over the whole shard, re-scored every round, top-k (no uniform fill)
    "dynamic_loss": {
        "use_curriculum": False, "use_filter": False, "score_variant": "loss", "margin_source": "implicit",
        "fill": "score", "rescore_scope": "pool",
    },
}
_UNIFORM_MODES = {
    "dpo_full": "full",
    "random_subset": "random_subset",
    "static_curriculum": "static_curriculum",
    "selective_dpo": "selective_dpo",
}
_STATIC = {"static_low_gap": "low_gap", "static_high_margin": "high_margin"}


def make_selector(
    name: str,
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
    external_margins: torch.Tensor | None = None,
) -> PairSelector:
    """Build the selector called ``name`` (one of `SELECTOR_NAMES`)."""
    if name not in SELECTOR_NAMES:
        raise ValueError(f"unknown selector {name!r}; choose one of {SELECTOR_NAMES}.{did_you_mean(name, SELECTOR_NAMES)}")
    if config is None:
        config = SageConfig()
    if not isinstance(config, SageConfig):
        raise TypeError(f"config must be a SageConfig, got {type(config).__name__}")
    if external_margins is not None and name not in _STATIC:
        raise ValueError(f"external_margins is only used by {tuple(_STATIC)}, not by {name!r}")
    common = dict(
        num_pairs=num_pairs,
        batch_size=batch_size,
        tiers=tiers,
        difficulty=difficulty,
        total_steps=total_steps,
        rank=rank,
        num_replicas=num_replicas,
        score_fn=score_fn,
        name=name,
    )
    if name in _SAGE_OVERRIDES:
        cfg = dataclasses.replace(config, **_SAGE_OVERRIDES[name])
        return SageSelector(config=cfg, **common)
    if name in _UNIFORM_MODES:
        return UniformSelector(mode=_UNIFORM_MODES[name], config=config, **common)
    # the static baselines are defined on the implicit-reward gap (Qi et al.; "Less is More")
    cfg = dataclasses.replace(config, margin_source="implicit")
    return StaticScoreSelector(criterion=_STATIC[name], config=cfg, external_margins=external_margins, **common)
