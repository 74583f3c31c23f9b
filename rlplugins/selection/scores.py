"""SAGE score: a damped Newton decrement of the DPO loss along the implicit-reward margin, forward passes only.

Paper: arXiv 2602.01207 (Wu et al., "Not All Preferences Deserve Gradients", v2). The paper's abstract states a
"signal-curvature", "Newton-decrement-inspired" score; the equation below is the rlplugins reconstruction
(docs/sage.md#score), not the paper's text.

With ``u = beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)))``, the DPO loss is ``-log sigma(u)``,
its signal ``s(u) = sigma(-u)`` and its curvature along u ``c(u) = sigma(u) sigma(-u)``; the (damped) decrement is

    S(u) = s(u)^2 / (c(u) + delta),

bounded by ``1 / delta`` and strictly decreasing in u for every ``delta >= 0``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rlplugins._config import check_choice

from ._checks import check_float_vector
from .config import SCORE_VARIANTS, SageConfig
from .margins import implicit_margins, pair_margins  # noqa: F401  (implicit_margins: re-exported, its old home)
from .stability import stability_masks

# p(1 - p) <= 1/4 exactly; mean over tokens in float32 can land a few ulps above it.
_CURVATURE_TOL = 1e-6


def _check_curvature(rejected_curvature: object, n: int) -> torch.Tensor:
    curv = check_float_vector("rejected_curvature", rejected_curvature, n).detach().to("cpu", torch.float64)
    finite = torch.isfinite(curv)
    bad = finite & ((curv < 0) | (curv > 0.25 + _CURVATURE_TOL))
    if bool(bad.any()):
        vals = curv[bad][:3].tolist()
        raise ValueError(
            f"rejected_curvature must be the mean of p_t(1 - p_t) over rejected tokens, in [0, 0.25]; got e.g. {vals}"
        )
    return curv.clamp(0.0, 0.25)


def score_from_margin(
    u: torch.Tensor,
    *,
    variant: str = "newton",
    damping: float = 0.05,
    margin_clip: float = 20.0,
    rejected_curvature: torch.Tensor | None = None,
) -> torch.Tensor:
    """Selection score of each scaled margin ``u`` (float64, same shape); non-finite u gives 0.

    newton: ``sigma(-u)^2 / (sigma(u)sigma(-u) + delta)`` (B4), computed in log space;
    signal: ``sigma(-u)``; loss: ``-log sigma(u)`` (the DPO loss, ranking of `dynamic_loss`);
    token_curvature: ``sigma(-u)^2 / (curv_l + delta)`` with ``curv_l`` the mean token curvature of y_l (C.2).
    ``u`` is clipped to ``[-margin_clip, margin_clip]`` first, so a few extreme (possibly mislabelled) pairs cannot
    dominate a sampling distribution.
    """
    check_choice("", "variant", variant, SCORE_VARIANTS)
    if not isinstance(u, torch.Tensor) or not u.is_floating_point():
        raise TypeError(f"u must be a floating torch.Tensor, got {type(u).__name__}")
    u = u.detach().to("cpu", torch.float64)
    finite = torch.isfinite(u)
    uc = torch.where(finite, u, torch.zeros_like(u)).clamp(-margin_clip, margin_clip)
    log_signal = -F.softplus(uc)  # log sigma(-u)
    if variant == "newton":
        log_curv = -F.softplus(uc) - F.softplus(-uc)  # log sigma(u) sigma(-u), exact for large |u|
        if damping > 0:
            log_den = torch.logaddexp(log_curv, torch.full_like(log_curv, math.log(damping)))
        else:
            log_den = log_curv
        s = torch.exp(2.0 * log_signal - log_den)
    elif variant == "signal":
        s = torch.exp(log_signal)
    elif variant == "loss":
        s = F.softplus(-uc)
    else:
        if rejected_curvature is None:
            raise ValueError("score variant 'token_curvature' needs rejected_curvature (mean p_t(1-p_t) over y_l)")
        if damping <= 0:
            raise ValueError("score variant 'token_curvature' needs damping > 0")
        curv = _check_curvature(rejected_curvature.reshape(-1), u.numel()).reshape(u.shape)
        finite = finite & torch.isfinite(curv)
        curv = torch.where(torch.isfinite(curv), curv, torch.zeros_like(curv))
        s = torch.exp(2.0 * log_signal - torch.log(curv + damping))
    return torch.where(finite, s, torch.zeros_like(s))


def sage_scores(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    config: SageConfig,
    *,
    history: torch.Tensor | None = None,
    rejected_curvature: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAGE score and stability mask of N pairs from forward-only sequence log-probs (arXiv 2602.01207).

    ``u`` from ``config.margin_source`` (`margins.pair_margins`); ``scores = S(u)`` per ``config.score_variant`` (float64 ``[N]``);
    ``stable`` (bool ``[N]``): the stability rule of `stability.stability_masks`, the band and noise guard relative to these N pairs; just ``finite`` when
    ``config.use_filter`` is False. ``history`` ``[N, K']`` holds previous margins u (oldest to newest, NaN = missing);
    the current u is appended to it for the temporal checks over the last ``config.history_size`` observations.
    Pairs with a non-finite input get score 0 and ``stable=False``.
    """
    if not isinstance(config, SageConfig):
        raise TypeError(f"config must be a SageConfig, got {type(config).__name__}")
    u = pair_margins(
        policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, config.beta,
        config.margin_source,
    )
    n = u.shape[0]
    curv = None
    if rejected_curvature is not None:
        curv = _check_curvature(rejected_curvature, n)
    scores = score_from_margin(
        u,
        variant=config.score_variant,
        damping=config.damping,
        margin_clip=config.margin_clip,
        rejected_curvature=curv,
    )
    if curv is not None:
        u = torch.where(torch.isfinite(curv), u, torch.full_like(u, math.nan))
    full = None
    if history is not None:
        if not isinstance(history, torch.Tensor) or not history.is_floating_point():
            raise TypeError(f"history must be a floating torch.Tensor, got {type(history).__name__}")
        if history.dim() != 2 or history.shape[0] != n:
            raise ValueError(f"history must have shape [{n}, K], got {tuple(history.shape)}")
        full = torch.cat([history.detach().to("cpu", torch.float64), u.unsqueeze(1)], dim=1)
    return scores, stability_masks(u, full, u[torch.isfinite(u)], config).stable
