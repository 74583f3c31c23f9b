"""DPO-family losses on sequence log-probs: sigmoid (cDPO), IPO, hinge, robust (docs/losses.md#dpo-losses).

Notation: ``h_w = log pi(y_w|x) - log ref(y_w|x)``, ``h_l`` likewise (sums over response tokens), ``x = h_w - h_l``,
``Delta = beta * x``.

* sigmoid: ``-(1 - eps) log sigma(Delta) - eps log sigma(-Delta)`` (DPO, Rafailov et al. 2023; cDPO for eps > 0)
* ipo: ``(x - 1/(2 beta))^2`` (Azar et al. 2023; OpenRLHF form), or with ``ipo_length_normalize`` the TRL form
  ``(h_w / L_w - h_l / L_l - 1/(2 beta))^2``
* hinge: ``relu(1 - Delta)`` (SLiC)
* robust: ``[-(1 - eps) log sigma(Delta) + eps log sigma(-Delta)] / (1 - 2 eps)`` (rDPO, Chowdhury et al. 2024)

Used by SAGE (arXiv 2602.01207), which selects pairs and trains them with the plain sigmoid loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .._config import ConfigMixin, check_bool, check_choice, check_number

DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "robust")


@dataclass(frozen=True)
class DPOConfig(ConfigMixin):
    """Options of `dpo_loss`. ``label_smoothing`` is eps of cDPO (``sigmoid``, eps in [0, 0.5]) and of rDPO
    (``robust``, eps in [0, 0.5)); the other types do not use it and reject a non-zero value."""

    loss_type: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0
    ipo_length_normalize: bool = False

    def __post_init__(self) -> None:
        o = "DPOConfig"
        check_choice(o, "loss_type", self.loss_type, DPO_LOSS_TYPES)
        check_number(o, "beta", self.beta, low=0.0, low_inclusive=False)
        eps = check_number(o, "label_smoothing", self.label_smoothing)
        if self.loss_type == "sigmoid":
            check_number(o, "label_smoothing", eps, low=0.0, high=0.5)
        elif self.loss_type == "robust":
            check_number(o, "label_smoothing", eps, low=0.0, high=0.5, high_inclusive=False)
        elif eps != 0:
            raise ValueError(f"DPOConfig.label_smoothing must be 0 for {self.loss_type} (unused), got {eps}")
        check_bool(o, "ipo_length_normalize", self.ipo_length_normalize)
        if self.ipo_length_normalize and self.loss_type != "ipo":
            raise ValueError("DPOConfig.ipo_length_normalize only applies to loss_type='ipo'")


class DPOLossOutput(NamedTuple):
    """``loss`` (scalar, differentiable), per-pair ``losses`` [B] (differentiable), detached per-pair
    ``chosen_rewards = beta h_w``, ``rejected_rewards = beta h_l``, ``margins = chosen - rejected``, ``accuracy``
    (float, share of margins > 0; NaN for an empty batch) and ``metrics`` (plain floats)."""

    loss: torch.Tensor
    losses: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    margins: torch.Tensor
    accuracy: float
    metrics: dict[str, float]


def _check_vector(name: str, x: object, n: int | None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != 1:
        raise ValueError(f"{name} must be 1-D [batch], got shape {tuple(x.shape)}")
    if n is not None and x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) like policy_chosen_logps, got {tuple(x.shape)}")
    return x


def _check_lengths(name: str, x: object, n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token counts, got {type(x).__name__}")
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {tuple(x.shape)}")
    t = x.detach().to(device=device, dtype=dtype)
    if t.numel() and not bool(torch.all(t > 0)):
        raise ValueError(f"{name} must be > 0 (number of response tokens)")
    return t


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    config: DPOConfig | None = None,
    *,
    weights: torch.Tensor | None = None,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
) -> DPOLossOutput:
    """DPO-family loss of B pairs from sequence log-probs (sums over response tokens), computed in float32 (float64
    if any input is float64).

    ``loss = sum_i w_i l_i / sum_i w_i`` with optional detached per-pair weights ``w >= 0`` (plain mean without), and
    exactly 0 (connected to the graph, zero gradient) when the batch is empty or ``sum w = 0``.
    """
    if config is None:
        config = DPOConfig()
    if not isinstance(config, DPOConfig):
        raise TypeError(f"config must be a DPOConfig, got {type(config).__name__}")
    pc = _check_vector("policy_chosen_logps", policy_chosen_logps, None)
    n = pc.shape[0]
    pr = _check_vector("policy_rejected_logps", policy_rejected_logps, n)
    rc = _check_vector("ref_chosen_logps", ref_chosen_logps, n)
    rr = _check_vector("ref_rejected_logps", ref_rejected_logps, n)
    devices = {t.device for t in (pc, pr, rc, rr)}
    if len(devices) != 1:
        raise ValueError(f"all log-prob tensors must be on one device, got {sorted(map(str, devices))}")
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in (pc, pr, rc, rr)) else torch.float32
    pc, pr, rc, rr = (t.to(dtype) for t in (pc, pr, rc, rr))
    beta = float(config.beta)

    h_w = pc - rc
    h_l = pr - rr
    raw_w, raw_l = h_w.detach(), h_l.detach()
    w = None
    if weights is not None:
        w = _check_vector("weights", weights, n).detach().to(device=pc.device, dtype=dtype)
        if w.numel() and not bool(torch.all(torch.isfinite(w) & (w >= 0))):
            raise ValueError("weights must be finite and >= 0")
        # Zero the inputs of zero-weight pairs *before* the loss: masking only the output would still propagate
        # 0 * NaN = NaN gradients from a dropped pair with non-finite log-probs.
        keep = w > 0
        h_w = torch.where(keep, h_w, torch.zeros_like(h_w))
        h_l = torch.where(keep, h_l, torch.zeros_like(h_l))
    if config.loss_type == "ipo":
        if config.ipo_length_normalize:
            if chosen_lengths is None or rejected_lengths is None:
                raise ValueError("ipo_length_normalize=True needs chosen_lengths and rejected_lengths")
            lw = _check_lengths("chosen_lengths", chosen_lengths, n, pc.device, dtype)
            ll = _check_lengths("rejected_lengths", rejected_lengths, n, pc.device, dtype)
            x = h_w / lw - h_l / ll
        else:
            if chosen_lengths is not None or rejected_lengths is not None:
                raise ValueError("chosen_lengths/rejected_lengths are only used with ipo_length_normalize=True")
            x = h_w - h_l
        losses = (x - 1.0 / (2.0 * beta)) ** 2
    else:
        if chosen_lengths is not None or rejected_lengths is not None:
            raise ValueError(f"chosen_lengths/rejected_lengths are not used by loss_type={config.loss_type!r}")
        delta = beta * (h_w - h_l)
        eps = float(config.label_smoothing)
        if config.loss_type == "sigmoid":
            losses = -(1.0 - eps) * F.logsigmoid(delta) - eps * F.logsigmoid(-delta)
        elif config.loss_type == "robust":
            losses = (-(1.0 - eps) * F.logsigmoid(delta) + eps * F.logsigmoid(-delta)) / (1.0 - 2.0 * eps)
        else:
            losses = F.relu(1.0 - delta)

    if w is not None:
        total = w.sum()
        loss = (losses * w).sum() / total.clamp(min=torch.finfo(dtype).tiny)
        loss = torch.where(total > 0, loss, torch.zeros_like(loss))
    elif n == 0:
        loss = losses.sum()
    else:
        loss = losses.mean()

    with torch.no_grad():
        # Rewards of every pair, including zero-weight ones, so that accuracy keeps its usual meaning.
        chosen_rewards = beta * raw_w
        rejected_rewards = beta * raw_l
        margins = chosen_rewards - rejected_rewards
        accuracy = float((margins > 0).to(dtype).mean()) if n else math.nan
        metrics = {
            "dpo/loss": float(loss.detach()),
            "dpo/accuracy": accuracy,
            "dpo/margin_mean": float(margins.mean()) if n else math.nan,
            "dpo/chosen_reward": float(chosen_rewards.mean()) if n else math.nan,
            "dpo/rejected_reward": float(rejected_rewards.mean()) if n else math.nan,
        }
    return DPOLossOutput(loss, losses, chosen_rewards, rejected_rewards, margins, accuracy, metrics)
