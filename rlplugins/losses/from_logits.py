"""Policy losses and log-probabilities straight from logits, with a backend switch.

    out = policy_loss_from_logits("maspo", logits=..., labels=..., old_log_prob=..., advantages=...,
                                  response_mask=..., backend="auto")      # out.loss, out.metrics, ...

Backends (none materialises a float32 [tokens x vocab] log-softmax):

- ``"triton"``: the kernels of ``rlplugins.kernels``. Losses with a Triton gate (maspo, ppo_clip,
  clip_higher, dual_clip, sapo, cispo, pg, unclipped) run fully fused (``fused_policy_loss``); the others (gspo) take
  ``token_logprobs`` and this package's torch loss (``compute_policy_loss``). ``fused=False`` forces the latter.
- ``"torch"``: ``chunked_token_logprobs`` (a few rows at a time) then ``compute_policy_loss``.
- ``"auto"``: ``"triton"`` for CUDA tensors when Triton is installed, otherwise ``"torch"``.

The gate math is defined once, in this package's per-token losses; the Triton gates are transcriptions
tested elementwise against them (tests/kernels/test_gates.py). Aggregation is always the core's ``agg_loss`` and
metrics always come from the core's per-token terms on the (detached) log-probs, so they mean the same thing on
every backend; each input is validated once on each path.
Triton is imported only when the Triton backend is used.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Mapping, NamedTuple

import torch

from .aggregation import agg_loss
from .api import check_global_counts, compute_policy_loss, normalize_global_batch_info, policy_metrics
from .checks import check_rollout_weights
from ..tensor_checks import as_bool_mask, check_labels, check_temperature, compiling, require_tensor
from .chunked_logprobs import chunked_token_logprobs
from .config import PolicyLossConfig
from .registry import get_policy_loss

BACKENDS = ("auto", "torch", "triton")


_TRITON_FOUND = importlib.util.find_spec("triton") is not None  # once, at import: a constant inside torch.compile


def triton_available() -> bool:
    """True when ``triton`` is installed (checked without importing it)."""
    return _TRITON_FOUND


def resolve_backend(backend: str, device: torch.device) -> str:
    """Map ``"auto"`` to a concrete backend for tensors on ``device``; check an explicit choice is usable."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton":
        if not triton_available():
            raise ValueError("backend='triton' needs the triton package (pip install 'rlplugins[triton]')")
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise ValueError(f"backend='triton' needs CUDA tensors (got {device}); use backend='torch' or 'auto' "
                             f"(or TRITON_INTERPRET=1 to run the kernels in Triton's slow CPU interpreter)")
    return backend


class LogprobsOutput(NamedTuple):
    """``log_prob``: float32, shape of ``labels`` (0 where ignored). ``entropy``: same, or None."""

    log_prob: torch.Tensor
    entropy: torch.Tensor | None


def logprobs_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    inplace_backward: bool = False,
    backend: str = "auto",
    chunk_rows: int | None = None,
) -> LogprobsOutput:
    """``logp = log_softmax(logits / T)[labels]`` (and the entropy), differentiable, never a [N, V] log-softmax.

    ``logits``: [N, V] or [B, T, V], float32/bf16/fp16. ``labels``: int64/int32, ``logits.shape[:-1]``;
    ``ignore_index`` rows give 0 and a zero gradient. ``temperature``: a real number >= 1e-6.
    ``inplace_backward`` writes the gradient into ``logits`` (do not reuse them after backward; rejected for
    logits with overlapping memory, e.g. an ``expand()``ed view). Both backends raise ValueError for a
    non-ignored row whose logits hold NaN/+inf, are all -inf, or give its label probability 0: they never
    return NaN or -inf. ``chunk_rows`` sizes the torch path's chunks.
    """
    require_tensor("logits", logits)
    chosen = resolve_backend(backend, logits.device)
    if chosen == "triton":
        from rlplugins.kernels import token_logprobs  # lazy: the core imports no Triton at import time

        out = token_logprobs(logits, labels, temperature, return_entropy, inplace_backward, ignore_index=ignore_index)
    else:
        out = chunked_token_logprobs(logits, labels, temperature, return_entropy, inplace_backward,
                                     ignore_index=ignore_index, chunk_rows=chunk_rows)
    return LogprobsOutput(*out) if return_entropy else LogprobsOutput(out, None)


class LogitsPolicyLossOutput(NamedTuple):
    """``loss``: scalar float32 (differentiable w.r.t. the logits). ``metrics``: as ``compute_policy_loss``.
    ``log_prob``: [B, T] float32, detached (0 at masked positions). ``entropy``: [B, T] float32, differentiable
    (add ``-coef * agg(entropy)`` to the loss for an entropy bonus), or None unless ``return_entropy``.
    ``path``: which implementation ran: ``"triton-fused"``, ``"triton"`` or ``"torch"``."""

    loss: torch.Tensor
    metrics: dict[str, float]
    log_prob: torch.Tensor
    entropy: torch.Tensor | None
    path: str


