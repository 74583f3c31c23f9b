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
from .token_loss import TokenLoss, apply_dual_clip, clamped_log_ratio

_FORMULA = "max(-A r, -A clip(r, 1-eps_low, 1+eps_high)); A<0: min(., -c A) with dual_clip c"


def _ppo_clip(log_prob, old_log_prob, advantages, config: PpoClipConfig, **_: object) -> TokenLoss:
    log_ratio, passes = clamped_log_ratio(log_prob, old_log_prob)
    ratio = torch.exp(log_ratio)
    unclipped_loss = -advantages * ratio
    clipped_loss = -advantages * torch.clamp(ratio, 1 - config.eps_low, 1 + config.eps_high)
    loss = torch.maximum(unclipped_loss, clipped_loss)
    with torch.no_grad():
        clipped = clipped_loss > unclipped_loss
        r = ratio.detach()
        active = passes & ~clipped
        grad = torch.where(active, -advantages * r, torch.zeros_like(r))
        gate = (~clipped).to(r.dtype)
    loss, grad, gate, hit = apply_dual_clip(loss, advantages, grad, gate, config.dual_clip)
    return TokenLoss(loss=loss, grad_logp=grad, gate=gate, ratio=r, clipped=clipped, clipped_lower=hit)


register_policy_loss(
    "ppo_clip", config_cls=PpoClipConfig, formula=_FORMULA, description="PPO/GRPO clipped surrogate"
)(_ppo_clip)
register_policy_loss(
    "clip_higher", config_cls=ClipHigherConfig, formula=_FORMULA, description="DAPO clip-higher (eps_high=0.28)"
)(_ppo_clip)
register_policy_loss(
    "dual_clip", config_cls=DualClipConfig, formula=_FORMULA, description="dual-clip PPO (c=3), veRL's vanilla"
)(_ppo_clip)

ppo_clip_token_loss = _ppo_clip
