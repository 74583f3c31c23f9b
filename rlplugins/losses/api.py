"""``compute_policy_loss``: the one entry point adapters, kernels and users call.

It validates the inputs, evaluates the registered per-token loss on float32 (float64 stays float64) copies
in which masked positions are replaced by zeros (so garbage there cannot reach the loss or the gradient),
multiplies by the optional rollout importance weights, aggregates with veRL's semantics and reports
plain-float metrics with stable names (see ``METRIC_KEYS``).
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from .aggregation import agg_loss
from .checks import check_policy_inputs, first_index
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
) -> tuple[torch.Tensor, dict[str, float]]:
    """Policy loss ``name`` aggregated over ``[batch, resp_len]`` tensors; returns ``(loss, metrics)``.

    ``on_nonfinite``: ``"raise"`` (default) raises ValueError with the count and first index of valid
    positions holding NaN/inf; ``"mask"`` drops those tokens (reported as ``nonfinite_tokens``).
    """
    spec = get_policy_loss(name)
    cfg = spec.make_config(config)
    valid = check_policy_inputs(log_prob, old_log_prob, advantages, response_mask, rollout_is_weights)
    if on_nonfinite not in ("raise", "mask"):
        raise ValueError(f"on_nonfinite must be 'raise' or 'mask', got {on_nonfinite!r}")
    gbi = normalize_global_batch_info(global_batch_info)

    dtype = _compute_dtype(log_prob)
    lp, old, adv = log_prob.to(dtype), old_log_prob.detach().to(dtype), advantages.detach().to(dtype)
    weights = rollout_is_weights.detach().to(dtype) if rollout_is_weights is not None else None

    with torch.no_grad():
        finite = torch.isfinite(lp) & torch.isfinite(old) & torch.isfinite(adv)
        if weights is not None:
            finite &= torch.isfinite(weights)
        bad = valid & ~finite
        n_bad = int(bad.sum())
    if n_bad:
        if on_nonfinite == "raise":
            raise ValueError(
                f"{n_bad} valid position(s) hold non-finite log_prob/old_log_prob/advantages"
                f"{'/rollout_is_weights' if weights is not None else ''}; first at index {first_index(bad)}. "
                f"Pass on_nonfinite='mask' to drop them instead."
            )
        valid = valid & finite

    zero = torch.zeros((), dtype=dtype, device=lp.device)
    # where(): gradient exactly zero at masked positions, whatever they held.
    lp = torch.where(valid, lp, zero)
    old = torch.where(valid, old, zero)
    adv = torch.where(valid, adv, zero)

    tok = spec.fn(lp, old, adv, cfg, response_mask=valid)
    loss_mat = tok.loss
    if weights is not None:
        loss_mat = loss_mat * torch.where(valid, weights, zero)
    loss = agg_loss(loss_mat, valid, loss_agg_mode, **gbi)
    metrics = _metrics(tok, lp.detach(), old, adv, valid, n_bad)
    return loss, metrics


def normalize_global_batch_info(info: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate veRL-style global batch counts and drop ``None`` entries (keyword arguments for ``agg_loss``)."""
    allowed = ("batch_num_tokens", "global_batch_size", "dp_size", "loss_scale_factor")
    if info is None:
        return {}
    if not isinstance(info, Mapping):
        raise TypeError(f"global_batch_info must be a mapping with keys {allowed}, got {type(info).__name__}")
    unknown = set(info) - set(allowed)
    if unknown:
        raise ValueError(f"global_batch_info has unknown keys {sorted(unknown)}; allowed: {', '.join(allowed)}")
    out = {k: v for k, v in info.items() if v is not None}
    if "dp_size" in out:
        out["dp_size"] = int(out["dp_size"])
    return out


def _metrics(
    tok: TokenLoss, lp: torch.Tensor, old: torch.Tensor, adv: torch.Tensor, valid: torch.Tensor, n_bad: int
) -> dict[str, float]:
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
        # One host sync for all metrics.
        floats = torch.stack([v.to(lp.dtype).reshape(()) for v in values.values()]).tolist()
    out = dict(zip(values.keys(), floats))
    if out["valid_tokens"] == 0:  # no valid token: min/max are undefined; report neutral values rather than +-inf
        out.update(ratio_max=0.0, gate_min=1.0)
    out["nonfinite_tokens"] = float(n_bad)
    return out
