"""rlplugins policy losses with veRL 0.9.1's call contract (keyword arguments, bool mask, global batch info).

No loss math here: each function reads its hyper-parameters from veRL's config objects and makes one call of
``rlplugins.losses.compute_policy_loss``, which aggregates with veRL's ``agg_loss`` semantics using
``config.global_batch_info`` (the mini-batch's token/sequence counts across DP ranks, written by
``ppo_loss`` before each micro-batch) and multiplies by ``rollout_is_weights`` before aggregating.
Metrics come back under ``actor/<core metric name>`` (``actor/ppo_kl``, ``actor/pg_clipfrac`` and
``actor/pg_clipfrac_lower`` keep the built-ins' meaning; the gate statistics are new keys).

Names registered in veRL's ``POLICY_LOSS_REGISTRY`` (never one of veRL's own names):

- ``maspo``: MASPO; parameters from ``actor.policy_loss`` (``MaspoPolicyLossConfig`` fields), else defaults.
- ``rlp_sapo``: SAPO with ``actor.tau_pos`` / ``actor.tau_neg`` that honours ``actor.loss_agg_mode``
  (veRL's ``sapo`` always aggregates with seq-mean-token-mean).
- ``rlp_ppo_clip``: PPO clip with ``actor.clip_ratio_low`` / ``clip_ratio_high`` and no dual clip (veRL's
  ``vanilla`` always applies the dual clip ``actor.clip_ratio_c``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from rlplugins.losses import MaspoConfig, PpoClipConfig, SapoConfig, compute_policy_loss

# What the adapter does with NaN/inf at valid positions. veRL's own losses let them through and its engine
# then skips the optimizer step on a non-finite grad norm; "mask" keeps the step, drops only the bad tokens
# and reports how many as actor/nonfinite_tokens. "raise" stops the run with the first bad index.
DEFAULT_ON_NONFINITE = "mask"
METRIC_PREFIX = "actor/"


def _get(obj: Any, key: str, default: Any = None) -> Any:
    """veRL configs are dataclasses with a Mapping interface (BaseConfig) or DictConfigs: both have .get."""
    if obj is None:
        return default
    getter = getattr(obj, "get", None)
    if getter is not None:
        value = getter(key, default)
    else:
        value = getattr(obj, key, default)
    return default if value is None else value


def maspo_config_from(config: Any) -> MaspoConfig:
    """MaspoConfig from ``actor.policy_loss``: declared fields of MaspoPolicyLossConfig, unset ones default."""
    policy_loss = _get(config, "policy_loss")
    values = {}
    for name in MaspoConfig.field_names():
        value = _get(policy_loss, name)
        if value is not None:
            values[name] = value
    return MaspoConfig(**values)


ACTOR_FLAG_PREFIX = "actor_rollout_ref.actor."


def _from_actor_flags(cls: type, loss_mode: str, values: Mapping[str, tuple[str, Any]]) -> Any:
    """``cls(**{field: value})`` from veRL actor flags; an invalid value raises naming the veRL flag, not our field.

    ``values``: field -> (the actor flag it comes from, its value)."""
    kwargs = {}
    for name, (flag, value) in values.items():
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ValueError(f"{ACTOR_FLAG_PREFIX}{flag} must be a number for loss_mode={loss_mode}, "
                                 f"got {value!r}") from None
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        message = str(exc)
        for name, (flag, _) in values.items():
            message = message.replace(f"{cls.__name__}.{name}", f"{ACTOR_FLAG_PREFIX}{flag}")
        raise type(exc)(f"{message} (loss_mode={loss_mode})") from None


def sapo_config_from(config: Any) -> SapoConfig:
    """SAPO's temperatures from the actor-level fields veRL's own ``sapo`` reads (``actor.tau_pos/tau_neg``)."""
    default = SapoConfig()
    return _from_actor_flags(SapoConfig, "rlp_sapo", {
        "tau_pos": ("tau_pos", _get(config, "tau_pos", default.tau_pos)),
        "tau_neg": ("tau_neg", _get(config, "tau_neg", default.tau_neg)),
    })


def ppo_clip_config_from(config: Any) -> PpoClipConfig:
    """PPO clip bounds as veRL's ``vanilla`` reads them (``clip_ratio_low/high``, falling back to ``clip_ratio``)."""
    default = PpoClipConfig()
    clip_ratio = _get(config, "clip_ratio", default.eps_low)
    low, high = _get(config, "clip_ratio_low"), _get(config, "clip_ratio_high")
    return _from_actor_flags(PpoClipConfig, "rlp_ppo_clip", {
        "eps_low": ("clip_ratio_low" if low is not None else "clip_ratio", clip_ratio if low is None else low),
        "eps_high": ("clip_ratio_high" if high is not None else "clip_ratio", clip_ratio if high is None else high),
    })


def validate_actor_config(actor: Any) -> None:
    """Configuration-time check of the parameters our loss (if ``actor.policy_loss.loss_mode`` is one) will read,
    so a bad ``actor.tau_pos`` or ``actor.clip_ratio_low`` fails when veRL builds its ActorConfig (driver-side
    ``validate_config`` and each worker), not at the first update. Errors name the veRL flag."""
    loss_mode = _get(_get(actor, "policy_loss"), "loss_mode")
    entry = VERL_POLICY_LOSSES.get(loss_mode) if isinstance(loss_mode, str) else None
    if entry is not None:
        entry[2](actor)


