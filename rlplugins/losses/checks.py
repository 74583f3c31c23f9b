"""Input validation shared by the policy losses: clear errors that name the argument and what was expected.

The tensor primitives live in ``rlplugins.tensor_checks`` (shared with the kernels' public entry points).
"""

from __future__ import annotations

import torch

from ..tensor_checks import as_bool_mask, assert_none, compiling, describe, first_index, require_float, require_like, require_tensor

__all__ = ["as_bool_mask", "check_policy_inputs", "check_rollout_weights", "first_index", "require_float", "require_like", "require_tensor"]


def check_policy_inputs(
    log_prob: object,
    old_log_prob: object,
    advantages: object,
    response_mask: object,
    rollout_is_weights: object | None = None,
    *,
    names: dict[str, str] | None = None,
) -> torch.Tensor:
    """Validate the policy-loss inputs; return the response mask as bool.

    ``names`` renames arguments in messages (an adapter whose caller passed ``log_probs``/``action_mask``)."""
    n = {k: k for k in ("log_prob", "old_log_prob", "advantages", "response_mask", "rollout_is_weights")}
    n.update(names or {})
    lp = require_tensor(n["log_prob"], log_prob)
    require_float(n["log_prob"], lp)
    if lp.dim() != 2:
        raise ValueError(f"{n['log_prob']} must be [batch, response_len], got {describe(lp)}")
    for key, value in (("old_log_prob", old_log_prob), ("advantages", advantages)):
        t = require_tensor(n[key], value, allow_meta=True)
        require_float(n[key], t)
        require_like(n[key], t, n["log_prob"], lp)
    mask = require_tensor(n["response_mask"], response_mask, allow_meta=True)
    require_like(n["response_mask"], mask, n["log_prob"], lp)
    valid = as_bool_mask(n["response_mask"], mask)
    if rollout_is_weights is not None:
        check_rollout_weights(rollout_is_weights, lp, valid, name=n["rollout_is_weights"], ref_name=n["log_prob"])
    return valid


def check_rollout_weights(weights: object, ref: torch.Tensor, valid: torch.Tensor, *, name: str = "rollout_is_weights",
                          ref_name: str = "log_prob", finite: bool = False) -> torch.Tensor:
    """A float tensor shaped like ``ref``, >= 0 at valid positions (and finite there with ``finite=True``: for
    callers that do not scan it with the other inputs). One host sync."""
    w = require_tensor(name, weights, allow_meta=True)
    require_float(name, w)
    require_like(name, w, ref_name, ref)
    negative = valid & (w < 0)
    nonfinite = valid & ~torch.isfinite(w) if finite else torch.zeros_like(valid)
    if compiling():
        assert_none(nonfinite, f"{name} holds non-finite values at a valid position")
        assert_none(negative, f"{name} must be >= 0 at valid positions (a negative importance weight flips the sign "
                              f"of the loss)")
        return w
    n_negative, n_nonfinite = torch.stack([negative.sum(), nonfinite.sum()]).tolist() if valid.numel() else (0, 0)
    if n_nonfinite:
        raise ValueError(f"{name} holds non-finite values at {n_nonfinite} valid position(s), first at index "
                         f"{first_index(nonfinite)}")
    if n_negative:
        raise ValueError(f"{name} must be >= 0 at valid positions (a negative importance weight "
                         f"flips the sign of the loss); {n_negative} are negative, first at index "
                         f"{first_index(negative)}")
    return w
