"""MASPO: Mass-Adaptive Soft Policy Optimization (Fu et al., arXiv 2602.17550).

Per token, with rho = exp(clamp(logp - logp_old, -20, 20)) and pi_old = exp(logp_old):

    M      = clamp(sigma_base * pi_old^-alpha, sigma_base, sigma_high)          (mass-adaptive width)
    k_pos  = clamp(1 + beta_pos * A, adv_low, adv_high)                          (risk control, A > 0)
    k_neg  = clamp(1 / (1 - beta_neg * A), adv_low, adv_high)                    (risk control, A < 0)
    w_+/-  = exp(-(sg(rho) - 1)^2 / (2 (M k_+/-)^2))
    l      = -A * w_+ * rho   if A > 0 and rho > 1
             -A * w_- * rho   if A < 0 and rho < 1
             -A * rho         otherwise                   dl/dlogp = -A * w * rho

This is the official implementation (github.com/VenomRose-Juri/MASPO-RL, core_algos.py, ratio_mode=maspo);
``variant="paper"`` drops the code-only clamps (M and k unbounded, no +-20 log-ratio clamp) and keeps only
finiteness guards.
"""

from __future__ import annotations

import math

import torch

from .config import MaspoConfig
from .registry import register_policy_loss
from .token_loss import LOG_RATIO_CLAMP, TokenLoss, apply_dual_clip, clamped_log_ratio

# Finiteness guards of the paper variant: e^50 * 1e4 stays far below the float32 maximum (~3.4e38),
# and sigma <= e^60 keeps (rho - 1) / sigma finite. Neither binds for realistic inputs.
PAPER_LOG_RATIO_GUARD = 50.0
PAPER_LOG_SIGMA_GUARD = 60.0
# Bounds of the official code's diagnostic clip fractions (logged, never applied, in maspo mode).
PPO_DIAGNOSTIC_EPS = 0.2
PPO_DIAGNOSTIC_DUAL_CLIP = 3.0


