"""Tensor-level input checks shared by the core's entry points and the kernels' public entry points.

This module imports torch only, never the rest of rlplugins, and knows nothing of configs: it sits below both
layers of the arrows (core -> kernels -> torch/triton), so the torch reference and the Triton kernels reject
exactly the same inputs with the same messages, from one copy of the code. (``rlplugins.kernels`` lives inside
the ``rlplugins`` namespace, so importing this leaf adds no dependency the kernels did not already have.)

Every check raises ``TypeError`` (wrong type/dtype) or ``ValueError`` (wrong shape, device or values) naming the
argument, what it got and what was expected.
"""

from __future__ import annotations

import math
import numbers

import torch

#: Logit dtypes every logits path reads (computation is always float32).
LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

#: Label dtypes accepted everywhere: a narrower integer type cannot hold ``ignore_index=-100`` exactly
#: (``torch.full_like(uint8, -100)`` wraps to 156, a valid token id).
LABEL_DTYPES = (torch.int64, torch.int32)

#: Smallest accepted sampling temperature. 1/T must be finite in float32 (T > ~3e-39) for the kernels; the
#: margin keeps (z - max z) / T representable for any logit gap a float32 model produces.
TEMPERATURE_MIN = 1e-6


def compiling() -> bool:
    """True while torch.compile (dynamo) traces: checks then run as tensor ops without a host sync."""
    return torch.compiler.is_compiling()


def assert_none(flags: torch.Tensor, message: str) -> None:
    """The traced form of ``if flags.any(): raise``: ``torch._assert_async`` raises RuntimeError(message) when the
    compiled code runs (no graph break, no host sync; the message cannot carry counts or indices)."""
    torch._assert_async(torch.logical_not(flags.any()), message)


def describe(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)}, dtype {t.dtype}, device {t.device}"


