"""CISPO (MiniMax-M1, arXiv 2506.13585): clipped importance weight, detached, on a REINFORCE term.

    c = sg(clip(r, 1 - eps_low, 1 + eps_high))
    l = -c A logp              dl/dlogp = -c A     (no token loses its gradient entirely)
"""

from __future__ import annotations

import torch

from .config import CispoConfig
from .registry import register_policy_loss
from .token_loss import TokenLoss, clamped_log_ratio


@register_policy_loss(
    "cispo",
    config_cls=CispoConfig, finite_safe=True, analytic_grad=True,
    formula="-sg(clip(r, 1-eps_low, 1+eps_high)) A logp",
    description="CISPO (arXiv 2506.13585): clipped detached IS weight times A logp",
)
def cispo_token_loss(log_prob, old_log_prob, advantages, config: CispoConfig, **_: object) -> TokenLoss:
    with torch.no_grad():
        log_ratio, _ = clamped_log_ratio(log_prob, old_log_prob)
        ratio = torch.exp(log_ratio)
        weight = torch.clamp(ratio, 1 - config.eps_low, 1 + config.eps_high)
        grad = -weight * advantages
        gate = weight / ratio
        clipped = ratio != weight
    loss = grad * log_prob  # (-c A) logp
    return TokenLoss(loss=loss, grad_logp=grad, gate=gate, ratio=ratio, clipped=clipped, vjp=lambda up: up * grad)
