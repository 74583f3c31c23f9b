"""``MaspoPolicyLossConfig``: veRL's ``PolicyLossConfig`` with MASPO's parameters as declared fields.

veRL instantiates ``actor.policy_loss`` with Hydra (``_target_``), so a key the dataclass does not declare
fails in its constructor. Select this class and set MASPO's fields with a ``+`` prefix::

    actor_rollout_ref.actor.policy_loss._target_=rlplugins.integrations.verl.MaspoPolicyLossConfig
    actor_rollout_ref.actor.policy_loss.loss_mode=maspo
    +actor_rollout_ref.actor.policy_loss.alpha=0.5

Field names and defaults are those of ``rlplugins.losses.MaspoConfig``; values are validated by it when the
config is built (in veRL's driver ``validate_config`` and in each actor worker), so a bad value, a misspelt
field or a wrong ``loss_mode`` fails at configuration time, not at the first update.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Optional

from rlplugins._config import suggest
from rlplugins.losses import MaspoConfig

from verl.workers.config import PolicyLossConfig

from .version import UnsupportedVersionError
from .losses import DEFAULT_ON_NONFINITE, register_policy_losses

# Importing this module (which Hydra does to resolve the _target_) registers the losses in this process.
# On an unsupported veRL the error is raised when the config is *built*: Hydra hides exceptions raised while
# it locates a _target_ ("Error locating target ..."), but shows those raised by the constructor.
try:
    register_policy_losses()
except UnsupportedVersionError:
    pass

_D = MaspoConfig()
FLAG_PREFIX = "actor_rollout_ref.actor.policy_loss."


@dataclass
class MaspoPolicyLossConfig(PolicyLossConfig):
    """veRL policy-loss config for ``loss_mode=maspo`` (arXiv 2602.17550); see ``rlplugins.losses.MaspoConfig``.

    Args:
        sigma_base: base width of the Gaussian gate.
        alpha: mass exponent; the width grows as pi_old^(-alpha) for low-probability tokens.
        beta_pos, beta_neg: advantage-dependent width factors for A > 0 / A < 0.
        sigma_high: upper clamp of the mass factor (official variant).
        adv_low, adv_high: clamp of the advantage risk factor (official variant).
        variant: "official" (the released code, default) or "paper" (the unclamped formula).
        dual_clip: optional cap of the A < 0 loss at dual_clip * |A| (off by default).
        bilateral: also damp the against-advantage quadrants (ablation).
        on_nonfinite: "mask" (drop NaN/inf tokens, counted in actor/nonfinite_tokens) or "raise".
    """

    loss_mode: str = "maspo"
    sigma_base: float = _D.sigma_base
    alpha: float = _D.alpha
    beta_pos: float = _D.beta_pos
    beta_neg: float = _D.beta_neg
    sigma_high: float = _D.sigma_high
    adv_low: float = _D.adv_low
    adv_high: float = _D.adv_high
    variant: str = _D.variant
    dual_clip: Optional[float] = _D.dual_clip
    bilateral: bool = _D.bilateral
    on_nonfinite: str = DEFAULT_ON_NONFINITE

    def __post_init__(self) -> None:
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()
        register_policy_losses()  # idempotent; checks the veRL version first
        if self.loss_mode not in ("maspo", "rlp_maspo"):  # the alias and the rlp_<core name> rule's name
            close = suggest(self.loss_mode, ["maspo", "rlp_maspo"])
            hint = (
                f"Did you mean {close}? Write {FLAG_PREFIX}loss_mode={close}"
                if close
                else f"Write {FLAG_PREFIX}loss_mode=maspo, or remove {FLAG_PREFIX}_target_ to use another loss"
            )
            raise ValueError(
                f"MaspoPolicyLossConfig configures MASPO, but {FLAG_PREFIX}loss_mode={self.loss_mode!r}. {hint}."
            )
        if self.on_nonfinite not in ("mask", "raise"):
            raise ValueError(
                f"{FLAG_PREFIX}on_nonfinite must be 'mask' or 'raise', got {self.on_nonfinite!r}"
            )
        try:
            self.to_core()
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"invalid MASPO parameter under {FLAG_PREFIX}*: {exc}") from None

    def to_core(self) -> MaspoConfig:
        """The validated core config these fields describe."""
        return MaspoConfig(**{name: getattr(self, name) for name in MaspoConfig.field_names()})


def _reject_unknown_fields(cls: type) -> None:
    """Wrap the generated __init__ so a misspelt ``+...policy_loss.<key>`` names the field to write instead.

    Without this, Hydra reports only "__init__() got an unexpected keyword argument 'alhpa'".
    """
    generated_init = cls.__init__
    names = [f.name for f in fields(cls)]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            hints = []
            for key in unknown:
                close = suggest(key, names)
                hints.append(f"'{key}': did you mean +{FLAG_PREFIX}{close}?" if close else f"'{key}': no such field")
            maspo_fields = ", ".join(MaspoConfig.field_names())
            raise TypeError(
                f"{cls.__name__} got unknown field(s) {', '.join(hints)}. "
                f"MASPO's fields are: {maspo_fields}, on_nonfinite; veRL's own: loss_mode, clip_cov_ratio, "
                "clip_cov_lb, clip_cov_ub, kl_cov_ratio, ppo_kl_coef, dro_beta, rollout_correction."
            )
        generated_init(self, *args, **kwargs)

    __init__.__doc__ = generated_init.__doc__
    __init__.__wrapped__ = generated_init  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[method-assign]


_reject_unknown_fields(MaspoPolicyLossConfig)
