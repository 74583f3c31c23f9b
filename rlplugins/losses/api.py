"""``compute_policy_loss``: the one entry point adapters, kernels and users call.

It validates the inputs, evaluates the registered per-token loss in float32 (float64 stays float64),
multiplies by the optional rollout importance weights, aggregates with veRL's semantics and reports
plain-float metrics with stable names (see ``METRIC_KEYS``). Masked positions never reach the loss or the
gradient: with every input finite (one reduction checks) they are masked by products, else by where() on copies
in which they are zeros (see ``_fast_policy_loss``).

CPU cost (docs/kernels.md): the built-ins (``analytic_grad``) are evaluated without an autograd graph, and their
backward is one node that runs autograd's own operations in autograd's order (``TokenLoss.vjp``,
``agg_grad_scale``), so the gradient has the same bits; the metrics come from one fused pass and one host sync.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import torch

from .aggregation import agg_grad_scale, agg_loss
from .checks import check_policy_inputs, first_index
from ..tensor_checks import assert_none, compiling
from .config import PolicyLossConfig
from .registry import get_policy_loss
from .token_loss import LOG_RATIO_CLAMP, TokenLoss

# Documented metric names, all plain floats. "Valid" means response_mask is set (and the values are finite).
METRIC_KEYS = {
    "ppo_kl": "mean over valid tokens of logp_old - logp (log-ratio clamped to +-20)",
    "ratio_mean": "mean importance ratio used by the loss (sequence ratio for gspo)",
    "ratio_max": "max importance ratio used by the loss",
    "gate_mean": "mean gate over valid tokens (1 = full gradient; MASPO's w, 0/1 for hard clips)",
    "gate_min": "min gate over valid tokens",
    "damp_frac": "share of valid tokens whose gradient weight fell below half of the ungated value (gate < 0.5)",
    "eff_weight_mean": "mean |dl/dlogp| / |A| over valid tokens with A != 0 (MASPO: w * r)",
    "quad_pos_frac": "share of valid tokens with A > 0 and r > 1 (MASPO's positive gated quadrant)",
    "quad_neg_frac": "share of valid tokens with A < 0 and r < 1 (MASPO's negative gated quadrant)",
    "pg_clipfrac": "share of valid tokens the loss clipped (its own clip; 0 for sapo/pg). maspo: as the official code, "
                   "the share PPO eps=0.2 would clip (diagnostic, not applied)",
    "pg_clipfrac_lower": "share of valid tokens bounded by the dual clip (0 when off). maspo without dual_clip: the "
                         "share with A<0 and r>3 (diagnostic, as the official code)",
    "valid_tokens": "number of valid tokens in this call",
    "nonfinite_tokens": "valid tokens dropped because an input was not finite (on_nonfinite='mask')",
}

def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _detached(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t.detach().to(dtype)`` without the dispatcher round trips when they would return ``t`` itself."""
    if t.requires_grad:
        t = t.detach()
    return t if t.dtype == dtype else t.to(dtype)


def token_policy_loss(
    name: str,
    *,
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    config: PolicyLossConfig | Mapping[str, Any] | None = None,
    response_mask: torch.Tensor | None = None,
) -> TokenLoss:
    """Per-token terms of loss ``name`` (no validation, no aggregation): the hot path for kernels and adapters."""
    spec = get_policy_loss(name)
    return spec.fn(log_prob, old_log_prob, advantages, spec.make_config(config), response_mask=response_mask)


