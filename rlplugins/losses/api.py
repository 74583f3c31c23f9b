"""``compute_policy_loss``: the one entry point adapters, kernels and users call.

It validates the inputs, evaluates the registered per-token loss on float32 (float64 stays float64) copies
in which masked positions are replaced by zeros (so garbage there cannot reach the loss or the gradient),
multiplies by the optional rollout importance weights, aggregates with veRL's semantics and reports
plain-float metrics with stable names (see ``METRIC_KEYS``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import torch

from .aggregation import agg_loss
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
    old, adv = old_log_prob.detach().to(dtype), advantages.detach().to(dtype)
    weights = rollout_is_weights.detach().to(dtype) if rollout_is_weights is not None else None
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
    lp = log_prob.to(dtype)

    with torch.no_grad():
        finite = torch.isfinite(lp) & torch.isfinite(old) & torch.isfinite(adv)
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

    loss, tok, lp, old, adv = _masked_policy_loss(spec, cfg, lp, old, adv, weights, valid, loss_agg_mode, gbi)
    metrics = _metrics(tok, lp.detach(), old, adv, valid, n_bad)
    return loss, metrics


def _masked_policy_loss(spec, cfg, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                        weights: torch.Tensor | None, valid: torch.Tensor, loss_agg_mode: str, gbi: Mapping[str, Any]):
    """The exact path: inputs zeroed at masked positions, per-token terms, weights, aggregation.
    Returns (loss, token terms, and the masked log_prob, old_log_prob, advantages)."""
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    # where(): gradient exactly zero at masked positions, whatever they held.
    lp = torch.where(valid, lp, zero)
    old = torch.where(valid, old, zero)
    adv = torch.where(valid, adv, zero)
    tok = spec.fn(lp, old, adv, cfg, response_mask=valid)
    loss_mat = tok.loss
    if weights is not None:
        loss_mat = loss_mat * torch.where(valid, weights, zero)
    return agg_loss(loss_mat, valid, loss_agg_mode, **gbi), tok, lp, old, adv


def _traced_policy_loss(spec, cfg, log_prob: torch.Tensor, old: torch.Tensor, adv: torch.Tensor,
                        weights: torch.Tensor | None, valid: torch.Tensor, loss_agg_mode: str, gbi: Mapping[str, Any],
                        on_nonfinite: str, names: Mapping[str, str], owner: str,
                        count_floor: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``compute_policy_loss`` while torch.compile traces it: the exact masking path without a host sync or a
    data-dependent branch. The checks become ``torch._assert_async`` (RuntimeError when the compiled code runs);
    the metrics are 0-d tensors (``metrics_to_floats`` converts them with one sync, outside the compiled region)."""
    lp = log_prob.to(old.dtype)
    with torch.no_grad():
        finite = torch.isfinite(lp) & torch.isfinite(old) & torch.isfinite(adv)
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
    loss, tok, lp, old, adv = _masked_policy_loss(spec, cfg, lp, old, adv, weights, valid, loss_agg_mode, gbi)
    n_bad = bad.sum()
    if not spec.finite_safe:
        return loss, _metrics(tok, lp.detach(), old, adv, valid, n_bad, as_tensors=True)
    # The eager fast path's metric pass (inputs are finite and zero at masked positions here): with every input
    # finite, the same values bit for bit as an eager call.
    with torch.no_grad():
        values = _metric_tensors(tok, lp.detach() - old, adv, valid)
    metrics = dict(zip(_FAST_METRICS, values.unbind()))
    empty = metrics["valid_tokens"] == 0
    metrics["ratio_max"] = torch.where(empty, torch.zeros_like(values[0]), metrics["ratio_max"])
    metrics["gate_min"] = torch.where(empty, torch.ones_like(values[0]), metrics["gate_min"])
    metrics["nonfinite_tokens"] = n_bad.to(values.dtype)
    return loss, metrics


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
    zero = torch.zeros((), dtype=dtype, device=log_prob.device)
    with torch.no_grad():
        lp, old, adv = (torch.where(valid, t.detach().to(dtype), zero) for t in (log_prob, old_log_prob, advantages))
        tok = spec.fn(lp, old, adv, cfg, response_mask=valid)
    return _metrics(tok, lp, old, adv, valid, 0, as_tensors=compiling())


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
    derivatives there (``spec.finite_safe``), so ``agg_loss``'s where() passes them exactly zero upstream gradient,
    and 0 times a finite derivative is 0: the gradient is exactly zero at masked positions, and at valid positions
    every operation is the masked path's, bit for bit. One read-only reduction, ``sum(logp - logp_old) + sum(A)``
    (+ ``sum(w)``), is non-finite iff an element is (or a difference overflows, which also takes the exact path):
    it replaces the per-position finiteness scan and the masking copies of log_prob and old_log_prob."""
    dtype = old.dtype
    zero = torch.zeros((), dtype=dtype, device=old.device)
    lp = log_prob.to(dtype)
    adv_masked = torch.where(valid, adv, zero)
    tok = spec.fn(lp, old, adv_masked, cfg, response_mask=valid)
    loss_mat = tok.loss if weights is None else tok.loss * weights
    loss = agg_loss(loss_mat, valid, loss_agg_mode, **gbi)
    with torch.no_grad():
        log_ratio = lp.detach() - old
        probe = log_ratio.sum() + adv.sum()
        if weights is not None:
            probe = probe + weights.sum()
        count = _local_count(gbi, valid, loss_agg_mode)
        values = _metric_tensors(tok, log_ratio, adv_masked, valid)
        extra = [probe.to(dtype)] + ([count[2].to(dtype)] if count is not None else [])
        floats = torch.cat([values, torch.stack(extra)]).tolist()  # the one host sync
    if not math.isfinite(floats[len(_FAST_METRICS)]):
        return None
    metrics = dict(zip(_FAST_METRICS, floats))
    if metrics["valid_tokens"] == 0:  # no valid token: min/max are undefined; report neutral values rather than +-inf
        metrics.update(ratio_max=0.0, gate_min=1.0)
    metrics["nonfinite_tokens"] = 0.0
    return loss, metrics, (count[0], count[1], int(floats[-1])) if count is not None else None


_FAST_METRICS = ("ppo_kl", "ratio_mean", "ratio_max", "gate_mean", "gate_min", "damp_frac", "eff_weight_mean",
                 "quad_pos_frac", "quad_neg_frac", "pg_clipfrac", "pg_clipfrac_lower", "valid_tokens")


def _metric_tensors(tok: TokenLoss, log_ratio: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The ``_FAST_METRICS`` as one tensor, for finite inputs, with ``adv`` zero at masked positions.

    Sums over valid tokens are dot products with the float mask (a read, no write); counts are ``count_nonzero`` on
    bools (no int64 copy); flags that involve ``A > 0`` / ``A < 0`` exclude masked positions already (A = 0 there);
    ``eff_weight_mean`` is a NaN-skipping sum of ``|g / A|`` (0/0 = NaN exactly where A = 0, masked included).
    The divisions run once on the stacked sums."""
    dtype, device = log_ratio.dtype, log_ratio.device
    vf = valid.reshape(-1).to(dtype)
    zero = torch.zeros((), dtype=dtype, device=device)

    def vsum(x: torch.Tensor) -> torch.Tensor:
        return torch.dot(x.reshape(-1).to(dtype), vf)

    def count(flags: torch.Tensor) -> torch.Tensor:
        return torch.count_nonzero(flags).to(dtype)

    ratio, gate = tok.ratio.to(dtype), tok.gate.to(dtype)
    n = count(valid)
    nums = torch.stack([
        -vsum(torch.clamp(log_ratio, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)),
        vsum(ratio),
        torch.where(valid, ratio, zero).amax() if ratio.numel() else zero,  # ratio > 0
        vsum(gate),
        torch.where(valid, gate, torch.full((), math.inf, dtype=dtype, device=device)).amin() if gate.numel() else zero,
        count((gate < 0.5) & valid),
        torch.nansum((tok.grad_logp.to(dtype) / adv).abs()),
        count((adv > 0) & (ratio > 1)),
        count((adv < 0) & (ratio < 1)),
        count(tok.clipped & valid) if tok.clipped is not None else zero,
        count(tok.clipped_lower & valid) if tok.clipped_lower is not None else zero,
        n,
    ])
    one = torch.ones((), dtype=dtype, device=device)
    denom = n.clamp(min=1)
    dens = torch.stack([denom, denom, one, denom, one, denom, count(adv).clamp(min=1), denom, denom, denom, denom, one])
    return nums / dens


