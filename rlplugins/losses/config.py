"""Config dataclasses of the policy losses.

Every config is a frozen dataclass validated on construction: a bad value raises ``ValueError`` naming the
field, the value and the allowed range, so a typo in a launch script fails before the first step.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

C = TypeVar("C", bound="PolicyLossConfig")


def check_range(
    owner: str,
    field: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_none: bool = False,
) -> None:
    """Raise a ValueError/TypeError naming ``owner.field`` unless ``value`` is a finite number in range."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}.{field} must be a number, got {type(value).__name__} {value!r}")
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int beyond the float range, e.g. 10**400
        raise ValueError(f"{owner}.{field} must be finite, got an int of {len(str(abs(value)))} digits "
                         f"(beyond the float range)") from None
    if not finite:
        raise ValueError(f"{owner}.{field} must be finite, got {value!r}")
    lo_ok = low is None or (value >= low if low_inclusive else value > low)
    hi_ok = high is None or (value <= high if high_inclusive else value < high)
    if not (lo_ok and hi_ok):
        lb = "(-inf" if low is None else ("[" if low_inclusive else "(") + f"{low:g}"
        hb = "inf)" if high is None else f"{high:g}" + ("]" if high_inclusive else ")")
        raise ValueError(f"{owner}.{field} must be in {lb}, {hb}, got {value!r}")


class UnknownFieldError(TypeError, ValueError):
    """A misspelt config field. Both a TypeError (what a dataclass constructor raises for an unexpected keyword)
    and a ValueError (what the mapping paths raised), so existing ``except`` clauses keep working."""


def unknown_field_error(owner: str, key: object, names: list[str]) -> UnknownFieldError:
    """The one "did you mean" message of every config: constructors, ``.replace``, mappings and CLI flags."""
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return UnknownFieldError(f"{owner} has no field {key!r}.{hint} Valid fields: {', '.join(names) or '(none)'}")


def suggest_field_names(cls: type) -> type:
    """Class decorator for a dataclass: unknown keyword arguments raise ``unknown_field_error`` (with the
    closest field name) instead of Python's bare "unexpected keyword argument".

    It installs a ``__new__`` that checks the keywords against ``dataclasses.fields`` of the class actually
    being built, so decorating a base class covers every subclass, and ``dataclasses.replace`` (which calls the
    constructor) is covered too.
    """
    def __new__(klass: type, *args: Any, **kwargs: Any) -> Any:
        if kwargs:
            names = [f.name for f in dataclasses.fields(klass) if f.init]
            for key in kwargs:
                if key not in names:
                    raise unknown_field_error(klass.__name__, key, names)
        return object.__new__(klass)

    cls.__new__ = __new__  # type: ignore[method-assign]
    return cls


@suggest_field_names
@dataclass(frozen=True)
class PolicyLossConfig:
    """Base class of all policy-loss configs."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        pass

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls: type[C], values: Mapping[str, Any]) -> C:
        """Build from a mapping; an unknown key raises and suggests the closest field name."""
        names = cls.field_names()
        for key in values:
            if key not in names:
                raise unknown_field_error(cls.__name__, key, names)
        return cls(**dict(values))

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


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
        if self.variant not in ("official", "paper"):
            raise ValueError(f"{o}.variant must be 'official' or 'paper', got {self.variant!r}")
        _check_dual_clip(o, self.dual_clip)
        if not isinstance(self.bilateral, bool):
            raise TypeError(f"{o}.bilateral must be a bool, got {self.bilateral!r}")


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
