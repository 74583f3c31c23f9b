"""rlplugins policy losses with veRL 0.9.1's call contract (keyword arguments, bool mask, global batch info).

No loss math here: one generated function per registered core loss reads the hyper-parameters from veRL's config
objects and makes one call of ``rlplugins.losses.compute_policy_loss``, which aggregates with veRL's ``agg_loss``
semantics using ``config.global_batch_info`` (the mini-batch's token/sequence counts across DP ranks, written by
``ppo_loss`` before each micro-batch) and multiplies by ``rollout_is_weights`` before aggregating.
Metrics come back under ``actor/<core metric name>`` (``actor/ppo_kl``, ``actor/pg_clipfrac`` and
``actor/pg_clipfrac_lower`` keep the built-ins' meaning; the gate statistics are new keys).

Names in veRL's ``POLICY_LOSS_REGISTRY`` (never one of veRL's own names), generated from the core registry
(``rlplugins.losses.list_policy_losses()``), one rule: core loss ``<name>`` is ``loss_mode=rlp_<name>``
(``rlp_maspo``, ``rlp_sapo``, ``rlp_ppo_clip``, ``rlp_gspo``, ...), plus the alias ``maspo`` for ``rlp_maspo``.

Parameters, field by field of the core loss's config dataclass, from the first place that has a value:

1. ``actor.policy_loss.<field>``, when the policy-loss config declares it (``MaspoPolicyLossConfig`` declares
   MASPO's fields; veRL's own ``PolicyLossConfig`` declares none of ours);
2. the actor-level veRL flag for the same concept (``ACTOR_FLAGS``): ``eps_low``/``eps_high`` from
   ``actor.clip_ratio_low``/``clip_ratio_high`` (each falling back to ``actor.clip_ratio``), ``tau_pos``/``tau_neg``
   from ``actor.tau_pos``/``tau_neg``, as veRL's own losses read them. veRL's ``clip_ratio_c`` is not mapped: it is
   ``vanilla``'s dual clip, and ``rlp_ppo_clip`` is PPO clip without one (``rlp_dual_clip`` has it, at 3.0);
3. the core config's default.

So ``rlp_sapo`` honours ``actor.loss_agg_mode`` (veRL's ``sapo`` always aggregates with seq-mean-token-mean), and
``rlp_clip_higher`` equals ``rlp_ppo_clip`` in veRL (both take the clip range from the actor flags).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import torch

from rlplugins.losses import MaspoConfig, compute_policy_loss, get_policy_loss, list_policy_losses

# What the adapter does with NaN/inf at valid positions. veRL's own losses let them through and its engine
# then skips the optimizer step on a non-finite grad norm; "mask" keeps the step, drops only the bad tokens
# and reports how many as actor/nonfinite_tokens. "raise" stops the run with the first bad index.
DEFAULT_ON_NONFINITE = "mask"
METRIC_PREFIX = "actor/"
ACTOR_FLAG_PREFIX = "actor_rollout_ref.actor."
POLICY_LOSS_FLAG_PREFIX = ACTOR_FLAG_PREFIX + "policy_loss."
NAME_PREFIX = "rlp_"
# veRL name -> core name, beside the rule's names (kept working since they were first released).
ALIASES: Mapping[str, str] = {"maspo": "maspo"}
# core config field -> the actor-level veRL flags that carry it, in order of precedence.
ACTOR_FLAGS: Mapping[str, tuple[str, ...]] = {
    "eps_low": ("clip_ratio_low", "clip_ratio"),
    "eps_high": ("clip_ratio_high", "clip_ratio"),
    "tau_pos": ("tau_pos",),
    "tau_neg": ("tau_neg",),
}


def verl_name(core_name: str) -> str:
    """The ``loss_mode`` of core loss ``core_name``: ``rlp_<core_name>``."""
    return NAME_PREFIX + core_name


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


_DECLARED: dict[type, frozenset[str]] = {}


def _declared_fields(obj: Any) -> frozenset[str] | None:
    """The field names a dataclass config declares (cached per class); None for mappings (DictConfig, dict)."""
    cls = type(obj)
    names = _DECLARED.get(cls)
    if names is None and dataclasses.is_dataclass(obj):
        names = _DECLARED[cls] = frozenset(f.name for f in dataclasses.fields(obj))
    return names


class ConfigReader:
    """Reads the core config of ``core_name`` from veRL's actor config, for ``loss_mode=name`` (the rule in the
    module docstring); the field sources are worked out once, here, not per call.

    An invalid value raises naming the veRL flag it came from (``actor_rollout_ref.actor....``) and the loss_mode.
    """

    __slots__ = ("core_name", "name", "cls", "sources")

    def __init__(self, core_name: str, name: str | None = None) -> None:
        self.core_name, self.name = core_name, name or verl_name(core_name)
        self.cls = get_policy_loss(core_name).config_cls
        # (field, its policy_loss flag, the actor flags that carry it)
        self.sources = tuple((f, POLICY_LOSS_FLAG_PREFIX + f, ACTOR_FLAGS.get(f, ())) for f in self.cls.field_names())

    def __call__(self, config: Any) -> Any:
        policy_loss = _get(config, "policy_loss")
        declared = _declared_fields(policy_loss) if policy_loss is not None else frozenset()
        values: dict[str, Any] = {}
        flags: dict[str, str] = {}
        for field, policy_loss_flag, actor_flags in self.sources:
            # veRL's own PolicyLossConfig declares none of our fields: skip the lookups it cannot answer
            value = _get(policy_loss, field) if declared is None or field in declared else None
            if value is not None:
                values[field], flags[field] = value, policy_loss_flag
                continue
            for flag in actor_flags:
                value = _get(config, flag)
                if value is None:
                    continue
                if isinstance(value, str):
                    try:
                        value = float(value)
                    except ValueError:
                        raise ValueError(f"{ACTOR_FLAG_PREFIX}{flag} must be a number for loss_mode={self.name}, "
                                         f"got {value!r}") from None
                values[field], flags[field] = value, ACTOR_FLAG_PREFIX + flag
                break
        try:
            return self.cls(**values)
        except (TypeError, ValueError) as exc:
            message = str(exc)
            for field, flag in flags.items():
                message = message.replace(f"{self.cls.__name__}.{field}", flag)
            raise type(exc)(f"{message} (loss_mode={self.name})") from None


def core_config_from(core_name: str, config: Any, loss_mode: str | None = None) -> Any:
    """The core config of ``core_name`` from veRL's actor config (see ``ConfigReader``)."""
    return ConfigReader(core_name, loss_mode)(config)


