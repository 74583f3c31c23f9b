"""Shared helpers for the kernels: input checks, launch configurations, row addressing.

Nothing here imports the rlplugins core or any framework: the kernels take tensors and plain numbers. Input
checks on tensors (labels, masks, temperature, overlap, non-finite rows) come from ``rlplugins.tensor_checks``, a
torch-only leaf shared with the core, so both layers accept and reject exactly the same inputs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from rlplugins._env import env
from rlplugins.tensor_checks import (  # noqa: F401  (re-exported for the kernel modules)
    LOGIT_DTYPES,
    as_bool_mask,
    check_finite_rows,
    check_labels,
    check_logits,
    check_no_overlap,
    check_temperature,
    require_float,
    require_like,
    require_tensor,
)

#: Largest block the CPU interpreter uses: its cost grows with the number of block iterations, not their width.
_INTERPRETER_MAX_BLOCK = 16384


def interpreter_active() -> bool:
    """True when Triton runs kernels with its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@dataclass(frozen=True)
class LaunchConfig:
    block: int
    num_warps: int
    num_stages: int


def _env_int(name: str) -> int | None:
    """``RLPLUGINS_<name>`` as an int (the deprecated ``RLP_<name>`` is still read), or None when unset."""
    value = env(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise ValueError(f"environment variable RLPLUGINS_{name} must be an integer, got {value!r}") from exc


def _check_block(block: int, what: str) -> int:
    if block < 16 or block & (block - 1):
        raise ValueError(f"{what} must be a power of two >= 16, got {block}")
    return block


def vocab_launch_config(vocab: int, kind: str, block_size: int | None = None) -> LaunchConfig:
    """Block over the vocabulary and warp count for the row kernels.

    ``kind`` is ``"fwd"`` (one program streams a whole row: online softmax) or ``"bwd"`` (one program per
    (row, vocab block): gradient). The GPU defaults are untuned starting points in the range the peers use
    (flash-attn CE: blocks up to 16K forward / 4K backward; Liger GRPO: 2K / 4K); override them with
    ``block_size`` or the environment variables ``RLPLUGINS_{FWD,BWD}_{BLOCK,WARPS,STAGES}`` (see benchmarks/kernels.py
    ``--tune``). Under the interpreter a block covers the whole row when it can, because the interpreter's cost
    is proportional to the number of block iterations.
    """
    if kind not in ("fwd", "bwd"):
        raise ValueError(f"kind must be 'fwd' or 'bwd', got {kind!r}")
    prefix = f"{kind.upper()}_"
    if block_size is None:
        block_size = _env_int(prefix + "BLOCK")
    if block_size is not None:
        block = _check_block(int(block_size), "block_size")
    elif interpreter_active():
        block = min(triton.next_power_of_2(vocab), _INTERPRETER_MAX_BLOCK)
    else:
        block = min(triton.next_power_of_2(vocab), 4096)
    block = max(block, 16)
    warps = _env_int(prefix + "WARPS")
    if warps is None:
        if kind == "fwd":
            warps = 4 if block <= 2048 else 8
        else:
            warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    stages = _env_int(prefix + "STAGES")
    if stages is None:
        stages = 2 if kind == "fwd" else 1
    return LaunchConfig(block=block, num_warps=warps, num_stages=stages)


def row_layout(logits: torch.Tensor) -> tuple[torch.Tensor, int, int, int, int]:
    """Return (logits with unit vocab stride, rows, inner, stride_outer, stride_inner).

    Row ``r`` starts at ``(r // inner) * stride_outer + (r % inner) * stride_inner``, so a strided [B, T, V]
    view (for instance HF logits ``[:, :-1]``) is read without a copy. Only a non-unit vocab stride forces one.
    """
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    if logits.dim() == 2:
        rows, inner = logits.shape[0], max(logits.shape[0], 1)
        return logits, rows, inner, 0, logits.stride(0)
    b, t, _ = logits.shape
    return logits, b * t, max(t, 1), logits.stride(0), logits.stride(1)


def as_float_rows(x: torch.Tensor | None, rows: int, device: torch.device) -> torch.Tensor:
    """Per-row float32 contiguous tensor (zeros for None), for upstream gradients and per-token inputs."""
    if x is None:
        return torch.zeros(rows, dtype=torch.float32, device=device)
    return x.reshape(-1).to(torch.float32).contiguous()
