"""Per-token gate functions of the policy-loss family as small Triton device functions, and their registry.

Every gate has one signature and returns the per-token loss and its derivative with respect to ``logp``:

    gate(logp, old_logp, adv, P0, ..., P11) -> (loss, dloss_dlogp)

``old_logp`` and ``adv`` are constants (no gradient), as in the core. The specification of each gate is the
core's torch function (``rlplugins.losses.token_policy_loss``, ``TokenLoss.loss`` / ``TokenLoss.grad_logp``);
these functions transcribe it operation by operation and tests/kernels/test_gates.py checks them elementwise
against it. They are called by ONE elementwise kernel (gated_loss.py) and ONE fused logits kernel
(fused_loss.py), which receive the gate as a ``tl.constexpr`` function argument: Triton compiles one
specialisation per gate, but no kernel body ever branches on the loss type.

Adding a gate:
  1. write ``@triton.jit def my_gate(logp, old, adv, P0, ..., P11)`` returning ``(loss, grad)``;
  2. write ``pack(values) -> tuple of floats`` mapping the config fields to P0..P11 (unused slots 0.0);
  3. ``register_gate("my_loss", my_gate, fields=(...), pack=pack)`` and add the name to test_gates.py.
Hyper-parameters travel as ordinary float arguments (no recompilation per value, unlike constexpr ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import triton
import triton.language as tl

#: Number of float hyper-parameter slots every gate receives.
NUM_GATE_PARAMS = 12

# veRL/OpenRLHF clamp the log-ratio to +-20 (core: token_loss.LOG_RATIO_CLAMP); MASPO's paper variant uses a
# +-50 finiteness guard and caps log sigma at 60 (core: maspo.PAPER_LOG_*_GUARD). tests/kernels/test_gates.py
# asserts these equal the core's constants.
LOG_RATIO_CLAMP = 20.0
MASPO_PAPER_LOG_RATIO_GUARD = 50.0
MASPO_PAPER_LOG_SIGMA_GUARD = 60.0
# Compiled Triton only reads globals declared constexpr.
_LOG_RATIO_CLAMP = tl.constexpr(LOG_RATIO_CLAMP)
_PAPER_LOG_RATIO_GUARD = tl.constexpr(MASPO_PAPER_LOG_RATIO_GUARD)
_PAPER_LOG_SIGMA_GUARD = tl.constexpr(MASPO_PAPER_LOG_SIGMA_GUARD)


@triton.jit
def clamped_log_ratio(logp, old, bound):
    """(clamp(logp - old, -bound, bound), passes): ``passes`` is where torch's inclusive clamp lets the
    gradient through."""
    raw = logp - old
    passes = (raw >= -bound) & (raw <= bound)
    return tl.minimum(tl.maximum(raw, -bound), bound), passes


@triton.jit
def apply_dual_clip(loss, grad, adv, c):
    """Dual clip for A < 0: loss <- min(loss, -c A), zero gradient where the cap binds; c <= 0 means off."""
    cap = -adv * c
    hit = (c > 0.0) & (adv < 0.0) & (loss > cap)
    return tl.where(hit, cap, loss), tl.where(hit, 0.0, grad)


@triton.jit
def pg_gate(logp, old, adv, P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11):
    """Plain policy gradient: l = -A logp, dl/dlogp = -A."""
    return -adv * logp, -adv


@triton.jit
def unclipped_gate(logp, old, adv, P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11):
    """Unclipped surrogate (the no-gate control): l = -A r, dl/dlogp = -A r (0 beyond the +-20 clamp)."""
    log_ratio, passes = clamped_log_ratio(logp, old, _LOG_RATIO_CLAMP)
    r = tl.exp(log_ratio)
    return -adv * r, tl.where(passes, -adv * r, 0.0)


@triton.jit
def ppo_clip_gate(logp, old, adv, LOW, HIGH, DUAL_C, P3, P4, P5, P6, P7, P8, P9, P10, P11):
    """PPO clip: l = max(-A r, -A clip(r, LOW, HIGH)), then the dual clip; dl/dlogp = -A r where unclipped.
    LOW = 1 - eps_low and HIGH = 1 + eps_high arrive precomputed (as the core's float32 clamp bounds)."""
    log_ratio, passes = clamped_log_ratio(logp, old, _LOG_RATIO_CLAMP)
    r = tl.exp(log_ratio)
    unclipped_loss = -adv * r
    clipped_loss = -adv * tl.minimum(tl.maximum(r, LOW), HIGH)
    loss = tl.maximum(unclipped_loss, clipped_loss)
    clipped = clipped_loss > unclipped_loss
    grad = tl.where(passes & (clipped == 0), -adv * r, 0.0)
    return apply_dual_clip(loss, grad, adv, DUAL_C)


@triton.jit
def sapo_gate(logp, old, adv, TAU_POS, TAU_NEG, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11):
    """SAPO: s = sigmoid(tau (r - 1)), l = -(4/tau) s A, dl/dlogp = -A 4 s (1 - s) r."""
    log_ratio, passes = clamped_log_ratio(logp, old, _LOG_RATIO_CLAMP)
    r = tl.exp(log_ratio)
    tau = tl.where(adv > 0.0, TAU_POS, TAU_NEG)
    s = tl.sigmoid(tau * (r - 1.0))
    loss = -(s * (4.0 / tau)) * adv
    gate = 4.0 * s * (1.0 - s)
    grad = tl.where(passes, -adv * gate * r, 0.0)
    return loss, grad


@triton.jit
def cispo_gate(logp, old, adv, LOW, HIGH, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11):
    """CISPO: c = sg(clip(r, LOW, HIGH)), l = -c A logp, dl/dlogp = -c A."""
    log_ratio, _ = clamped_log_ratio(logp, old, _LOG_RATIO_CLAMP)
    r = tl.exp(log_ratio)
    weight = tl.minimum(tl.maximum(r, LOW), HIGH)
    return -weight * adv * logp, -weight * adv


@triton.jit
def maspo_gate(
    logp, old, adv,
    SIGMA_BASE, ALPHA, BETA_POS, BETA_NEG, SIGMA_HIGH, ADV_LOW, ADV_HIGH,
    PAPER, DUAL_C, BILATERAL, LOG_SIGMA_BASE, P11,
):
    """MASPO (arXiv 2602.17550): l = -A sg(w) r, dl/dlogp = -A w r, w a Gaussian in (r - 1) of width
    sigma = M(pi_old) k(A) on the quadrants (A>0, r>1) and (A<0, r<1) (all four with BILATERAL).
    Official variant: M = clamp(sigma_base / pi_old^alpha, sigma_base, sigma_high), k clamped to
    [adv_low, adv_high], log-ratio clamp 20. Paper variant (PAPER = 1): unclamped, in log space, with the
    core's finiteness guards. Both variants are evaluated and one is selected: the values are detached, so an
    inf in the unselected one cannot reach a gradient."""
    is_paper = PAPER > 0.5
    bound = tl.where(is_paper, _PAPER_LOG_RATIO_GUARD, _LOG_RATIO_CLAMP)
    log_ratio, passes = clamped_log_ratio(logp, old, bound)
    r = tl.exp(log_ratio)
    d = r - 1.0
    # Official code's operations in its order: M = clamp(sigma_base / pi_old**alpha), w = exp(-d^2 / 2 / sigma^2).
    # pi_old**alpha is formed as exp(alpha * logp_old) (Triton has no pow; it also skips a denormal pi_old). It
    # equals the core's float32 value up to rounding, except where exp(logp_old) underflows (logp_old < -87)
    # and alpha is so small (< ~0.03) that the sigma_high clamp does not bind; there this value is the exact one.
    powed = tl.exp(ALPHA * old)
    mass = tl.minimum(tl.maximum(SIGMA_BASE / powed, SIGMA_BASE), SIGMA_HIGH)
    k_pos = tl.minimum(tl.maximum(1.0 + BETA_POS * adv, ADV_LOW), ADV_HIGH)
    k_neg = tl.minimum(tl.maximum(1.0 / (1.0 - BETA_NEG * adv), ADV_LOW), ADV_HIGH)
    s_pos = mass * k_pos
    s_neg = mass * k_neg
    w_pos_official = tl.exp(-(d * d) / 2.0 / (s_pos * s_pos))
    w_neg_official = tl.exp(-(d * d) / 2.0 / (s_neg * s_neg))
    # Paper: each risk factor only where its quadrant can use it (pole at A = 1/beta_neg elsewhere).
    log_mass = LOG_SIGMA_BASE - ALPHA * old
    kp = tl.where(adv > 0.0, 1.0 + BETA_POS * adv, 1.0)
    kn = tl.where(adv < 0.0, 1.0 / (1.0 - BETA_NEG * tl.minimum(adv, 0.0)), 1.0)
    sp = tl.exp(tl.minimum(log_mass + tl.log(kp), _PAPER_LOG_SIGMA_GUARD))
    sn = tl.exp(tl.minimum(log_mass + tl.log(kn), _PAPER_LOG_SIGMA_GUARD))
    zp = d / sp
    zn = d / sn
    w_pos = tl.where(is_paper, tl.exp(-0.5 * (zp * zp)), w_pos_official)
    w_neg = tl.where(is_paper, tl.exp(-0.5 * (zn * zn)), w_neg_official)
    bilateral = BILATERAL > 0.5
    in_pos = (adv > 0.0) & ((r > 1.0) | bilateral)
    in_neg = (adv < 0.0) & ((r < 1.0) | bilateral)
    w = tl.where(in_pos, w_pos, tl.where(in_neg, w_neg, 1.0))
    loss = -adv * (w * r)
    grad = tl.where(passes, -adv * w * r, 0.0)
    return apply_dual_clip(loss, grad, adv, DUAL_C)


# ----------------------------------------------------------------------------------------------------- registry

Packer = Callable[[Mapping[str, Any]], tuple]


@dataclass(frozen=True)
class GateSpec:
    """A registered gate: its Triton function, the config fields it reads and how they become P0..P11.

    ``validated_config``: the gate implements a core loss whose config class (``rlplugins.losses``) owns the
    defaults and allowed ranges. Such a gate takes only a config object with a ``validate()`` method (the core's
    dataclasses), which is called on every use: this layer holds no second copy of the ranges, and a mapping,
    which it could not range-check, is refused with the call that builds the validated object.
    """

    name: str
    fn: Any  # triton JITFunction
    fields: tuple[str, ...]
    pack: Packer
    validated_config: bool = False

    def params(self, config: Any) -> tuple[float, ...]:
        """Float parameters from ``config`` (see ``validated_config``; otherwise any object with the fields as
        attributes, or a mapping)."""
        if self.validated_config and self.fields:
            self._check_validated(config)
        values = read_fields(self.name, config, self.fields)
        packed = tuple(float(v) for v in self.pack(values))
        if len(packed) > NUM_GATE_PARAMS:
            raise ValueError(f"gate {self.name!r} packs {len(packed)} parameters; at most {NUM_GATE_PARAMS}")
        return packed + (0.0,) * (NUM_GATE_PARAMS - len(packed))

    def _check_validated(self, config: Any) -> None:
        build = (f"build it with rlplugins.losses.make_config({self.name!r}, {{...}}), which fills defaults and "
                 f"checks ranges")
        if config is None:
            raise ValueError(f"loss {self.name!r} needs a config with fields {', '.join(self.fields)}: {build}")
        validate = getattr(config, "validate", None)
        if isinstance(config, Mapping) or not callable(validate):
            raise TypeError(f"loss {self.name!r} needs a validated config object (the rlplugins.losses config "
                            f"dataclass of that loss), got {type(config).__name__}: {build}")
        validate()  # the config class's own checks: the one copy of the allowed ranges


def read_fields(name: str, config: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    if not fields:
        return {}
    if config is None:
        raise ValueError(
            f"loss {name!r} needs a config with fields {', '.join(fields)} (e.g. the rlplugins.losses config "
            f"dataclass of that loss, or a mapping); got None"
        )
    if isinstance(config, Mapping):
        missing = [f for f in fields if f not in config]
        get = config.__getitem__
    else:
        missing = [f for f in fields if not hasattr(config, f)]
        get = lambda f: getattr(config, f)  # noqa: E731
    if missing:
        raise ValueError(
            f"config for loss {name!r} ({type(config).__name__}) lacks field(s) {', '.join(missing)}; "
            f"needs {', '.join(fields)}"
        )
    values = {f: get(f) for f in fields}
    for f, v in values.items():  # plain-number sanity for any gate; ranges belong to the config's owner
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"config field {f!r} of loss {name!r} must be finite, got {v!r}")
    return values


_GATES: dict[str, GateSpec] = {}

try:  # under TRITON_INTERPRET=1, @triton.jit returns an InterpretedFunction
    from triton.runtime.interpreter import InterpretedFunction as _InterpretedFunction

    _JIT_TYPES: tuple[type, ...] = (triton.JITFunction, _InterpretedFunction)
except ImportError:  # pragma: no cover - older/newer Triton layouts
    _JIT_TYPES = (triton.JITFunction,)


def register_gate(
    name: str, fn: Any, *, fields: tuple[str, ...] = (), pack: Packer | None = None, validated_config: bool = False
) -> GateSpec:
    """Register a Triton gate under a policy-loss name (the core's registry name it implements).

    ``validated_config=True`` (the built-in gates): take only config objects with ``validate()`` (GateSpec)."""
    if not isinstance(fn, _JIT_TYPES):
        raise TypeError(f"gate {name!r} must be a @triton.jit function, got {type(fn).__name__}")
    spec = GateSpec(name, fn, tuple(fields), pack or (lambda values: ()), bool(validated_config))
    _GATES[name] = spec
    return spec


def get_gate(name: str) -> GateSpec:
    try:
        return _GATES[name]
    except KeyError:
        raise ValueError(f"no Triton gate for loss {name!r}; available: {', '.join(sorted(_GATES))}") from None


def has_gate(name: str) -> bool:
    return name in _GATES


def list_gates() -> list[str]:
    return sorted(_GATES)


def _pack_clip(v: Mapping[str, Any]) -> tuple:
    # Bounds computed in float64 here, rounded to float32 at launch: the same rounding torch applies to the
    # Python-scalar bounds of the core's torch.clamp.
    return 1.0 - v["eps_low"], 1.0 + v["eps_high"], v["dual_clip"] or 0.0


def _pack_cispo(v: Mapping[str, Any]) -> tuple:
    return 1.0 - v["eps_low"], 1.0 + v["eps_high"]


def _pack_sapo(v: Mapping[str, Any]) -> tuple:
    return v["tau_pos"], v["tau_neg"]


def _pack_maspo(v: Mapping[str, Any]) -> tuple:
    if v["variant"] not in ("official", "paper"):
        raise ValueError(f"maspo variant must be 'official' or 'paper', got {v['variant']!r}")
    return (
        v["sigma_base"], v["alpha"], v["beta_pos"], v["beta_neg"], v["sigma_high"], v["adv_low"], v["adv_high"],
        1.0 if v["variant"] == "paper" else 0.0, v["dual_clip"] or 0.0, 1.0 if v["bilateral"] else 0.0,
        math.log(v["sigma_base"]),
    )


_CLIP_FIELDS = ("eps_low", "eps_high", "dual_clip")
_MASPO_FIELDS = (
    "sigma_base", "alpha", "beta_pos", "beta_neg", "sigma_high", "adv_low", "adv_high", "variant", "dual_clip",
    "bilateral",
)

register_gate("pg", pg_gate)
register_gate("unclipped", unclipped_gate)
for _name in ("ppo_clip", "clip_higher", "dual_clip"):  # one gate, three presets of the core
    register_gate(_name, ppo_clip_gate, fields=_CLIP_FIELDS, pack=_pack_clip, validated_config=True)
register_gate("sapo", sapo_gate, fields=("tau_pos", "tau_neg"), pack=_pack_sapo, validated_config=True)
register_gate("cispo", cispo_gate, fields=("eps_low", "eps_high"), pack=_pack_cispo, validated_config=True)
register_gate("maspo", maspo_gate, fields=_MASPO_FIELDS, pack=_pack_maspo, validated_config=True)