def global_batch_info_from(config: Any) -> dict[str, Any]:
    """``config.global_batch_info`` as ``ppo_loss`` filled it; empty (local normalisation) in unit tests."""
    info = _get(config, "global_batch_info")
    if not info:
        return {}
    return {k: v for k, v in dict(info).items() if v is not None}


def make_policy_loss(core_name: str, name: str | None = None) -> Callable[..., tuple[torch.Tensor, dict[str, float]]]:
    """veRL's policy-loss function for core loss ``core_name``, registered as ``name`` (default ``rlp_<core>``)."""
    name = name or verl_name(core_name)
    spec = get_policy_loss(core_name)
    read_config = ConfigReader(core_name, name)

    def policy_loss(
        old_log_prob: torch.Tensor,
        log_prob: torch.Tensor,
        advantages: torch.Tensor,
        response_mask: torch.Tensor,
        loss_agg_mode: str = "token-mean",
        config: Any = None,
        rollout_is_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        loss, metrics = compute_policy_loss(
            core_name,
            log_prob=log_prob,
            old_log_prob=old_log_prob,
            advantages=advantages,
            response_mask=response_mask,
            loss_agg_mode=loss_agg_mode,
            config=read_config(config),
            rollout_is_weights=rollout_is_weights,
            global_batch_info=global_batch_info_from(config),
            on_nonfinite=str(_get(_get(config, "policy_loss"), "on_nonfinite", DEFAULT_ON_NONFINITE)),
        )
        return loss, {METRIC_PREFIX + key: value for key, value in metrics.items()}

    policy_loss.__name__ = policy_loss.__qualname__ = f"{name}_policy_loss"
    policy_loss.__doc__ = (f"veRL loss_mode={name}: rlplugins' {core_name!r} "
                           f"({spec.formula or spec.description or spec.config_cls.__name__}).")
    # Marks our functions so that registration can tell "already ours" (idempotent) from "veRL's own name".
    policy_loss.__rlplugins_policy_loss__ = (name, core_name)  # type: ignore[attr-defined]
    return policy_loss


def _generate() -> dict[str, tuple[Callable[..., Any], str, Callable[[Any], Any]]]:
    table = {}
    for core in list_policy_losses():
        table[verl_name(core)] = (make_policy_loss(core), core, ConfigReader(core))
    for alias, core in ALIASES.items():
        table[alias] = (make_policy_loss(core, alias), core, ConfigReader(core, alias))
    return table


# veRL name -> (function, rlplugins core name, how its parameters are read). Regenerated by
# register_policy_losses() when a loss was added to the core registry after this module was imported.
VERL_POLICY_LOSSES: dict[str, tuple[Callable[..., Any], str, Callable[[Any], Any]]] = _generate()

# Old public names (the three losses this module hand-wrote before the table was generated).
maspo_policy_loss = VERL_POLICY_LOSSES["maspo"][0]
rlp_sapo_policy_loss = VERL_POLICY_LOSSES["rlp_sapo"][0]
rlp_ppo_clip_policy_loss = VERL_POLICY_LOSSES["rlp_ppo_clip"][0]


def maspo_config_from(config: Any) -> MaspoConfig:
    """MaspoConfig from ``actor.policy_loss``: declared fields of MaspoPolicyLossConfig, unset ones default."""
    return core_config_from("maspo", config, "maspo")


def sapo_config_from(config: Any) -> Any:
    """SAPO's temperatures from the actor-level fields veRL's own ``sapo`` reads (``actor.tau_pos/tau_neg``)."""
    return core_config_from("sapo", config, "rlp_sapo")


def ppo_clip_config_from(config: Any) -> Any:
    """PPO clip bounds as veRL's ``vanilla`` reads them (``clip_ratio_low/high``, falling back to ``clip_ratio``)."""
    return core_config_from("ppo_clip", config, "rlp_ppo_clip")


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


def _is_ours(fn: Any) -> bool:
    return getattr(fn, "__rlplugins_policy_loss__", None) is not None


def register_policy_losses() -> list[str]:
    """Add our losses to veRL's registry; idempotent. Returns the names. Never shadows a veRL loss."""
    # Absolute import: veRL's file-path loaders may execute this file outside its package.
    from rlplugins.integrations.verl.version import check_verl_version

    check_verl_version()
    from verl.trainer.ppo import core_algos

    for core in list_policy_losses():  # a loss registered in the core after this module was imported
        name = verl_name(core)
        if name not in VERL_POLICY_LOSSES:
            VERL_POLICY_LOSSES[name] = (make_policy_loss(core), core, ConfigReader(core, name))
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
