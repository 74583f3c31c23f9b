"""Plain policy gradient: l = -A logp, dl/dlogp = -A (no ratio, no gate)."""

from __future__ import annotations

import torch

from .config import PgConfig
from .registry import register_policy_loss
from .token_loss import TokenLoss, clamped_log_ratio


@register_policy_loss("pg", config_cls=PgConfig, finite_safe=True, analytic_grad=True, formula="-A logp", description="vanilla policy gradient (REINFORCE)")
def pg_token_loss(log_prob, old_log_prob, advantages, config: PgConfig, **_: object) -> TokenLoss:
    neg_adv = -advantages
    loss = neg_adv * log_prob
    with torch.no_grad():
        log_ratio, _ = clamped_log_ratio(log_prob, old_log_prob)
        ratio = torch.exp(log_ratio)
        grad = neg_adv.expand_as(ratio).clone()
    return TokenLoss(loss=loss, grad_logp=grad, gate=torch.ones_like(ratio), ratio=ratio, vjp=lambda up: up * neg_adv)