def require_tensor(name: str, value: object, *, allow_meta: bool = False) -> torch.Tensor:
    """``value`` as a tensor with data (meta tensors hold none: every later check would crash on them).
    ``allow_meta``: for a tensor whose device is compared with a reference's next (the device message is clearer)."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if value.is_meta and not allow_meta:
        raise ValueError(f"{name} is a meta tensor ({describe(value)}) and holds no data; pass a materialised tensor")
    return value


def require_float(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {describe(t)}")


def require_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")
    if t.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {tuple(ref.shape)} (no broadcasting), got {describe(t)}")


def first_index(flags: torch.Tensor) -> tuple[int, ...]:
    idx = torch.nonzero(flags, as_tuple=False)[0]
    return tuple(int(i) for i in idx)


def as_bool_mask(name: str, mask: torch.Tensor) -> torch.Tensor:
    """Accept bool, or a 0/1 integer/float mask (OpenRLHF passes float/long masks); reject anything else
    (2, -1, 0.5 and NaN are not silently read as "valid")."""
    require_tensor(name, mask)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_complex():
        raise TypeError(f"{name} must be bool or 0/1 numeric, got {describe(mask)}")
    bad = (mask != 0) & (mask != 1)
    if compiling():
        assert_none(bad, f"{name} must contain only 0 and 1 (or be bool)")
        return mask != 0
    if bool(bad.any()):
        raise ValueError(f"{name} must contain only 0 and 1 (or be bool); found {int(bad.sum())} other value(s), "
                         f"first at index {first_index(bad)} ({describe(mask)})")
    return mask != 0


def check_logits(logits: object, name: str = "logits") -> torch.Tensor:
    """A float32/bf16/fp16 tensor of shape [N, V] or [B, T, V] with V >= 1."""
    logits = require_tensor(name, logits)
    if logits.dtype not in LOGIT_DTYPES:
        raise TypeError(f"{name} must be float32, bfloat16 or float16, got {logits.dtype}")
    if logits.dim() not in (2, 3):
        raise ValueError(f"{name} must have shape [N, V] or [B, T, V], got {tuple(logits.shape)}")
    if logits.shape[-1] < 1:
        raise ValueError(f"{name} must have a non-empty vocabulary dimension, got {tuple(logits.shape)}")
    return logits


def check_labels(
    labels: object,
    logits: torch.Tensor,
    ignore_index: int,
    *,
    valid: torch.Tensor | None = None,
    name: str = "labels",
    mask_name: str = "response_mask",
) -> torch.Tensor:
    """Check ``labels`` against ``logits`` [..., V]; return them flattened to int64 [rows].

    Without ``valid``: every label lies in ``[0, V)`` or equals ``ignore_index`` (a row to skip). With a bool
    ``valid`` mask: labels are read only where it is set, and there they must lie in ``[0, V)``; a label equal to
    ``ignore_index`` at a valid position is an error (it would be read as log p = 0 and trained on). One sync.
    """
    labels = require_tensor(name, labels, allow_meta=True)  # a meta tensor fails the device comparison below
    if labels.dtype not in LABEL_DTYPES:
        why = ""
        if not (labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool):
            why = f" (narrower integer types cannot hold ignore_index={ignore_index} exactly)"
        raise TypeError(f"{name} must be an int64 or int32 tensor, got {describe(labels)}{why}")
    if labels.device != logits.device:
        raise ValueError(f"{name} is on {labels.device} but logits is on {logits.device}")
    if tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"{name} must have shape {tuple(logits.shape[:-1])} (logits.shape[:-1]), got {tuple(labels.shape)}")
    flat = labels.reshape(-1).to(torch.int64)
    if not flat.numel():
        return flat.contiguous()
    vocab = logits.shape[-1]
    out_of_range = (flat < 0) | (flat >= vocab)
    if valid is None:
        bad_range = out_of_range & (flat != ignore_index)
        if compiling():
            assert_none(bad_range, f"{name} must lie in [0, {vocab}) or equal ignore_index={ignore_index}")
            return flat.contiguous()
        if bool(bad_range.any()):
            raise ValueError(f"{name} must lie in [0, {vocab}) or equal ignore_index={ignore_index}; found e.g. "
                             f"{flat[bad_range][:5].tolist()}, first at flat index {first_index(bad_range)[0]}")
        return flat.contiguous()
    v = valid.reshape(-1)
    bad_ignored = v & (flat == ignore_index)
    bad_range = v & out_of_range & (flat != ignore_index)
    if compiling():
        assert_none(bad_ignored, f"{name} equals ignore_index={ignore_index} at a position that {mask_name} marks valid")
        assert_none(bad_range, f"{name} must lie in [0, {vocab}) at valid ({mask_name}) positions")
        return flat.contiguous()
    n_ignored, n_range = torch.stack([bad_ignored.sum(), bad_range.sum()]).tolist()
    shape = tuple(labels.shape)
    if n_ignored:
        at = _unflatten(first_index(bad_ignored)[0], shape)
        raise ValueError(f"{name} equals ignore_index={ignore_index} at {n_ignored} position(s) that {mask_name} marks "
                         f"valid, first at index {at}: mask those positions out or give them a real token id")
    if n_range:
        at = _unflatten(first_index(bad_range)[0], shape)
        raise ValueError(f"{name} must lie in [0, {vocab}) at valid ({mask_name}) positions; {n_range} do not, e.g. "
                         f"{flat[bad_range][:5].tolist()}, first at index {at}")
    return flat.contiguous()


def _unflatten(i: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    out = []
    for size in reversed(shape):
        out.append(i % size)
        i //= size
    return tuple(reversed(out))


def check_temperature(temperature: object) -> float:
    """The sampling temperature as a float in ``[TEMPERATURE_MIN, inf)``: one rule for every path."""
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise TypeError(f"temperature must be a real number (e.g. 1.0), got {type(temperature).__name__} {temperature!r}")
    try:
        value = float(temperature)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value < TEMPERATURE_MIN:
        raise ValueError(f"temperature must be a finite number >= {TEMPERATURE_MIN:g}, got {temperature!r}")
    return value


def check_no_overlap(name: str, t: torch.Tensor) -> None:
    """Raise unless every element of ``t`` has its own memory (an in-place gradient would otherwise write
    several rows' gradients into one location: expanded/stride-0 or as_strided views)."""
    dims = sorted((stride, size) for stride, size in zip(t.stride(), t.shape) if size > 1)
    span = 1
    for stride, size in dims:
        if stride < span:
            raise ValueError(f"{name} has overlapping memory (sizes {tuple(t.shape)}, strides {tuple(t.stride())}, "
                             f"e.g. an expand()ed view): inplace_backward=True would write several gradients into "
                             f"one element; pass inplace_backward=False or a tensor that owns its elements")
        span = stride * size


def check_finite_rows(
    logp: torch.Tensor, entropy: torch.Tensor | None, row_used: torch.Tensor | None, *, name: str = "logits"
) -> None:
    """Raise if a used row produced a non-finite log-prob or entropy (one sync).

    Documented behaviour of every logits path: a used row whose logits hold NaN or +inf, are all -inf, or give
    the label probability 0 (its logit -inf) raises ValueError naming the first such row; it never returns NaN/-inf.
    """
    bad = ~torch.isfinite(logp)
    if entropy is not None:
        bad |= ~torch.isfinite(entropy)
    if row_used is not None:
        bad &= row_used
    if compiling():
        assert_none(bad, f"{name} give a non-finite log-prob/entropy at a used row: its logits contain NaN or +inf, "
                         f"are all -inf, or give its label probability 0")
        return
    if bad.numel() and bool(bad.any()):
        at = first_index(bad)
        raise ValueError(
            f"{name} give a non-finite log-prob/entropy at {int(bad.sum())} used row(s), first at index {at} "
            f"(log-prob {logp[at].item()}): that row's logits contain NaN or +inf, are all -inf, or give its label "
            f"probability 0"
        )
