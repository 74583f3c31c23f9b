"""Configuration of SAGE and of the pair-selection baselines (one dataclass shared by all selectors).

Defaults are the rlplugins reconstruction of SAGE (arXiv 2602.01207), docs/sage.md#defaults: the paper does not state
them.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlplugins._config import ConfigMixin, check_bool, check_choice, check_int, check_number

SCORE_VARIANTS = ("newton", "signal", "loss", "token_curvature")
SELECTION_MODES = ("topk", "sample")
GRANULARITIES = ("pool", "online")
REFRESH_MODES = ("threshold", "schedule")
COMPETENCE_SOURCES = ("improvement", "pool", "external")
MARGIN_SOURCES = ("implicit", "policy")  # the formulas: rlplugins.selection.margins
BAND_SCALES = ("relative", "absolute")
RESCORE_SCOPES = ("pool", "cached")
FILLS = ("uniform", "score")


@dataclass(frozen=True)
class SageConfig(ConfigMixin):
    """Options of `sage_scores`, `SageSelector` and the baselines (docs/selection-api.md#2-construction).

    Score (docs/sage.md#score): ``S(u) = sigma(-u)^2 / (sigma(u) sigma(-u) + damping)`` with ``u`` from
    ``margin_source`` (`margins.pair_margins`) clipped to ``[-margin_clip, margin_clip]``.
    Stability (`stability.stability_masks`): unstable if ``|u|`` is below the boundary band (relative to the pool's
    median ``|u|`` by default), the margin sign flipped between the last two observations (``sign_consistency``) or
    the variance of the last ``history_size`` margins exceeds ``variance_threshold``; a noise suspect if it lies
    ``noise_guard`` robust standard deviations below its tier's median. The defaults are the second design of the
    reconstruction; the first design's rules remain available (docs/selection-api.md#2-construction).
    """

    beta: float = 0.1
    damping: float = 0.05
    margin_clip: float = 20.0
    boundary_band: float = 0.25
    sign_consistency: bool = True
    variance_threshold: float | None = None
    history_size: int = 2
    use_filter: bool = True
    score_variant: str = "newton"
    selection_ratio: float = 0.5
    selection_mode: str = "topk"
    granularity: str = "pool"
    use_curriculum: bool = True
    num_tiers: int = 3
    tier_mix: float = 0.1
    refresh_mode: str = "threshold"
    competence_threshold: float = 0.8
    competence_source: str = "improvement"
    competence_min_coverage: float = 0.5
    exhaust_fraction: float = 0.02
    schedule_c0: float = 0.25
    rescore_interval: int | None = 10
    warmup_steps: int | None = None
    seed: int = 0
    margin_source: str = "policy"
    band_scale: str = "relative"
    noise_guard: float | None = 1.5
    rescore_scope: str = "cached"
    plateau_rounds: int = 2
    fill: str = "uniform"

    def __post_init__(self) -> None:
        o = "SageConfig"
        positive = dict(low=0.0, low_inclusive=False)
        check_number(o, "beta", self.beta, **positive)
        damping = check_number(o, "damping", self.damping, low=0.0)
        check_number(o, "margin_clip", self.margin_clip, **positive)
        band = check_number(o, "boundary_band", self.boundary_band, low=0.0)
        check_bool(o, "sign_consistency", self.sign_consistency)
        check_number(o, "variance_threshold", self.variance_threshold, allow_none=True, **positive)
        check_int(o, "history_size", self.history_size, low=2)
        check_bool(o, "use_filter", self.use_filter)
        check_choice(o, "score_variant", self.score_variant, SCORE_VARIANTS)
        if self.score_variant == "token_curvature" and damping <= 0:
            # p(1-p) can be exactly 0 for a fully peaked distribution: the damping keeps the score finite.
            raise ValueError("SageConfig.damping must be > 0 when score_variant='token_curvature', got 0")
        check_number(o, "selection_ratio", self.selection_ratio, high=1.0, **positive)
        check_choice(o, "selection_mode", self.selection_mode, SELECTION_MODES)
        check_choice(o, "granularity", self.granularity, GRANULARITIES)
        check_bool(o, "use_curriculum", self.use_curriculum)
        check_int(o, "num_tiers", self.num_tiers, low=1)
        check_number(o, "tier_mix", self.tier_mix, low=0.0, high=1.0)
        check_choice(o, "refresh_mode", self.refresh_mode, REFRESH_MODES)
        check_number(o, "competence_threshold", self.competence_threshold, high=1.0, **positive)
        check_choice(o, "competence_source", self.competence_source, COMPETENCE_SOURCES)
        check_number(o, "competence_min_coverage", self.competence_min_coverage, high=1.0, **positive)
        check_number(o, "exhaust_fraction", self.exhaust_fraction, low=0.0, high=1.0, high_inclusive=False)
        check_number(o, "schedule_c0", self.schedule_c0, high=1.0, **positive)
        check_int(o, "rescore_interval", self.rescore_interval, low=1, allow_none=True)
        check_int(o, "warmup_steps", self.warmup_steps, low=0, allow_none=True)
        check_int(o, "seed", self.seed, low=0)
        check_choice(o, "margin_source", self.margin_source, MARGIN_SOURCES)
        check_choice(o, "band_scale", self.band_scale, BAND_SCALES)
        if self.band_scale == "relative" and band > 1:
            raise ValueError(
                f"SageConfig.boundary_band must be <= 1 with band_scale='relative' (a multiple of the pool's median "
                f"|u|: above 1 the band could hold most of the pool), got {band}"
            )
        check_number(o, "noise_guard", self.noise_guard, allow_none=True, **positive)
        check_choice(o, "rescore_scope", self.rescore_scope, RESCORE_SCOPES)
        check_choice(o, "fill", self.fill, FILLS)
        check_int(o, "plateau_rounds", self.plateau_rounds, low=0)
