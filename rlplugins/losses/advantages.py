"""GRPO group-normalised outcome advantages (veRL ``compute_grpo_outcome_advantage``)."""

from __future__ import annotations

import torch


def grpo_advantages(rewards: torch.Tensor, group_size: int, *, eps: float = 1e-6, normalize_std: bool = True) -> torch.Tensor:
    """``A_i = (r_i - mean_G r) / (std_G r + eps)`` with the unbiased std, per group of ``group_size``.

    ``rewards`` is ``[num_prompts * group_size]`` (groups contiguous) or ``[num_prompts, group_size]``; the
    result has the same shape. A group of size 1 uses mean 0 and std 1, as veRL does; a group whose rewards
    are all equal gets advantage 0 (no NaN). ``normalize_std=False`` gives Dr. GRPO's ``r - mean``.
    """
    if not isinstance(rewards, torch.Tensor) or not rewards.is_floating_point():
        raise TypeError(f"rewards must be a floating-point tensor, got {type(rewards).__name__}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    shape = rewards.shape
    if rewards.dim() == 1:
        if rewards.numel() % group_size:
            raise ValueError(f"rewards has {rewards.numel()} entries, not a multiple of group_size={group_size}")
        grouped = rewards.reshape(-1, group_size)
    elif rewards.dim() == 2 and rewards.shape[1] == group_size:
        grouped = rewards
    else:
        raise ValueError(f"rewards must be [P*G] or [P, G={group_size}], got shape {tuple(shape)}")
    if group_size == 1:  # veRL: mean 0, std 1
        return rewards / (1.0 + eps) if normalize_std else rewards.clone()
    mean = grouped.mean(dim=1, keepdim=True)
    centred = grouped - mean
    if normalize_std:
        centred = centred / (grouped.std(dim=1, keepdim=True, unbiased=True) + eps)
    return centred.reshape(shape)
