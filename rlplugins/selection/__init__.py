"""Data selection for DPO: SAGE (arXiv 2602.01207, rlplugins reconstruction) and the baselines it is measured against.

Calling contract: docs/selection-api.md. The core imports no RL framework.
"""

from .base import PairSelector, ScoreFn
from .baselines import StaticScoreSelector, UniformSelector
from .config import SageConfig
from .curriculum import schedule_fraction, tiers_from_difficulty
from .registry import SELECTOR_NAMES, make_selector
from .sampler import SageSampler
from .margins import implicit_margins, pair_margins
from .scores import sage_scores, score_from_margin
from .selector import SageSelector
from .prompt_groups import GroupObservation, PromptGroupSelector, PromptGroupSelectorConfig, Selection, pass_rate_tier
from .stability import in_boundary_band, stability_masks, temporal_unstable

__all__ = [
    "SELECTOR_NAMES",
    "GroupObservation",
    "PairSelector",
    "PromptGroupSelector",
    "PromptGroupSelectorConfig",
    "SageConfig",
    "SageSampler",
    "SageSelector",
    "Selection",
    "ScoreFn",
    "StaticScoreSelector",
    "UniformSelector",
    "implicit_margins",
    "in_boundary_band",
    "make_selector",
    "pair_margins",
    "pass_rate_tier",
    "sage_scores",
    "schedule_fraction",
    "score_from_margin",
    "stability_masks",
    "temporal_unstable",
    "tiers_from_difficulty",
]
