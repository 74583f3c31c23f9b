"""Per-token gated policy loss on [N] tensors: one elementwise kernel for the whole gate family.

    loss_t, g_t = gate(logp_t, logp_old_t, A_t)        g_t = d loss_t / d logp_t

The forward stores both; the backward is ``dlogp = upstream * g`` (no recomputation). The gate arrives as a
``tl.constexpr`` function (see gates.py), so the kernel body is the same for every loss.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from ._utils import as_bool_mask, interpreter_active, require_float, require_like, require_tensor
from .gates import get_gate

_BLOCK = 1024


@triton.jit
def _gated_token_loss_kernel(
    LOGP, OLD, ADV, MASK, LOSS, GRAD, n,
    P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11,
    GATE: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inb = offs < n
    logp = tl.load(LOGP + offs, mask=inb, other=0.0).to(tl.float32)
    old = tl.load(OLD + offs, mask=inb, other=0.0).to(tl.float32)
    adv = tl.load(ADV + offs, mask=inb, other=0.0).to(tl.float32)
    if HAS_MASK:
        # As the core: masked positions are evaluated on zeros, and their outputs forced to 0, so that
        # whatever they held (NaN, garbage) reaches neither the loss nor the gradient.
        valid = tl.load(MASK + offs, mask=inb, other=0) != 0
        logp = tl.where(valid, logp, 0.0)
        old = tl.where(valid, old, 0.0)
        adv = tl.where(valid, adv, 0.0)
    loss, grad = GATE(logp, old, adv, P0, P1, P2, P3, P4, P5, P6, P7, P8, P9, P10, P11)
    if HAS_MASK:
        loss = tl.where(valid, loss, 0.0)
        grad = tl.where(valid, grad, 0.0)
    tl.store(LOSS + offs, loss, mask=inb)
    tl.store(GRAD + offs, grad, mask=inb)


def launch_gated_token_loss(
    logp: torch.Tensor,
    old: torch.Tensor,
    adv: torch.Tensor,
    mask: torch.Tensor | None,
    gate_fn: Any,
    params: tuple[float, ...],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat contiguous inputs -> float32 (loss, grad)."""
    n = logp.numel()
    loss = torch.empty(n, dtype=torch.float32, device=logp.device)
    grad = torch.empty(n, dtype=torch.float32, device=logp.device)
    if n:
        block = min(_BLOCK, triton.next_power_of_2(n)) if interpreter_active() else _BLOCK
        block = max(block, 16)
        _gated_token_loss_kernel[(triton.cdiv(n, block),)](
            logp, old, adv, mask if mask is not None else logp, loss, grad, n, *params,
            GATE=gate_fn, HAS_MASK=mask is not None, BLOCK=block, num_warps=4,
        )
    return loss, grad


class GatedTokenLossFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logp, old, adv, mask, gate_fn, params):
        shape = logp.shape
        loss, grad = launch_gated_token_loss(
            _flat_f32(logp), _flat_f32(old), _flat_f32(adv), None if mask is None else _flat_mask(mask), gate_fn, params
        )
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(grad)
        return loss.view(shape), grad.view(shape)

    @staticmethod
    def backward(ctx, dloss, _dgrad):
        (grad,) = ctx.saved_tensors
        dlogp = None if dloss is None else dloss * grad.view(dloss.shape)
        return dlogp, None, None, None, None, None


def _flat_f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().reshape(-1).to(torch.float32).contiguous()


def _flat_mask(mask: torch.Tensor) -> torch.Tensor:
    return mask.reshape(-1).ne(0).to(torch.uint8).contiguous()


def gated_token_loss(
    log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    loss: str = "maspo",
    config: Any = None,
    *,
    response_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token loss and ``d loss / d log_prob`` of the gated policy loss ``loss`` (elementwise, Triton).

    ``l_t = gate(logp_t, logp_old_t, A_t)``, e.g. MASPO ``-A sg(w) r`` with ``dl/dlogp = -A w r``; the
    specification is the core's ``rlplugins.losses.token_policy_loss``.

    Args:
        log_prob, old_log_prob, advantages: float tensors of one shape, on one device. Only ``log_prob``
            receives a gradient: the old log-probs and advantages are constants, as in the core.
        loss: a name with a Triton gate (``rlplugins.kernels.list_gates()``): maspo, ppo_clip, clip_higher,
            dual_clip, sapo, cispo, pg, unclipped.
        config: the loss's hyper-parameters: the core's config dataclass (e.g. ``MaspoConfig()``, or
            ``rlplugins.losses.make_config(loss, mapping)``), re-validated on every call; may be None only for
            losses without parameters (pg, unclipped).
        response_mask: optional bool or 0/1 mask of the same shape (other values raise); masked positions get
            exactly zero loss and gradient.

    Returns:
        ``(loss, grad_logp)``, float32, shape of ``log_prob``; ``loss`` is differentiable w.r.t. ``log_prob``.
    """
    spec = get_gate(loss)
    params = spec.params(config)
    lp = require_tensor("log_prob", log_prob)
    require_float("log_prob", lp)
    for name, t in (("old_log_prob", old_log_prob), ("advantages", advantages)):
        require_tensor(name, t)
        require_float(name, t)
        require_like(name, t, "log_prob", lp)
    if response_mask is not None:
        require_like("response_mask", require_tensor("response_mask", response_mask), "log_prob", lp)
        response_mask = as_bool_mask("response_mask", response_mask)
    if log_prob.device.type == "cpu" and not interpreter_active():
        raise ValueError("gated_token_loss needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); "
                         "on CPU use rlplugins.losses.token_policy_loss")
    return GatedTokenLossFunction.apply(log_prob, old_log_prob, advantages, response_mask, spec.fn, params)
