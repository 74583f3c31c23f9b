"""PPO clipped surrogate with asymmetric bounds and optional dual clip; clip-higher and dual-clip presets.

    l = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))          (Schulman et al. 2017; DAPO clip-higher)
    l = min(l, -c A) for A < 0 when dual_clip = c                   (Ye et al., arXiv 1912.09729)
    dl/dlogp = -A r where the unclipped branch is active, else 0

The operations mirror veRL's ``vanilla`` loss (log-ratio clamped to +-20) so that values match bit for bit.
"""

from __future__ import annotations

import torch

from .config import ClipHigherConfig, DualClipConfig, PpoClipConfig
from .registry import register_policy_loss
from .token_loss import TokenLoss, apply_dual_clip, clamped_log_ratio, masked_by

_FORMULA = "max(-A r, -A clip(r, 1-eps_low, 1+eps_high)); A<0: min(., -c A) with dual_clip c"


def _ppo_clip(log_prob, old_log_prob, advantages, config: PpoClipConfig, **_: object) -> TokenLoss:
    log_ratio, passes = clamped_log_ratio(log_prob, old_log_prob)
    ratio = torch.exp(log_ratio)
    neg_adv = -advantages
    unclipped_loss = neg_adv * ratio
    clipped_loss = neg_adv * torch.clamp(ratio, 1 - config.eps_low, 1 + config.eps_high)
    with torch.no_grad():
        clipped = clipped_loss > unclipped_loss
    # = max(unclipped, clipped) in value; where() routes the whole gradient through the unclipped term at a tie
    # (inside the clip range both terms are -A r, and maximum's backward would split it in two equal halves that
    # sum to the same bits), and its backward is a single select instead of maximum's masks.
    loss = torch.where(clipped, clipped_loss, unclipped_loss)
    with torch.no_grad():
        r = ratio.detach()
        through = passes & ~clipped
        grad = torch.where(through, unclipped_loss.detach(), 0.0)
        gate = (~clipped).to(r.dtype)

    def vjp(up: torch.Tensor) -> torch.Tensor:
        # where()'s backward sends up to the unclipped term (-A r: mul by -A, exp's r, clamp's mask); the clipped
        # term is selected only outside [1 - eps_low, 1 + eps_high], where clamp's backward gives 0.
        return masked_by(up * neg_adv * r, through)

    loss, grad, gate, hit, vjp = apply_dual_clip(loss, advantages, grad, gate, config.dual_clip, vjp)
    return TokenLoss(loss=loss, grad_logp=grad, gate=gate, ratio=r, clipped=clipped, clipped_lower=hit, vjp=vjp)


register_policy_loss(
    "ppo_clip", config_cls=PpoClipConfig, finite_safe=True, analytic_grad=True, formula=_FORMULA, description="PPO/GRPO clipped surrogate"
)(_ppo_clip)
register_policy_loss(
    "clip_higher", config_cls=ClipHigherConfig, finite_safe=True, analytic_grad=True, formula=_FORMULA, description="DAPO clip-higher (eps_high=0.28)"
)(_ppo_clip)
register_policy_loss(
    "dual_clip", config_cls=DualClipConfig, finite_safe=True, analytic_grad=True, formula=_FORMULA, description="dual-clip PPO (c=3), veRL's vanilla"
)(_ppo_clip)
