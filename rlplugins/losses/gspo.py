"""GSPO: Group Sequence Policy Optimization (Qwen, arXiv 2507.18071), token-level straight-through form.

    s_i  = exp(mean_t (logp - logp_old))                       (sequence ratio over valid tokens)
    s_it = sg(s_i) exp(logp_t - sg(logp_t)),  log s_it clamped <= log_ratio_max
    l    = max(-A s_it, -A clip(s_it, 1 - eps_low, 1 + eps_high))
    dl/dlogp_t = -A s_i when unclipped, else 0

As veRL's ``gspo`` (which clamps the log sequence ratio at 10); the clip range is GSPO's (3e-4 / 4e-4).
"""

from __future__ import annotations

import torch

from .config import GspoConfig
from .registry import register_policy_loss
from .token_loss import TokenLoss, masked_by


@register_policy_loss(
    "gspo",
    config_cls=GspoConfig, finite_safe=True, analytic_grad=True,
    formula="max(-A s, -A clip(s, 1-eps_low, 1+eps_high)), s = sg(exp(mean_t log r)) exp(logp - sg(logp))",
    description="GSPO (arXiv 2507.18071): sequence-level ratio, token straight-through",
    elementwise=False,
)
def gspo_token_loss(
    log_prob, old_log_prob, advantages, config: GspoConfig, response_mask: torch.Tensor | None = None, **_: object
) -> TokenLoss:
    if response_mask is None:
        raise ValueError("gspo needs response_mask: its ratio is a mean over each sequence's valid tokens")
    if log_prob.dim() != 2:
        raise ValueError(f"gspo needs [batch, response_len] tensors, got log_prob of shape {tuple(log_prob.shape)}")
    mask = response_mask.to(log_prob.dtype)
    with torch.no_grad():
        delta = (log_prob - old_log_prob) * mask
        seq_log_ratio = delta.sum(-1) / mask.sum(-1).clamp(min=1)
    log_s = log_prob - log_prob.detach() + seq_log_ratio.unsqueeze(-1)
    passes = (log_s <= config.log_ratio_max).detach()
    log_s = torch.clamp(log_s, max=config.log_ratio_max)
    s = torch.exp(log_s)
    neg_adv = -advantages
    unclipped_loss = neg_adv * s
    clipped_loss = neg_adv * torch.clamp(s, 1 - config.eps_low, 1 + config.eps_high)
    loss = torch.maximum(unclipped_loss, clipped_loss)
    with torch.no_grad():
        clipped = clipped_loss > unclipped_loss
        sd = s.detach()
        through = passes & ~clipped
        grad = torch.where(through, neg_adv * sd, 0.0)
        gate = (~clipped).to(sd.dtype)

    def vjp(up: torch.Tensor) -> torch.Tensor:
        # maximum()'s backward: all of up to the larger term, half to each at a tie (inside the clip range, where
        # both halves times -A sum to up * -A exactly); the clipped term is larger only outside the range, where
        # clamp's backward gives 0. Then exp's s and clamp's mask.
        return masked_by(up * neg_adv * sd, through)

    return TokenLoss(loss=loss, grad_logp=grad, gate=gate, ratio=sd, clipped=clipped, vjp=vjp)