def maspo_widths(
    old_log_prob: torch.Tensor, advantages: torch.Tensor, config: MaspoConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate widths ``(sigma_pos, sigma_neg)`` per token (detached inputs, no gradient)."""
    c = config
    if c.variant == "official":
        # The official code's operations in its order (core_algos.py, ratio_mode maspo), so rounding matches.
        old_prob = torch.exp(old_log_prob)
        mass = torch.clamp(c.sigma_base / old_prob**c.alpha, c.sigma_base, c.sigma_high)
        sigma_neg = mass * torch.clamp(1 / (1 - c.beta_neg * advantages), c.adv_low, c.adv_high)
        sigma_pos = mass * torch.clamp(1 + c.beta_pos * advantages, c.adv_low, c.adv_high)
        return sigma_pos, sigma_neg
    # Paper form in log space. Each risk factor is evaluated only where its quadrant can use it: elsewhere
    # the raw factor can be 0, negative or infinite (pole at A = 1/beta_neg), and a NaN in an unselected
    # branch would still poison the gradient.
    log_mass = math.log(c.sigma_base) - c.alpha * old_log_prob
    one = torch.ones_like(advantages)
    k_pos = torch.where(advantages > 0, 1.0 + c.beta_pos * advantages, one)
    k_neg = torch.where(advantages < 0, 1.0 / (1.0 - c.beta_neg * torch.clamp(advantages, max=0.0)), one)
    sigma_pos = torch.exp(torch.clamp(log_mass + torch.log(k_pos), max=PAPER_LOG_SIGMA_GUARD))
    sigma_neg = torch.exp(torch.clamp(log_mass + torch.log(k_neg), max=PAPER_LOG_SIGMA_GUARD))
    return sigma_pos, sigma_neg


def maspo_quadrants(ratio: torch.Tensor, advantages: torch.Tensor, bilateral: bool = False,
                    signs: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated quadrants ``(A > 0 and r > 1, A < 0 and r < 1)`` (``bilateral``: ``(A > 0, A < 0)``).
    ``signs``: ``(A > 0, A < 0)`` if the caller has them."""
    a_pos, a_neg = signs if signs is not None else (advantages > 0, advantages < 0)
    if bilateral:
        return a_pos, a_neg
    return a_pos & (ratio > 1), a_neg & (ratio < 1)


def maspo_gate(
    ratio: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, config: MaspoConfig,
    quadrants: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """The detached gate ``w`` (1 outside the gated quadrants; ``quadrants``: ``maspo_quadrants``, if computed).
    At a token whose ratio or width is NaN (a NaN input; the loss is NaN there too) the gate is NaN."""
    with torch.no_grad():
        r = ratio.detach()
        sigma_pos, sigma_neg = maspo_widths(old_log_prob, advantages, config)
        in_pos, in_neg = quadrants if quadrants is not None else maspo_quadrants(r, advantages, config.bilateral)
        # The width of the token's quadrant first, then one Gaussian: elementwise the same operations as
        # evaluating both branches and selecting, so the same bits, at half the cost.
        sigma = torch.where(in_pos, sigma_pos, sigma_neg)
        # 1 outside the quadrants without a select: there r - 1 is multiplied by 0, so the exponent is -0 and
        # exp(-0) = 1 exactly; inside, by 1 (exact). Equal to where(in_pos | in_neg, w, 1) wherever r and sigma
        # are finite (always, for finite inputs: r is a clamped exp, sigma a clamped width); in-place steps on
        # temporaries are the same operations, without the allocations.
        d = r - 1
        d.mul_((in_pos | in_neg).to(d.dtype))
        if config.variant == "official":
            return d.pow_(2).neg_().div_(2).div_(sigma.pow_(2)).exp_()  # exp(-((r - 1) ** 2) / 2 / sigma**2)
        # divide before squaring: sigma may be huge
        return d.div_(sigma).pow_(2).mul_(-0.5).exp_()  # exp(-0.5 * ((r - 1) / sigma) ** 2)


@register_policy_loss(
    "maspo",
    config_cls=MaspoConfig, finite_safe=True, analytic_grad=True,
    formula="-A * sg(w) * r, w = exp(-(r-1)^2 / (2 sigma^2)) on (A>0,r>1) and (A<0,r<1), sigma = M(pi_old) k(A)",
    description="MASPO (arXiv 2602.17550): soft Gaussian gate, mass-adaptive width, asymmetric risk control",
)
def maspo_token_loss(
    log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, config: MaspoConfig, **_: object
) -> TokenLoss:
    bound = LOG_RATIO_CLAMP if config.variant == "official" else PAPER_LOG_RATIO_GUARD
    log_ratio, passes = clamped_log_ratio(log_prob, old_log_prob, bound)
    ratio = torch.exp(log_ratio)
    with torch.no_grad():
        signs = (advantages > 0, advantages < 0)
        quadrants = maspo_quadrants(ratio.detach(), advantages, config.bilateral, signs)
    w = maspo_gate(ratio, old_log_prob, advantages, config, quadrants)
    neg_adv = -advantages
    loss = neg_adv * (w * ratio)  # w is exactly 1 outside the quadrants, so this is -A * r there, bit for bit
    with torch.no_grad():
        r = ratio.detach()
        grad = torch.where(passes, (neg_adv * w).mul_(r), 0.0)
        # The official code logs PPO's eps = 0.2 and c = 3 clip fractions in maspo mode without applying them;
        # we report the same diagnostics so dashboards stay comparable.
        a_pos, a_neg = signs
        ppo_would_clip = ((r < 1 - PPO_DIAGNOSTIC_EPS) & a_neg) | ((r > 1 + PPO_DIAGNOSTIC_EPS) & a_pos)
        dual_would_clip = (r > PPO_DIAGNOSTIC_DUAL_CLIP) & a_neg

    def vjp(up: torch.Tensor) -> torch.Tensor:  # autograd's order: mul by -A, by w, exp's r, clamp's mask
        return (up * neg_adv).mul_(w).mul_(r).mul_(passes.to(up.dtype))  # masked_by(...), in place

    loss, grad, w, hit, vjp = apply_dual_clip(loss, advantages, grad, w, config.dual_clip, vjp)
    return TokenLoss(loss=loss, grad_logp=grad, gate=w, ratio=r, clipped=ppo_would_clip,
                     clipped_lower=hit if hit is not None else dual_would_clip, vjp=vjp,
                     quadrants=None if config.bilateral else quadrants)
