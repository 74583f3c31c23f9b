"""Configuration of SAGE and of the pair-selection baselines (one dataclass shared by all selectors).

Defaults are the rlplugins reconstruction of SAGE (arXiv 2602.01207), docs/sage.md#defaults: the paper does not state
them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rlplugins.losses.config import suggest_field_names

SCORE_VARIANTS = ("newton", "signal", "loss", "token_curvature")
SELECTION_MODES = ("topk", "sample")
GRANULARITIES = ("pool", "online")
REFRESH_MODES = ("threshold", "schedule")
COMPETENCE_SOURCES = ("improvement", "pool", "external")
MARGIN_SOURCES = ("implicit", "policy")  # the formulas: rlplugins.selection.margins
BAND_SCALES = ("relative", "absolute")
RESCORE_SCOPES = ("pool", "cached")
FILLS = ("uniform", "score")


def _check_real(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"SageConfig.{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"SageConfig.{name} must be finite, got {value}")
    return float(value)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SageConfig.{name} must be an int, got {type(value).__name__}")
    return value


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"SageConfig.{name} must be one of {allowed}, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"SageConfig.{name} must be a bool, got {type(value).__name__}")


@suggest_field_names
@dataclass(frozen=True)
class SageConfig:
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
        beta = _check_real("beta", self.beta)
        if beta <= 0:
            raise ValueError(f"SageConfig.beta must be > 0, got {beta}")
        damping = _check_real("damping", self.damping)
        if damping < 0:
            raise ValueError(f"SageConfig.damping must be >= 0, got {damping}")
        clip = _check_real("margin_clip", self.margin_clip)
        if clip <= 0:
            raise ValueError(f"SageConfig.margin_clip must be > 0, got {clip}")
        band = _check_real("boundary_band", self.boundary_band)
        if band < 0:
            raise ValueError(f"SageConfig.boundary_band must be >= 0, got {band}")
        _check_bool("sign_consistency", self.sign_consistency)
        if self.variance_threshold is not None:
            vt = _check_real("variance_threshold", self.variance_threshold)
            if vt <= 0:
                raise ValueError(f"SageConfig.variance_threshold must be None or > 0, got {vt}")
        k = _check_int("history_size", self.history_size)
        if k < 2:
            raise ValueError(f"SageConfig.history_size must be >= 2, got {k}")
        _check_bool("use_filter", self.use_filter)
        _check_choice("score_variant", self.score_variant, SCORE_VARIANTS)
        if self.score_variant == "token_curvature" and damping <= 0:
            # p(1-p) can be exactly 0 for a fully peaked distribution: the damping keeps the score finite.
            raise ValueError("SageConfig.damping must be > 0 when score_variant='token_curvature', got 0")
        rho = _check_real("selection_ratio", self.selection_ratio)
        if not 0 < rho <= 1:
            raise ValueError(f"SageConfig.selection_ratio must be in (0, 1], got {rho}")
        _check_choice("selection_mode", self.selection_mode, SELECTION_MODES)
        _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_bool("use_curriculum", self.use_curriculum)
        m = _check_int("num_tiers", self.num_tiers)
        if m < 1:
            raise ValueError(f"SageConfig.num_tiers must be >= 1, got {m}")
        mix = _check_real("tier_mix", self.tier_mix)
        if not 0 <= mix <= 1:
            raise ValueError(f"SageConfig.tier_mix must be in [0, 1], got {mix}")
        _check_choice("refresh_mode", self.refresh_mode, REFRESH_MODES)
        kappa = _check_real("competence_threshold", self.competence_threshold)
        if not 0 < kappa <= 1:
            raise ValueError(f"SageConfig.competence_threshold must be in (0, 1], got {kappa}")
        _check_choice("competence_source", self.competence_source, COMPETENCE_SOURCES)
        cov = _check_real("competence_min_coverage", self.competence_min_coverage)
        if not 0 < cov <= 1:
            raise ValueError(f"SageConfig.competence_min_coverage must be in (0, 1], got {cov}")
        ex = _check_real("exhaust_fraction", self.exhaust_fraction)
        if not 0 <= ex < 1:
            raise ValueError(f"SageConfig.exhaust_fraction must be in [0, 1), got {ex}")
        c0 = _check_real("schedule_c0", self.schedule_c0)
        if not 0 < c0 <= 1:
            raise ValueError(f"SageConfig.schedule_c0 must be in (0, 1], got {c0}")
        if self.rescore_interval is not None:
            r = _check_int("rescore_interval", self.rescore_interval)
            if r < 1:
                raise ValueError(f"SageConfig.rescore_interval must be None or >= 1, got {r}")
        if self.warmup_steps is not None:
            w = _check_int("warmup_steps", self.warmup_steps)
            if w < 0:
                raise ValueError(f"SageConfig.warmup_steps must be None or >= 0, got {w}")
        seed = _check_int("seed", self.seed)
        if seed < 0:
            raise ValueError(f"SageConfig.seed must be >= 0, got {seed}")
        _check_choice("margin_source", self.margin_source, MARGIN_SOURCES)
        _check_choice("band_scale", self.band_scale, BAND_SCALES)
        if self.band_scale == "relative" and band > 1:
            raise ValueError(
                f"SageConfig.boundary_band must be <= 1 with band_scale='relative' (a multiple of the pool's median "
                f"|u|: above 1 the band could hold most of the pool), got {band}"
            )
        if self.noise_guard is not None:
            ng = _check_real("noise_guard", self.noise_guard)
            if ng <= 0:
                raise ValueError(f"SageConfig.noise_guard must be None or > 0, got {ng}")
        _check_choice("rescore_scope", self.rescore_scope, RESCORE_SCOPES)
        _check_choice("fill", self.fill, FILLS)
        pr = _check_int("plateau_rounds", self.plateau_rounds)
        if pr < 0:
            raise ValueError(f"SageConfig.plateau_rounds must be >= 0, got {pr}")