def policy_loss_from_logits(
    name: str,
    *,
    logits: torch.Tensor,
    labels: torch.Tensor,
    old_log_prob: torch.Tensor | None,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    loss_agg_mode: str = "token-mean",
    config: PolicyLossConfig | Mapping[str, Any] | None = None,
    temperature: float = 1.0,
    rollout_is_weights: torch.Tensor | None = None,
    global_batch_info: Mapping[str, Any] | None = None,
    return_entropy: bool = False,
    inplace_backward: bool = False,
    backend: str = "auto",
    fused: bool | None = None,
    chunk_rows: int | None = None,
) -> LogitsPolicyLossOutput:
    """Policy loss ``name`` from logits: ``compute_policy_loss(name, log_prob=log_softmax(logits/T)[labels], ...)``
    without a [B, T, V] log-softmax.

    ``logits`` [B, T, V] (float32/bf16/fp16; a strided view such as HF's ``logits[:, :-1]`` is read in place
    by both backends); ``labels``, ``old_log_prob``, ``advantages``, ``response_mask``, ``rollout_is_weights``
    [B, T] as for ``compute_policy_loss``. Labels are read only where ``response_mask`` is set.
    ``old_log_prob=None`` is the on-policy case (old = sg(logp), ratio 1). ``backend``: ``"auto"`` |
    ``"torch"`` | ``"triton"``; ``fused``: None (fused when a Triton gate exists, except inside torch.compile,
    where the fused kernel is not a custom op and the log-prob kernel is used), True (require it), False.
    """
    spec = get_policy_loss(name)
    cfg = spec.make_config(config)
    require_tensor("logits", logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [batch, response_len, vocab], got shape {tuple(logits.shape)} "
                         f"(for flat [N, V] logits use logprobs_from_logits)")
    if not isinstance(response_mask, torch.Tensor):
        raise TypeError(f"response_mask must be a torch.Tensor, got {type(response_mask).__name__}")
    if response_mask.shape != logits.shape[:-1]:
        raise ValueError(f"response_mask must have shape {tuple(logits.shape[:-1])} (logits.shape[:-1]), "
                         f"got {tuple(response_mask.shape)}")
    if response_mask.device != logits.device:
        raise ValueError(f"response_mask is on {response_mask.device} but logits is on {logits.device}")
    mask = as_bool_mask("response_mask", response_mask)
    temperature = check_temperature(temperature)
    gbi = normalize_global_batch_info(global_batch_info)
    chosen = resolve_backend(backend, logits.device)

    if chosen == "triton":
        from rlplugins import kernels  # lazy import

        # The fused kernel is not a custom op: while torch.compile traces, fused=None takes token_logprobs (one).
        use_fused = (kernels.has_gate(name) and not compiling()) if fused is None else fused
        if use_fused and not kernels.has_gate(name):
            raise ValueError(f"fused=True but loss {name!r} has no Triton gate; available: {', '.join(kernels.list_gates())}")
        if use_fused:
            # The kernel validates logits, labels (where response_mask is set), old_log_prob and advantages once and
            # returns per-token terms; the core multiplies the importance weights, aggregates and reports metrics.
            out = kernels.fused_policy_loss(
                logits, labels, old_log_prob, advantages, mask, name, cfg, temperature, return_entropy,
                inplace_backward=inplace_backward,
            )
            log_prob = out.log_prob.detach()
            old = log_prob if old_log_prob is None else old_log_prob
            loss_mat = out.token_loss
            if rollout_is_weights is not None:
                w = check_rollout_weights(rollout_is_weights, log_prob, mask, finite=True).detach().to(torch.float32)
                loss_mat = loss_mat * torch.where(mask, w, torch.zeros((), dtype=w.dtype, device=w.device))
            check_global_counts(gbi, mask, loss_agg_mode)
            loss = agg_loss(loss_mat, mask, loss_agg_mode, **gbi)
            metrics = policy_metrics(name, cfg, log_prob, old, advantages, mask)
            return LogitsPolicyLossOutput(loss, metrics, log_prob, out.entropy, "triton-fused")
    elif fused:
        raise ValueError("fused=True needs backend='triton' (or 'auto' on CUDA)")

    # Labels are read only where response_mask is set; there, -100 (ignore_index) or an out-of-range id is an error.
    check_labels(labels, logits, -100, valid=mask)
    ignore_index = -100
    safe_labels = torch.where(mask, labels, torch.full_like(labels, ignore_index))
    lp = logprobs_from_logits(
        logits, safe_labels, temperature=temperature, return_entropy=return_entropy, ignore_index=ignore_index,
        inplace_backward=inplace_backward, backend=chosen, chunk_rows=chunk_rows,
    )
    old = lp.log_prob.detach() if old_log_prob is None else old_log_prob
    loss, metrics = compute_policy_loss(
        name, log_prob=lp.log_prob, old_log_prob=old, advantages=advantages, response_mask=mask,
        loss_agg_mode=loss_agg_mode, config=cfg, rollout_is_weights=rollout_is_weights, global_batch_info=gbi,
    )
    return LogitsPolicyLossOutput(loss, metrics, lp.log_prob.detach(), lp.entropy, chosen)


__all__ = [
    "BACKENDS",
    "LogitsPolicyLossOutput",
    "LogprobsOutput",
    "chunked_token_logprobs",
    "logprobs_from_logits",
    "policy_loss_from_logits",
    "resolve_backend",
    "triton_available",
]
