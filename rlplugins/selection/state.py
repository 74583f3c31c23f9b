"""State-dict checks shared by the selectors: tensor shapes/dtypes and a fingerprint of what determines selections."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import torch


def check_tensor_like(name: str, value: object, like: torch.Tensor) -> None:
    """``value`` must be a tensor with the shape and dtype of ``like`` (the freshly built selector's field)."""
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"state_dict field {name} must be a torch.Tensor, got {type(value).__name__}")
    if value.shape != like.shape or value.dtype != like.dtype:
        raise ValueError(
            f"state_dict field {name} has shape {tuple(value.shape)} and dtype {value.dtype}, expected "
            f"{tuple(like.shape)} and {like.dtype} (saved by a different selector or corrupted)"
        )


def fingerprint(identity: dict[str, Any], tensors: dict[str, torch.Tensor | None]) -> str:
    """sha256 of the constructor identity and of the tensors that determine the selections (shard, tiers,
    difficulty): a state saved with another ``difficulty`` is refused even when the tiers match."""
    h = hashlib.sha256(json.dumps(identity, sort_keys=True, default=repr).encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(key.encode())
        if t is None:
            h.update(b"<none>")
        else:
            t = t.detach().to("cpu").contiguous()
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def config_identity(config: object) -> dict[str, Any]:
    return dataclasses.asdict(config)  # type: ignore[arg-type]