def _install_actor_config_check() -> None:
    """Wrap veRL's ``ActorConfig.__post_init__`` (every actor config class calls it) with ``validate_actor_config``;
    idempotent. veRL has no other hook that sees the actor-level fields when the configuration is built."""
    from verl.workers.config.actor import ActorConfig

    original = ActorConfig.__post_init__
    if getattr(original, "__rlplugins_wrapped__", False):
        return

    def __post_init__(self: Any) -> None:
        original(self)
        validate_actor_config(self)

    __post_init__.__rlplugins_wrapped__ = True  # type: ignore[attr-defined]
    __post_init__.__wrapped__ = original  # type: ignore[attr-defined]
    ActorConfig.__post_init__ = __post_init__  # type: ignore[method-assign]


def global_batch_info_from(config: Any) -> dict[str, Any]:
    """``config.global_batch_info`` as ``ppo_loss`` filled it; empty (local normalisation) in unit tests."""
    info = _get(config, "global_batch_info")
    if not info:
        return {}
    return {k: v for k, v in dict(info).items() if v is not None}


def _call_core(
    core_name: str,
    core_config: Any,
    *,
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str,
    config: Any,
    rollout_is_weights: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    loss, metrics = compute_policy_loss(
        core_name,
        log_prob=log_prob,
        old_log_prob=old_log_prob,
        advantages=advantages,
        response_mask=response_mask,
        loss_agg_mode=loss_agg_mode,
        config=core_config,
        rollout_is_weights=rollout_is_weights,
        global_batch_info=global_batch_info_from(config),
        on_nonfinite=str(_get(_get(config, "policy_loss"), "on_nonfinite", DEFAULT_ON_NONFINITE)),
    )
    return loss, {METRIC_PREFIX + key: value for key, value in metrics.items()}


def maspo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """MASPO (arXiv 2602.17550): loss = -A * sg(w) * r, Gaussian gate w on the advantage-direction quadrants."""
    return _call_core(
        "maspo", maspo_config_from(config), old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
        response_mask=response_mask, loss_agg_mode=loss_agg_mode, config=config, rollout_is_weights=rollout_is_weights,
    )


def rlp_sapo_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SAPO (arXiv 2511.20347): -(4/tau) sigmoid(tau (r-1)) A, aggregated with ``loss_agg_mode``."""
    return _call_core(
        "sapo", sapo_config_from(config), old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages,
        response_mask=response_mask, loss_agg_mode=loss_agg_mode, config=config, rollout_is_weights=rollout_is_weights,
    )


def rlp_ppo_clip_policy_loss(
    old_log_prob: torch.Tensor,
    log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: Any = None,
    rollout_is_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO clip: max(-A r, -A clip(r, 1 - clip_ratio_low, 1 + clip_ratio_high)), no dual clip."""
    return _call_core(
        "ppo_clip", ppo_clip_config_from(config), old_log_prob=old_log_prob, log_prob=log_prob,
        advantages=advantages, response_mask=response_mask, loss_agg_mode=loss_agg_mode, config=config,
        rollout_is_weights=rollout_is_weights,
    )


# veRL name -> (function, rlplugins core name, how its parameters are read).
VERL_POLICY_LOSSES: Mapping[str, tuple[Callable[..., Any], str, Callable[[Any], Any]]] = {
    "maspo": (maspo_policy_loss, "maspo", maspo_config_from),
    "rlp_sapo": (rlp_sapo_policy_loss, "sapo", sapo_config_from),
    "rlp_ppo_clip": (rlp_ppo_clip_policy_loss, "ppo_clip", ppo_clip_config_from),
}

for _name, (_fn, _core, _) in VERL_POLICY_LOSSES.items():
    # Marks our functions so that registration can tell "already ours" (idempotent) from "veRL's own name".
    _fn.__rlplugins_policy_loss__ = (_name, _core)  # type: ignore[attr-defined]


def _is_ours(fn: Any) -> bool:
    return getattr(fn, "__rlplugins_policy_loss__", None) is not None


def register_policy_losses() -> list[str]:
    """Add our losses to veRL's registry; idempotent. Returns the names. Never shadows a veRL loss."""
    # Absolute import: veRL's file-path loaders may execute this file outside its package.
    from rlplugins.integrations.verl.compat import require_supported_verl

    require_supported_verl()
    from verl.trainer.ppo import core_algos

    for name, (fn, _, _) in VERL_POLICY_LOSSES.items():
        existing = core_algos.POLICY_LOSS_REGISTRY.get(name)
        if existing is fn:
            continue
        if existing is not None and not _is_ours(existing):
            raise RuntimeError(
                f"veRL already registers a policy loss named {name!r} "
                f"({getattr(existing, '__module__', '?')}.{getattr(existing, '__qualname__', '?')}); "
                "rlplugins does not overwrite veRL's losses. This veRL is not the one the adapter supports."
            )
        core_algos.register_policy_loss(name)(fn)
    _install_actor_config_check()
    return list(VERL_POLICY_LOSSES)
