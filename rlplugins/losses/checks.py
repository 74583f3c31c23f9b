"""Input validation shared by the policy losses: clear errors that name the argument and what was expected.

The tensor primitives live in ``rlplugins.tensor_checks`` (shared with the kernels' public entry points).
"""

from __future__ import annotations

import torch

from ..tensor_checks import as_bool_mask, describe, first_index, require_float, require_like, require_tensor

__all__ = ["as_bool_mask", "check_policy_inputs", "first_index", "require_float", "require_like", "require_tensor"]


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
        w = require_tensor(n["rollout_is_weights"], rollout_is_weights, allow_meta=True)
        require_float(n["rollout_is_weights"], w)
        require_like(n["rollout_is_weights"], w, n["log_prob"], lp)
        negative = valid & (w < 0)
        if bool(negative.any()):
            raise ValueError(f"{n['rollout_is_weights']} must be >= 0 at valid positions (a negative importance weight "
                             f"flips the sign of the loss); {int(negative.sum())} are negative, first at index "
                             f"{first_index(negative)}")
    return valid