def compute_policy_loss(
    name: str,
    *,
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: PolicyLossConfig | Mapping[str, Any] | None = None,
    rollout_is_weights: torch.Tensor | None = None,
    global_batch_info: Mapping[str, Any] | None = None,
    on_nonfinite: str = "raise",
    arg_names: Mapping[str, str] | None = None,
    count_floor: str = "local",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Policy loss ``name`` aggregated over ``[batch, resp_len]`` tensors; returns ``(loss, metrics)``.

    ``on_nonfinite``: ``"raise"`` (default) raises ValueError with the count and first index of valid
    positions holding NaN/inf; ``"mask"`` drops those tokens (reported as ``nonfinite_tokens``).
    ``arg_names`` renames arguments in error messages, for adapters whose callers use other names
    (e.g. ``{"log_prob": "log_probs", "response_mask": "action_mask"}``).
    ``count_floor``: how ``global_batch_info`` counts are checked against this call's own (`check_global_counts`):
    ``"local"`` for veRL-style whole-batch counts, ``"nonzero"`` for counts pre-divided by the
    gradient-accumulation steps (OpenRLHF).
    """
    spec = get_policy_loss(name)
    cfg = spec.make_config(config)
    names = dict(arg_names or {})
    valid = check_policy_inputs(log_prob, old_log_prob, advantages, response_mask, rollout_is_weights, names=names)
    if on_nonfinite not in ("raise", "mask"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'mask', got {on_nonfinite!r}")
    _check_floor(count_floor)
    owner = names.get("global_batch_info", "global_batch_info")
    gbi = normalize_global_batch_info(global_batch_info, owner=owner)

    dtype = _compute_dtype(log_prob)
    old, adv = _detached(old_log_prob, dtype), _detached(advantages, dtype)
    weights = _detached(rollout_is_weights, dtype) if rollout_is_weights is not None else None
    if compiling():
        return _traced_policy_loss(spec, cfg, log_prob, old, adv, weights, valid, loss_agg_mode, gbi, on_nonfinite,
                                   names, owner, count_floor)
    if spec.finite_safe:
        fast = _fast_policy_loss(spec, cfg, log_prob, old, adv, weights, valid, loss_agg_mode, gbi)
        if fast is not None:
            loss, metrics, count = fast
            if count is not None:
                _raise_if_global_count_too_small(gbi, count, owner, count_floor)
            return loss, metrics
    check_global_counts(gbi, valid, loss_agg_mode, owner=owner, count_floor=count_floor)

    with torch.no_grad():
        finite = torch.isfinite(log_prob) & torch.isfinite(old) & torch.isfinite(adv)
        if weights is not None:
            finite &= torch.isfinite(weights)
        bad = valid & ~finite
        n_bad = int(bad.sum())
    if n_bad:
        if on_nonfinite == "raise":
            what = [names.get(k, k) for k in ("log_prob", "old_log_prob", "advantages")]
            if weights is not None:
                what.append(names.get("rollout_is_weights", "rollout_is_weights"))
            raise ValueError(
                f"{n_bad} valid position(s) hold non-finite {'/'.join(what)}; first at index {first_index(bad)}. "
                f"Pass on_nonfinite='mask' to drop them instead."
            )
        valid = valid & finite

    loss, tok, lp, old, adv = _masked_policy_loss(spec, cfg, log_prob, old, adv, weights, valid, loss_agg_mode, gbi,
                                                  spec.analytic_grad)
    with torch.no_grad():
        floats = _metric_vector(tok, lp - old, adv, valid, masked=True).tolist()  # one host sync
    return loss, _finish_metrics(floats, n_bad)


class _AnalyticPolicyLoss(torch.autograd.Function):
    """The aggregated loss ``value``, computed without an autograd graph, with ``backward_fn`` as its backward: one
    node instead of one per operation of the loss, the aggregation and the masking.

    ``backward_fn`` runs the operations autograd would run through ``agg_loss``, the rollout weights and the loss
    formula (``TokenLoss.vjp``), in autograd's order, so the gradient has the same bits as autograd's (tests compare
    the two bit for bit for every built-in loss and mode, and ``gradcheck`` in float64). Eager only: a traced call
    differentiates the formula (see ``_traced_policy_loss``). Second derivatives raise (``once_differentiable``)."""

    @staticmethod
    def forward(ctx, log_prob: torch.Tensor, value: torch.Tensor, backward_fn) -> torch.Tensor:
        ctx.backward_fn = backward_fn
        ctx.grad_dtype = log_prob.dtype
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        return ctx.backward_fn(grad_out).to(ctx.grad_dtype), None, None


def _policy_loss(spec, cfg, log_prob: torch.Tensor, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                 weights: torch.Tensor | None, valid: torch.Tensor, loss_agg_mode: str, gbi: Mapping[str, Any],
                 analytic: bool, vf: torch.Tensor | None = None) -> tuple[torch.Tensor, TokenLoss]:
    """The aggregated loss and the per-token terms. ``lp``: ``log_prob`` in the compute dtype, possibly masked.
    ``analytic`` (a loss with ``analytic_grad``, eager): evaluated on ``lp`` without a graph, with one backward node
    (``_AnalyticPolicyLoss``); otherwise through autograd (``lp`` must then be differentiable). ``vf``: ``valid`` as
    0./1., when every input is finite (the per-token terms then are too: masking by products instead of where())."""
    if not analytic:
        tok = spec.fn(lp, old, adv, cfg, response_mask=valid)
        loss_mat = tok.loss if weights is None else tok.loss * weights
        return agg_loss(loss_mat, valid, loss_agg_mode, **gbi), tok
    needs_grad = log_prob.requires_grad and torch.is_grad_enabled()
    if needs_grad and loss_agg_mode == "token-mean" and "batch_num_tokens" not in gbi and gbi.get("dp_size", 1) == 1:
        # the valid-token count agg_loss and agg_grad_scale would each take: counted once (the same int64 tensor)
        gbi = {**gbi, "batch_num_tokens": torch.count_nonzero(valid)}
    with torch.no_grad():
        tok = spec.fn(lp.detach(), old, adv, cfg, response_mask=valid)
        loss_mat = tok.loss if weights is None else tok.loss * weights
        loss = agg_loss(loss_mat, valid, loss_agg_mode, float_mask=vf, **gbi)
    if not needs_grad:
        return loss, tok
    if tok.vjp is None:
        raise RuntimeError(f"policy loss {spec.name!r} is registered with analytic_grad=True but its TokenLoss has no "
                           f"vjp")
    vjp = tok.vjp

    def backward_fn(up: torch.Tensor) -> torch.Tensor:
        # agg_loss's backward (dp_size, the count, per-sequence count; where() to the valid tokens), the weights', the
        # loss formula's.
        scale = agg_grad_scale(valid, loss_agg_mode, upstream=up, **gbi)
        g = torch.where(valid, scale, 0.0) if vf is None else vf * scale
        return vjp(g if weights is None else g * weights)

    return _AnalyticPolicyLoss.apply(log_prob, loss, backward_fn), tok


def _masked_policy_loss(spec, cfg, log_prob: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                        weights: torch.Tensor | None, valid: torch.Tensor, loss_agg_mode: str, gbi: Mapping[str, Any],
                        analytic: bool):
    """The exact path: inputs zeroed at masked positions, per-token terms, weights, aggregation.
    Returns (loss, token terms, and the masked log_prob (detached), old_log_prob, advantages)."""
    lp = log_prob.to(old.dtype)
    if analytic:
        lp = lp.detach()
    # where(): gradient exactly zero at masked positions, whatever they held.
    lp = torch.where(valid, lp, 0.0)
    old = torch.where(valid, old, 0.0)
    adv = torch.where(valid, adv, 0.0)
    if weights is not None:
        weights = torch.where(valid, weights, 0.0)
    loss, tok = _policy_loss(spec, cfg, log_prob, lp, old, adv, weights, valid, loss_agg_mode, gbi, analytic)
    return loss, tok, lp.detach(), old, adv


def _traced_policy_loss(spec, cfg, log_prob: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                        weights: torch.Tensor | None, valid: torch.Tensor, loss_agg_mode: str, gbi: Mapping[str, Any],
                        on_nonfinite: str, names: Mapping[str, str], owner: str,
                        count_floor: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``compute_policy_loss`` while torch.compile traces it: the exact masking path without a host sync or a
    data-dependent branch. The checks become ``torch._assert_async`` (RuntimeError when the compiled code runs);
    the metrics are 0-d tensors (``metrics_to_floats`` converts them with one sync, outside the compiled region).
    With every input finite, the same values bit for bit as an eager call."""
    with torch.no_grad():
        finite = torch.isfinite(log_prob) & torch.isfinite(old) & torch.isfinite(adv)
        if weights is not None:
            finite &= torch.isfinite(weights)
        bad = valid & ~finite
    if on_nonfinite == "raise":
        what = [names.get(k, k) for k in ("log_prob", "old_log_prob", "advantages")]
        if weights is not None:
            what.append(names.get("rollout_is_weights", "rollout_is_weights"))
        assert_none(bad, f"a valid position holds non-finite {'/'.join(what)}; pass on_nonfinite='mask' to drop it")
    found = _local_count(gbi, valid, loss_agg_mode)
    if found is not None:
        key, what, n_local = found
        count = torch.as_tensor(gbi[key], device=n_local.device).to(torch.float64)
        n_local = n_local.to(torch.float64)
        if count_floor == "nonzero":
            assert_none((n_local > 0) & (count <= 0), f"{_where(owner, key)} is 0 while this call has {what}: the "
                                                      f"step would be silently skipped")
        else:
            assert_none(count < n_local, f"{_where(owner, key)} is smaller than the {what} of this call; it must "
                                         f"count the whole global batch")
    valid = valid & finite
    # Autograd through the formula (no Python backward in a compiled graph): the same bits as the eager
    # _AnalyticPolicyLoss, whose backward runs autograd's operations in autograd's order.
    loss, tok, lp, old, adv = _masked_policy_loss(spec, cfg, log_prob, old, adv, weights, valid, loss_agg_mode, gbi,
                                                  analytic=False)
    with torch.no_grad():
        values = _metric_vector(tok, lp - old, adv, valid, masked=not spec.finite_safe)
        return loss, _finish_metrics(list(values.unbind()), bad.sum())


def metrics_to_floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Metrics as plain floats: those of a compiled ``compute_policy_loss`` (0-d tensors) with one host sync;
    float values pass through."""
    keys = [k for k, v in metrics.items() if isinstance(v, torch.Tensor)]
    out = {k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    if keys:
        values = torch.stack([metrics[k].detach().to(torch.float64).reshape(()) for k in keys]).tolist()
        out.update(zip(keys, values))
    return {k: out[k] for k in metrics}


def policy_metrics(name: str, config: PolicyLossConfig | Mapping[str, Any] | None, log_prob: torch.Tensor,
                   old_log_prob: torch.Tensor, advantages: torch.Tensor, valid: torch.Tensor) -> dict[str, float]:
    """The metrics of ``compute_policy_loss`` from detached, already validated [B, T] tensors whose valid positions
    are finite (e.g. a fused kernel's log-probs): the per-token terms once, without a graph or an aggregation."""
    spec = get_policy_loss(name)
    cfg = spec.make_config(config)
    dtype = _compute_dtype(log_prob)
    with torch.no_grad():
        lp, old, adv = (torch.where(valid, t.detach().to(dtype), 0.0) for t in (log_prob, old_log_prob, advantages))
        tok = spec.fn(lp, old, adv, cfg, response_mask=valid)
        values = _metric_vector(tok, lp - old, adv, valid, masked=True)
        return _finish_metrics(list(values.unbind()) if compiling() else values.tolist(), 0)


_GBI_KEYS = ("batch_num_tokens", "global_batch_size", "dp_size", "loss_scale_factor")


def normalize_global_batch_info(info: Mapping[str, Any] | None, *, owner: str = "global_batch_info") -> dict[str, Any]:
    """Validate veRL-style global batch counts and drop ``None`` entries (keyword arguments for ``agg_loss``).

    ``batch_num_tokens`` / ``global_batch_size``: finite numbers >= 0 (int, float or a one-element tensor; 0 only
    when the whole global batch is masked, see ``check_global_counts``); ``dp_size``: an int >= 1 (not 2.7, not
    True); ``loss_scale_factor``: a finite number > 0. ``owner`` names the mapping in messages ("" names the
    bare keys, for adapters whose callers pass them as arguments).
    """
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise TypeError(f"{owner} must be a mapping with keys {_GBI_KEYS}, got {type(info).__name__}")
    unknown = set(info) - set(_GBI_KEYS)
    if unknown:
        raise ValueError(f"{owner} has unknown keys {sorted(map(str, unknown))}; allowed: {', '.join(_GBI_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in info.items():
        if value is None:
            continue
        where = _where(owner, key)
        if key == "dp_size":
            if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_floating_point() \
                    and value.dtype != torch.bool:
                value = int(value.item())
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise ValueError(f"{where} must be an int >= 1, got {value!r}")
            out[key] = int(value)
            continue
        if compiling() and isinstance(value, torch.Tensor):  # traced: checked as tensor ops, no host sync
            if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
                raise TypeError(f"{where} must be a number or a one-element real tensor, got shape "
                                f"{tuple(value.shape)}, dtype {value.dtype}")
            v = value.reshape(()).to(torch.float64)
            ok = torch.isfinite(v) & ((v > 0) if key == "loss_scale_factor" else (v >= 0))
            assert_none(~ok, f"{where} must be finite and {'> 0' if key == 'loss_scale_factor' else '>= 0'}")
            out[key] = value
            continue
        number = _scalar(where, value)
        if not math.isfinite(number):
            raise ValueError(f"{where} must be finite, got {value!r}")
        if key == "loss_scale_factor":
            if number <= 0:
                raise ValueError(f"{where} must be > 0, got {value!r}")
        elif number < 0:
            raise ValueError(f"{where} must be >= 0, got {value!r}")
        out[key] = value
    return out


def _where(owner: str, key: str) -> str:
    """How a key is named in messages: ``global_batch_info['dp_size']``, or the bare key for an adapter whose
    caller passed it as an argument (``owner=""``)."""
    return f"{owner}[{key!r}]" if owner else key


def _scalar(where: str, value: Any) -> float:
    """A count as a Python float (one host sync for a tensor): numbers and one-element real tensors only."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{where} must be a number or a one-element real tensor, got shape "
                            f"{tuple(value.shape)}, dtype {value.dtype}")
        return float(value.item())
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where} must be a number, got {type(value).__name__} {value!r}")
    try:
        return float(value)
    except OverflowError:
        return math.inf


COUNT_FLOORS = ("local", "nonzero")


def _local_count(gbi: Mapping[str, Any], valid: torch.Tensor, loss_agg_mode: str) -> tuple[str, str, torch.Tensor] | None:
    """(gbi key, what it counts, this call's own count as a tensor) for the global count the mode uses, or None."""
    if loss_agg_mode == "token-mean" and "batch_num_tokens" in gbi:
        return "batch_num_tokens", "valid tokens", valid.sum()
    if loss_agg_mode.startswith("seq") and "global_batch_size" in gbi:
        local = (valid.sum(-1) > 0).sum() if valid.dim() == 2 else valid.new_zeros((), dtype=torch.int64)
        return "global_batch_size", "sequences with a valid token", local
    return None


def check_global_counts(gbi: Mapping[str, Any], valid: torch.Tensor, loss_agg_mode: str,
                        owner: str = "global_batch_info", count_floor: str = "local") -> None:
    """Refuse a global count that cannot be right for this call.

    ``count_floor="local"`` (veRL: counts summed over micro-batches and data-parallel ranks): a count smaller than this
    call's own would scale the loss up, or, at 0, silently skip a step with valid tokens. ``count_floor="nonzero"``
    (OpenRLHF 0.11: ``iter_grad_accum_global_norm`` divides the step's counts by the gradient-accumulation steps
    to pre-compensate DeepSpeed's ``1/gas``, so one micro-batch may hold more than the count): only a count of 0
    while this call has valid tokens is refused.
    """
    _check_floor(count_floor)
    found = _local_count(gbi, valid, loss_agg_mode)
    if found is not None:
        _raise_if_global_count_too_small(gbi, (found[0], found[1], int(found[2])), owner, count_floor)


def _check_floor(count_floor: str) -> None:
    if count_floor not in COUNT_FLOORS:
        raise ValueError(f"count_floor must be one of {COUNT_FLOORS}, got {count_floor!r}")


def _raise_if_global_count_too_small(gbi: Mapping[str, Any], count: tuple[str, str, int], owner: str,
                                     floor: str = "local") -> None:
    key, what, n_local = count
    if floor == "nonzero":
        if n_local > 0 and _scalar(key, gbi[key]) <= 0:
            raise ValueError(f"{_where(owner, key)}={gbi[key]!r} while this call has {n_local} {what}: the step would "
                             f"be silently skipped; it must count the whole global batch")
        return
    if _scalar(key, gbi[key]) < n_local:
        raise ValueError(f"{_where(owner, key)}={gbi[key]!r} is smaller than the {n_local} {what} of this call; it must "
                         f"count the whole global batch (all micro-batches and data-parallel ranks)")


def _fast_policy_loss(spec, cfg, log_prob: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                      weights: torch.Tensor | None, valid: torch.Tensor, loss_agg_mode: str,
                      gbi: Mapping[str, Any]) -> tuple[torch.Tensor, dict[str, float], tuple | None] | None:
    """The loss and every metric with one host sync and one masking copy (of the advantages); None when an input
    holds a non-finite value (the caller then takes the exact path, which reports or drops those tokens).

    Why it is exact: with every input finite and A = 0 at masked positions, a built-in loss gives finite values and
    derivatives there (``spec.finite_safe``), so ``agg_loss``'s where() leaves them out of the loss, the backward's
    where() (or, for a loss without ``analytic_grad``, 0 times a finite derivative) gives them exactly zero gradient,
    and at valid positions every operation is the masked path's, bit for bit. A few read-only reductions,
    ``sum(logp - logp_old) + sum(A) (+ sum(w))``, are non-finite iff an element is (or a sum overflows, which also
    takes the exact path): they replace the per-position finiteness scan and
    the masking copies of log_prob and old_log_prob."""
    dtype = old.dtype
    lp = _detached(log_prob, dtype) if spec.analytic_grad else log_prob.to(dtype)
    vf = valid.to(dtype)
    adv_masked = adv * vf  # A finite (else the probe below sends the call to the exact path): the where() values
    loss, tok = _policy_loss(spec, cfg, log_prob, lp, old, adv_masked, weights, valid, loss_agg_mode, gbi,
                             spec.analytic_grad, vf)
    with torch.no_grad():
        log_ratio = (lp.detach() if lp.requires_grad else lp) - old
        # non-finite iff an element is (or a sum overflows): sum(logp - logp_old) + sum(A) (+ sum(w))
        probe = log_ratio.sum() + adv.sum()
        extra = [probe if weights is None else probe + weights.sum()]
        count = _local_count(gbi, valid, loss_agg_mode)
        if count is not None:
            extra.append(count[2].to(dtype))
        values = _metric_vector(tok, log_ratio, adv_masked, valid, vf=vf, extra=extra)
        floats = values.tolist()  # the one host sync
    if not math.isfinite(floats[_N_RAW]):
        return None
    metrics = _finish_metrics(floats, 0.0)
    return loss, metrics, (count[0], count[1], int(floats[-1])) if count is not None else None


# Documented metrics in the order _finish_metrics returns them.
_METRIC_ORDER = ("ppo_kl", "ratio_mean", "ratio_max", "gate_mean", "gate_min", "damp_frac", "eff_weight_mean",
                 "quad_pos_frac", "quad_neg_frac", "pg_clipfrac", "pg_clipfrac_lower", "valid_tokens", "nonfinite_tokens")
# _metric_vector's entries: counts over valid tokens (valid, pg_clipfrac and pg_clipfrac_lower flags, gate < 0.5,
# A > 0 and r > 1, A < 0 and r < 1); valid-token sums of the clamped log-ratio, ratio and gate; ratio_max, gate_min,
# sum |g / A|, count(A != 0); then the caller's extras.
_N_RAW = 13
# Stands in for +inf at masked positions in gate_min (finite: times 0 it must give 0, not NaN).
_BIG = 1e30


def _metric_vector(tok: TokenLoss, log_ratio: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor, *,
                   masked: bool = False, vf: torch.Tensor | None = None,
                   extra: list[torch.Tensor] = ()) -> torch.Tensor:
    """The raw metric statistics as one float64 vector (see ``_N_RAW``; then ``extra``), for inputs finite
    everywhere with ``adv`` zero at masked positions. ``masked=True``: the per-token terms may be non-finite at
    masked positions (a custom loss evaluated on zeroed inputs), so they are replaced there first. ``vf``:
    ``valid`` as 0./1. in the compute dtype, if the caller has it.

    Few passes: every flag is counted by one ``count_nonzero`` over the stacked bool flags ANDed with the mask (the
    quadrant flags need no mask: A = 0 at masked positions); the three sums are one ``mv`` of the stacked float
    terms with the float mask (masked positions contribute finite * 0 = 0); the max/min over valid tokens multiply
    by the mask (ratio > 0) or select +inf; ``eff_weight_mean`` is a NaN-skipping sum of ``|g / A|`` (0/0 = NaN
    exactly where A = 0, masked included). One float64 vector at the end: one host sync for all."""
    dtype = log_ratio.dtype
    if vf is None:
        vf = valid.to(dtype)
    ratio, gate, grad = (t if t.dtype == dtype else t.to(dtype) for t in (tok.ratio, tok.gate, tok.grad_logp))
    if masked:
        ratio, gate, grad = (torch.where(valid, t, fill) for t, fill in ((ratio, 1.0), (gate, 1.0), (grad, 0.0)))
    # Flags zero at masked positions already: the valid mask, and the quadrants when built here from adv (0 there).
    quadrants = tok.quadrants if tok.quadrants is not None else ((adv > 0) & (ratio > 1), (adv < 0) & (ratio < 1))
    flags = [valid, (gate < 0.5) & valid, *(q if tok.quadrants is None else q & valid for q in quadrants)]
    flags += [c & valid for c in (tok.clipped, tok.clipped_lower) if c is not None]
    # One count_nonzero per flag: count_nonzero(dim=...) over a stack takes a slow strided path on CPU.
    counts = torch.stack([torch.count_nonzero(f) for f in flags])
    if tok.clipped is None or tok.clipped_lower is None:
        missing = counts.new_zeros(2 - (tok.clipped is not None) - (tok.clipped_lower is not None))
        if tok.clipped is None and tok.clipped_lower is not None:
            counts = torch.cat([counts[:4], missing, counts[4:]])
        else:
            counts = torch.cat([counts, missing])
    # torch.stack's values, the clamp written in place: one buffer, no temporary
    terms = log_ratio.new_empty((3, *log_ratio.shape))
    torch.clamp(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP, out=terms[0])
    terms[1].copy_(ratio)
    terms[2].copy_(gate)
    sums = torch.mv(terms.reshape(3, -1), vf.reshape(-1))
    others = torch.stack([
        (ratio * vf).amax() if ratio.numel() else vf.new_zeros(()),  # ratio > 0
        # _BIG - _BIG * vf: 0 at valid tokens (exact: gate + 0 = gate), _BIG at masked ones
        torch.rsub(vf, _BIG, alpha=_BIG).add_(gate).amin() if gate.numel() else vf.new_zeros(()),
        torch.nansum((grad / adv).abs_()),
        torch.count_nonzero(adv).to(dtype),
        *extra,
    ])
    return torch.cat([counts.to(torch.float64), torch.cat([sums, others]).to(torch.float64)])


def _finish_metrics(raw: list, n_bad: Any) -> dict[str, Any]:
    """The documented metrics from ``_metric_vector``'s entries: Python floats (eager, after the one host sync) or
    0-d float64 tensors (traced; no data-dependent branch). The same float64 operations either way, so a compiled
    call reports the same bits as an eager one."""
    (n, damp, quad_pos, quad_neg, clipped, clipped_lower, log_ratio, ratio, gate, ratio_max, gate_min, eff_sum,
     n_adv) = raw[:_N_RAW]
    traced = isinstance(n, torch.Tensor)
    denom = n.clamp(min=1) if traced else max(n, 1.0)
    out = {"ppo_kl": -log_ratio / denom, "ratio_mean": ratio / denom, "gate_mean": gate / denom,
           "damp_frac": damp / denom, "quad_pos_frac": quad_pos / denom, "quad_neg_frac": quad_neg / denom,
           "pg_clipfrac": clipped / denom, "pg_clipfrac_lower": clipped_lower / denom}
    if traced:  # no valid token: min/max are undefined; report neutral values rather than +-inf
        empty = n == 0
        out["ratio_max"] = torch.where(empty, torch.zeros_like(ratio_max), ratio_max)
        out["gate_min"] = torch.where(empty, torch.ones_like(gate_min), gate_min)
        out["eff_weight_mean"] = eff_sum / n_adv.clamp(min=1)
        out["nonfinite_tokens"] = torch.as_tensor(n_bad, device=n.device).to(n.dtype).reshape(())
    else:
        out["ratio_max"], out["gate_min"] = (ratio_max, gate_min) if n else (0.0, 1.0)
        out["eff_weight_mean"] = eff_sum / max(n_adv, 1.0)
        out["nonfinite_tokens"] = float(n_bad)
    out["valid_tokens"] = n
    return {key: out[key] for key in _METRIC_ORDER}
