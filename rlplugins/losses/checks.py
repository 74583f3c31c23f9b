"""Input validation shared by the policy losses: clear errors that name the argument and what was expected."""

from __future__ import annotations

import torch


def _describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def require_tensor(name: str, value: object) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_float(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {_describe(t)}")


def require_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)} (no broadcasting), got {_describe(t)}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def as_bool_mask(name: str, mask: torch.Tensor) -> torch.Tensor:
    """Accept bool, or a 0/1 integer/float mask (OpenRLHF passes float/long masks); reject anything else."""
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"{name} must be bool or 0/1 numeric, got {_describe(mask)}")
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        raise ValueError(f"{name} must contain only 0 and 1 (or be bool); found {int(bad.sum())} other values ({_describe(mask)})")
    return mask != 0


def check_policy_inputs(
    log_prob: object,
    old_log_prob: object,
    advantages: object,
    response_mask: object,
    rollout_is_weights: object | None = None,
) -> torch.Tensor:
    """Validate the policy-loss inputs; return the response mask as bool."""
    lp = require_tensor("log_prob", log_prob)
    require_float("log_prob", lp)
    if lp.dim() != 2:
        raise ValueError(f"log_prob must be [batch, response_len], got {_describe(lp)}")
    for name, value in (("old_log_prob", old_log_prob), ("advantages", advantages)):
        t = require_tensor(name, value)
        require_float(name, t)
        require_like(name, t, "log_prob", lp)
    mask = require_tensor("response_mask", response_mask)
    require_like("response_mask", mask, "log_prob", lp)
    if rollout_is_weights is not None:
        w = require_tensor("rollout_is_weights", rollout_is_weights)
        require_float("rollout_is_weights", w)
        require_like("rollout_is_weights", w, "log_prob", lp)
    return as_bool_mask("response_mask", mask)


def first_index(flags: torch.Tensor) -> tuple[int, ...]:
    idx = torch.nonzero(flags, as_tuple=False)[0]
    return tuple(int(i) for i in idx)
