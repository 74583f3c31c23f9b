"""Unclipped importance-weighted surrogate: l = -A r, dl/dlogp = -A r (log-ratio clamped to +-20).

The control for every gate: what MASPO, PPO clip and SAPO reduce to when their gate is 1 everywhere
(MASPO with sigma -> infinity, PPO with eps -> infinity).
"""

from __future__ import annotations

import torch

from .config import UnclippedConfig
from .registry import register_policy_loss
from .token_loss import TokenLoss, clamped_log_ratio, masked_by


@register_policy_loss(
    "unclipped",
    config_cls=UnclippedConfig, finite_safe=True, analytic_grad=True,
    formula="-A r",
    description="unclipped importance-weighted surrogate (the no-gate control)",
)
def unclipped_token_loss(log_prob, old_log_prob, advantages, config: UnclippedConfig, **_: object) -> TokenLoss:
    log_ratio, passes = clamped_log_ratio(log_prob, old_log_prob)
    ratio = torch.exp(log_ratio)
    neg_adv = -advantages
    loss = neg_adv * ratio
    with torch.no_grad():
        r = ratio.detach()
        grad = torch.where(passes, neg_adv * r, 0.0)
    return TokenLoss(loss=loss, grad_logp=grad, gate=torch.ones_like(r), ratio=r,
                     vjp=lambda up: masked_by(up * neg_adv * r, passes))
