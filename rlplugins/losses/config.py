"""Config dataclasses of the policy losses.

Every config is a frozen dataclass validated on construction: a bad value raises ``ValueError`` naming the
field, the value and the allowed range, so a typo in a launch script fails before the first step.
"""

from __future__ import annotations

from dataclasses import dataclass

from .._config import ConfigMixin, check_bool, check_choice, check_range


@dataclass(frozen=True)
class PolicyLossConfig(ConfigMixin):
    """Base class of all policy-loss configs (``from_mapping``, ``to_dict``, ``replace``: ``rlplugins._config``)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        pass


#: Smallest accepted gate widths/temperatures. Below them ordinary inputs overflow float32: MASPO's width
#: sigma >= sigma_base * adv_low is squared (sigma**2 underflows to 0 below ~1e-23, and a token with ratio exactly
#: 1 then gives 0/0), SAPO's loss scales by 4/tau (inf for tau < ~1.2e-38, and beyond float32 for |A| ~ 1e19
#: well before). With these bounds every finite input with |A|, |logp| below ~1e19 gives a finite loss.
MASPO_SIGMA_BASE_MIN = 1e-6
MASPO_ADV_LOW_MIN = 1e-6
SAPO_TAU_MIN = 1e-4


def _check_dual_clip(owner: str, value: float | None) -> None:
    check_range(owner, "dual_clip", value, low=1.0, low_inclusive=False, allow_none=True)


@dataclass(frozen=True)
class MaspoConfig(PolicyLossConfig):
    """MASPO (arXiv 2602.17550). Defaults reproduce the official code (VenomRose-Juri/MASPO-RL, ratio_mode=maspo).

    ``variant="official"``: mass factor clamped to [sigma_base, sigma_high], risk factors clamped to
    [adv_low, adv_high], log-ratio clamped to +-20. ``variant="paper"``: the unclamped paper form, keeping only
    finiteness guards (log-ratio +-50, log sigma <= 60) so that extreme inputs cannot produce inf/NaN.
    ``dual_clip`` (off by default, as in the official code) caps the loss of A<0 tokens at ``dual_clip * |A|``.
    ``bilateral=True`` is an ablation: the gate also damps the against-advantage quadrants.
    """

    sigma_base: float = 1.0
    alpha: float = 0.3
    beta_pos: float = 0.03
    beta_neg: float = 0.03
    sigma_high: float = 10.0
    adv_low: float = 0.1
    adv_high: float = 10.0
    variant: str = "official"
    dual_clip: float | None = None
    bilateral: bool = False

    def validate(self) -> None:
        o = type(self).__name__
        check_range(o, "sigma_base", self.sigma_base, low=MASPO_SIGMA_BASE_MIN)
        check_range(o, "alpha", self.alpha, low=0.0)
        check_range(o, "beta_pos", self.beta_pos, low=0.0)
        check_range(o, "beta_neg", self.beta_neg, low=0.0)
        check_range(o, "sigma_high", self.sigma_high, low=self.sigma_base)
        check_range(o, "adv_low", self.adv_low, low=MASPO_ADV_LOW_MIN)
        check_range(o, "adv_high", self.adv_high, low=self.adv_low)
        check_choice(o, "variant", self.variant, ("official", "paper"))
        _check_dual_clip(o, self.dual_clip)
        check_bool(o, "bilateral", self.bilateral)


@dataclass(frozen=True)
class PpoClipConfig(PolicyLossConfig):
    """PPO clip with asymmetric bounds [1 - eps_low, 1 + eps_high] and an optional dual clip c > 1."""

    eps_low: float = 0.2
    eps_high: float = 0.2
    dual_clip: float | None = None

    def validate(self) -> None:
        o = type(self).__name__
        check_range(o, "eps_low", self.eps_low, low=0.0, high=1.0)
        check_range(o, "eps_high", self.eps_high, low=0.0)
        _check_dual_clip(o, self.dual_clip)


@dataclass(frozen=True)
class ClipHigherConfig(PpoClipConfig):
    """DAPO's clip-higher (arXiv 2503.14476): PPO clip with eps_high = 0.28."""

    eps_high: float = 0.28


@dataclass(frozen=True)
class DualClipConfig(PpoClipConfig):
    """Dual-clip PPO (arXiv 1912.09729) with c = 3, veRL's ``vanilla`` default."""

    dual_clip: float | None = 3.0


@dataclass(frozen=True)
class SapoConfig(PolicyLossConfig):
    """SAPO (arXiv 2511.20347): soft sigmoid gate with temperature tau_pos (A>0) / tau_neg (A<=0)."""

    tau_pos: float = 1.0
    tau_neg: float = 1.05

    def validate(self) -> None:
        o = type(self).__name__
        check_range(o, "tau_pos", self.tau_pos, low=SAPO_TAU_MIN)
        check_range(o, "tau_neg", self.tau_neg, low=SAPO_TAU_MIN)


@dataclass(frozen=True)
class CispoConfig(PolicyLossConfig):
    """CISPO (MiniMax-M1, arXiv 2506.13585): clipped, detached IS weight times A * logp.

    Defaults equal veRL's ``cispo`` ([0.8, 1.2]); the ScaleRL-style setting is eps_low=1.0, eps_high=4.0 (weight in [0, 5]).
    """

    eps_low: float = 0.2
    eps_high: float = 0.2

    def validate(self) -> None:
        o = type(self).__name__
        check_range(o, "eps_low", self.eps_low, low=0.0, high=1.0)
        check_range(o, "eps_high", self.eps_high, low=0.0)


@dataclass(frozen=True)
class GspoConfig(PolicyLossConfig):
    """GSPO (arXiv 2507.18071): sequence-level ratio exp(mean_t log r) with token-level straight-through."""

    eps_low: float = 3e-4
    eps_high: float = 4e-4
    log_ratio_max: float = 10.0

    def validate(self) -> None:
        o = type(self).__name__
        check_range(o, "eps_low", self.eps_low, low=0.0, high=1.0)
        check_range(o, "eps_high", self.eps_high, low=0.0)
        check_range(o, "log_ratio_max", self.log_ratio_max, low=0.0, low_inclusive=False, high=80.0)


@dataclass(frozen=True)
class PgConfig(PolicyLossConfig):
    """Plain policy gradient (REINFORCE with the given advantage): no ratio, no gate."""


@dataclass(frozen=True)
class UnclippedConfig(PolicyLossConfig):
    """Unclipped importance-weighted surrogate ``-A r``: no parameters."""
