"""SAPO: Soft Adaptive Policy Optimization (Qwen, arXiv 2511.20347).

    s = sigmoid(tau (r - 1)),  tau = tau_pos if A > 0 else tau_neg
    l = -(4 / tau) s A          dl/dlogp = -A 4 s (1 - s) r     (= -A at r = 1)
"""

from __future__ import annotations

import torch

from .config import SapoConfig
from .registry import register_policy_loss
from .token_loss import TokenLoss, clamped_log_ratio, masked_by


@register_policy_loss(
    "sapo",
    config_cls=SapoConfig, finite_safe=True, analytic_grad=True,
    formula="-(4/tau) sigmoid(tau (r-1)) A, tau = tau_pos if A>0 else tau_neg",
    description="SAPO (arXiv 2511.20347): bilateral sigmoid soft gate",
)
def sapo_token_loss(log_prob, old_log_prob, advantages, config: SapoConfig, **_: object) -> TokenLoss:
    log_ratio, passes = clamped_log_ratio(log_prob, old_log_prob)
    ratio = torch.exp(log_ratio)
    tau = torch.where(
        advantages > 0,
        torch.as_tensor(config.tau_pos, dtype=ratio.dtype, device=ratio.device),
        torch.as_tensor(config.tau_neg, dtype=ratio.dtype, device=ratio.device),
    )
    s = torch.sigmoid(tau * (ratio - 1.0))
    scale = 4.0 / tau
    loss = -(s * scale) * advantages
    with torch.no_grad():
        r = ratio.detach()
        sd = s.detach()
        gate = 4.0 * sd * (1.0 - sd)
        grad = torch.where(passes, -advantages * gate * r, 0.0)

    def vjp(up: torch.Tensor) -> torch.Tensor:
        # autograd's order: mul by A, neg, mul by 4/tau, sigmoid's (1 - s) s, mul by tau, exp's r, clamp's mask
        return masked_by((-(up * advantages)) * scale * (1.0 - sd) * sd * tau * r, passes)

    return TokenLoss(loss=loss, grad_logp=grad, gate=gate, ratio=r, vjp=vjp)