def _metrics(
    tok: TokenLoss, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor,
    n_bad: int | torch.Tensor, as_tensors: bool = False,
) -> dict[str, float] | dict[str, torch.Tensor]:
    with torch.no_grad():
        n = valid.sum()
        denom = n.clamp(min=1).to(lp.dtype)
        zero = torch.zeros((), dtype=lp.dtype, device=lp.device)

        def mean(x: torch.Tensor) -> torch.Tensor:
            return torch.where(valid, x.to(lp.dtype), zero).sum() / denom

        ratio = tok.ratio.to(lp.dtype)
        gate = tok.gate.to(lp.dtype)
        log_ratio = torch.clamp(lp - old, -LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        has_adv = valid & (adv != 0)
        eff = torch.where(has_adv, tok.grad_logp.abs() / torch.where(has_adv, adv.abs(), 1 + zero), zero)
        inf = torch.tensor(float("inf"), dtype=lp.dtype, device=lp.device)
        values = {
            "ppo_kl": mean(-log_ratio),
            "ratio_mean": mean(ratio),
            "ratio_max": torch.where(valid, ratio, -inf).max() if ratio.numel() else zero,
            "gate_mean": mean(gate),
            "gate_min": torch.where(valid, gate, inf).min() if gate.numel() else zero,
            "damp_frac": mean(gate < 0.5),
            "eff_weight_mean": eff.sum() / has_adv.sum().clamp(min=1).to(lp.dtype),
            "quad_pos_frac": mean((adv > 0) & (ratio > 1)),
            "quad_neg_frac": mean((adv < 0) & (ratio < 1)),
            "pg_clipfrac": mean(tok.clipped) if tok.clipped is not None else zero,
            "pg_clipfrac_lower": mean(tok.clipped_lower) if tok.clipped_lower is not None else zero,
            "valid_tokens": n.to(lp.dtype),
        }
        if as_tensors:  # traced by torch.compile: no host sync, the neutral values of an empty call by where()
            empty = values["valid_tokens"] == 0
            values["ratio_max"] = torch.where(empty, zero, values["ratio_max"])
            values["gate_min"] = torch.where(empty, 1 + zero, values["gate_min"])
            values["nonfinite_tokens"] = torch.as_tensor(n_bad, device=lp.device)
            return {k: v.to(lp.dtype).reshape(()) for k, v in values.items()}
        # One host sync for all metrics.
        floats = torch.stack([v.to(lp.dtype).reshape(()) for v in values.values()]).tolist()
    out = dict(zip(values.keys(), floats))
    if out["valid_tokens"] == 0:  # no valid token: min/max are undefined; report neutral values rather than +-inf
        out.update(ratio_max=0.0, gate_min=1.0)
    out["nonfinite_tokens"] = float(n_bad)
    return out
