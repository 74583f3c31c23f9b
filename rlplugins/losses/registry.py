"""Name -> policy-loss table with one call contract (the pattern of veRL's ``register_policy_loss``).

A registered function computes the elementwise terms of one loss:

    fn(log_prob, old_log_prob, advantages, config, *, response_mask=None) -> TokenLoss

Aggregation, validation, importance weights and metrics are shared and live in ``api.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .._config import did_you_mean
from .config import PolicyLossConfig
from .token_loss import TokenLoss

TokenLossFn = Callable[..., TokenLoss]


@dataclass(frozen=True)
class PolicyLossSpec:
    name: str
    fn: TokenLossFn
    config_cls: type[PolicyLossConfig]
    formula: str = ""
    description: str = ""
    # False for losses that couple the tokens of a sequence (gspo): they need response_mask and [B, T].
    elementwise: bool = True
    # True when, on finite inputs with A = 0, the loss's values and derivatives are finite at every position (all
    # built-ins: ratios are clamped before exp): compute_policy_loss then skips the masking copies of log_prob and
    # old_log_prob and the per-position finiteness scan. Custom losses default to the fully masked path.
    finite_safe: bool = False
    # True when ``TokenLoss.grad_logp`` is the exact derivative of ``TokenLoss.loss`` with respect to log_prob and
    # the loss depends on log_prob only through it elementwise (all built-ins): compute_policy_loss then evaluates
    # the loss without an autograd graph and its backward is one product, ``grad_logp`` times the aggregation's
    # scale. Custom losses default to autograd through their own function.
    analytic_grad: bool = False

    def make_config(self, config: PolicyLossConfig | Mapping[str, Any] | None = None) -> PolicyLossConfig:
        """Defaults for None, validation for a mapping, a type check for an instance."""
        if config is None:  # a frozen config: one default instance per class, built (and validated) once
            default = _DEFAULT_CONFIGS.get(self.config_cls)
            if default is None:
                default = self.config_cls()
                params = getattr(self.config_cls, "__dataclass_params__", None)
                if params is not None and params.frozen:
                    _DEFAULT_CONFIGS[self.config_cls] = default
            return default
        if isinstance(config, self.config_cls):
            return config
        if isinstance(config, PolicyLossConfig):
            raise TypeError(
                f"policy loss {self.name!r} expects config of type {self.config_cls.__name__}, "
                f"got {type(config).__name__}"
            )
        if isinstance(config, Mapping):
            return self.config_cls.from_mapping(config)
        raise TypeError(
            f"config for policy loss {self.name!r} must be a {self.config_cls.__name__}, a mapping of its "
            f"fields, or None; got {type(config).__name__}"
        )


_REGISTRY: dict[str, PolicyLossSpec] = {}
_DEFAULT_CONFIGS: dict[type, PolicyLossConfig] = {}


def register_policy_loss(
    name: str,
    *,
    config_cls: type[PolicyLossConfig],
    formula: str = "",
    description: str = "",
    elementwise: bool = True,
    finite_safe: bool = False,
    analytic_grad: bool = False,
    overwrite: bool = False,
) -> Callable[[TokenLossFn], TokenLossFn]:
    """Decorator adding a per-token loss to the registry.

    ``finite_safe=True`` declares the function finite on finite inputs with A = 0 (see PolicyLossSpec), which
    lets compute_policy_loss take its cheaper path; ``analytic_grad=True`` declares ``grad_logp`` exact (see
    PolicyLossSpec), which lets it skip the autograd graph of the per-token terms.
    Re-registering the same function (a module imported twice) is a no-op; registering a different
    function under a taken name raises unless ``overwrite=True`` (veRL silently overwrites; we do not).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    if not (isinstance(config_cls, type) and issubclass(config_cls, PolicyLossConfig)):
        raise TypeError(f"config_cls must be a PolicyLossConfig subclass, got {config_cls!r}")

    def decorator(fn: TokenLossFn) -> TokenLossFn:
        existing = _REGISTRY.get(name)
        same = existing is not None and (
            existing.fn is fn
            or (existing.fn.__module__, existing.fn.__qualname__) == (fn.__module__, fn.__qualname__)
        )
        if existing is not None and not same and not overwrite:
            raise ValueError(f"policy loss {name!r} is already registered by {existing.fn.__module__}; "
                             f"pass overwrite=True to replace it")
        _REGISTRY[name] = PolicyLossSpec(name, fn, config_cls, formula, description, elementwise, finite_safe,
                                        analytic_grad)
        return fn

    return decorator


def get_policy_loss(name: str) -> PolicyLossSpec:
    if not isinstance(name, str):
        raise TypeError(f"policy loss name must be a str (one of {', '.join(sorted(_REGISTRY))}), "
                        f"got {type(name).__name__} {name!r}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown policy loss {name!r}.{did_you_mean(name, _REGISTRY)} "
                         f"Registered: {', '.join(sorted(_REGISTRY))}") from None


def list_policy_losses() -> list[str]:
    return sorted(_REGISTRY)


def make_config(name: str, config: PolicyLossConfig | Mapping[str, Any] | None = None) -> PolicyLossConfig:
    return get_policy_loss(name).make_config(config)
