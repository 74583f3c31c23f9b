"""Input validation shared by the selection modules: errors name the argument, its shape/dtype and the expectation."""

from __future__ import annotations

import torch


def check_float_vector(name: str, x: object, length: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D [num_pairs], got shape {tuple(x.shape)}")
    if length is not None and x.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},) to match the other inputs, got {tuple(x.shape)}")
    return x


def check_logps(
    pc: object, pr: object, rc: object, rr: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The four sequence log-prob vectors, validated (same length, floating) and returned as CPU float64."""
    names = ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    first = check_float_vector(names[0], pc)
    n = first.shape[0]
    out = []
    for name, x in zip(names, (pc, pr, rc, rr)):
        t = check_float_vector(name, x, n)
        if t.requires_grad:
            t = t.detach()
        if t.dtype != torch.float64 or t.device.type != "cpu":
            t = t.to(device="cpu", dtype=torch.float64)
        out.append(t)
    return out[0], out[1], out[2], out[3]


def check_index_vector(name: str, x: object, num_pairs: int) -> torch.Tensor:
    """A 1-D integer index tensor with unique entries in [0, num_pairs), returned as CPU int64."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 indices, got {type(x).__name__}")
    if x.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(x.shape)}")
    idx = x.detach() if x.requires_grad else x
    if idx.dtype != torch.int64 or idx.device.type != "cpu":
        idx = idx.to(device="cpu", dtype=torch.int64)
    if idx.numel() == 0:
        return idx
    lo, hi = torch.aminmax(idx)
    lo, hi = int(lo), int(hi)
    if lo < 0 or hi >= num_pairs:
        raise ValueError(f"{name} must lie in [0, {num_pairs}), got values in [{lo}, {hi}]")
    if torch.unique(idx).numel() != idx.numel():
        raise ValueError(f"{name} must not contain duplicate indices")
    return idx
