"""``CorePolicyLoss``: a drop-in for OpenRLHF 0.11.2's ``openrlhf.models.PolicyLoss`` backed by the core.

It holds no loss math. Each call translates OpenRLHF's contract into one ``compute_policy_loss`` call:

- **Signature and return**: ``forward(log_probs, old_log_probs, advantages, action_mask=None,
  rollout_log_probs=None, dp_size=1, batch_num_tokens=None, global_batch_size=None)`` returns the 5-tuple
  ``(loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio)``, the last two None unless IS correction is on.
- **Aggregation**: OpenRLHF's two modes are veRL's ``token-mean`` and ``seq-mean-token-mean``, and its
  ``aggregate_loss`` is veRL's ``agg_loss`` for them: ``sum(m l) / batch_num_tokens * dp_size`` and
  ``sum_i mean_t(l) / global_batch_size * dp_size``, where both counts are global over the grad-accumulation
  window and the DP ranks (``utils/loss_utils.py``). The core implements exactly veRL's semantics, so
  ``compute_policy_loss`` (rather than ``token_policy_loss`` + OpenRLHF's ``aggregate_loss``) is an exact
  match and keeps validation and metrics in one place. One difference is deliberate and OpenRLHF's own:
  without a count OpenRLHF takes the local mean and *ignores* ``dp_size``; we pass ``dp_size`` only with its
  count, as OpenRLHF does. (An all-masked micro-batch gives 0 here, NaN in OpenRLHF.)
- **Dual clip**: a config field of the losses that have one (``ppo_clip``, ``maspo``); ``build_policy_loss``
  fills it from ``--actor.dual_clip``.
- **IS correction** (``--algo.advantage.is_correction_*``): OpenRLHF's gate (TIS, ICEPOP, seq-mask-TIS,
  FlashREINFORCE) yields one detached coefficient per token that multiplies the per-token loss; that is the
  core's ``rollout_is_weights``. The coefficient is computed by OpenRLHF's own ``PolicyLoss`` (a probe call,
  see ``_openrlhf_is_weights``), so the gate semantics stay OpenRLHF's and cannot drift. For ``gspo`` OpenRLHF
  applies no IS weight but puts the rollout log-probs in the ratio's denominator; we do the same.
- **gspo** (the CLI leaves OpenRLHF's own gspo in charge; this class offers the core's for Python users):
  values always equal OpenRLHF's; gradients equal when advantages are constant along each sequence (GRPO,
  RLOO: GSPO's setting). With per-token advantages (GAE) OpenRLHF differentiates through the sequence
  ratio, so each token's gradient carries the sequence's mean advantage, while the core's token-level
  straight-through form (veRL's) keeps each token's own.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from rlplugins.losses import PolicyLossConfig, compute_policy_loss, get_policy_loss

from .loss_flags import OPENRLHF_OWNED_FIELDS
from .version import check_openrlhf_version

check_openrlhf_version()

from openrlhf.models.loss import PolicyLoss as OpenRLHFPolicyLoss  # noqa: E402  (after the version guard)

class CorePolicyLoss(nn.Module):
    """OpenRLHF ``PolicyLoss`` interface, rlplugins core loss ``policy_loss`` underneath.

    After each forward, ``last_metrics`` holds the core's metrics (plain floats: gate statistics, clip
    fractions, ratio statistics; see ``rlplugins.losses.METRIC_KEYS``) for the trainer to log.
    """

    def __init__(
        self,
        policy_loss: str,
        config: PolicyLossConfig | Mapping[str, Any] | None = None,
        *,
        token_level_loss: bool = True,
        is_correction_level: str = "off",
        is_correction_mode: str = "mask",
        is_correction_gating: str = "ratio",
        is_correction_threshold: tuple[float, float] | list[float] = (0.5, 5.0),
        on_nonfinite: str = "raise",
    ) -> None:
        super().__init__()
        spec = get_policy_loss(policy_loss)
        self.policy_loss_type = policy_loss  # the attribute name OpenRLHF's PolicyLoss uses
        self.config = spec.make_config(config)
        # As OpenRLHF's PolicyLoss: GSPO's ratio is per sequence, so its loss is a per-sequence mean.
        self.token_level_loss = bool(token_level_loss) and policy_loss != "gspo"
        if on_nonfinite not in ("raise", "mask"):
            raise ValueError(f"on_nonfinite must be 'raise' or 'mask', got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.is_correction_level = is_correction_level
        # OpenRLHF's PolicyLoss validates the IS settings on construction; the probe reuses that.
        self._is_probe: Optional[OpenRLHFPolicyLoss] = None
        if is_correction_level != "off":
            self._is_probe = OpenRLHFPolicyLoss(
                policy_loss_type="ppo",
                dual_clip=None,
                token_level_loss=True,
                is_correction_level=is_correction_level,
                is_correction_mode=is_correction_mode,
                is_correction_gating=is_correction_gating,
                is_correction_threshold=tuple(is_correction_threshold),
            )
        self.last_metrics: dict[str, float] = {}

    @property
    def loss_agg_mode(self) -> str:
        return "token-mean" if self.token_level_loss else "seq-mean-token-mean"

    def extra_repr(self) -> str:
        return f"policy_loss={self.policy_loss_type!r}, config={self.config}, loss_agg_mode={self.loss_agg_mode!r}, " \
               f"is_correction_level={self.is_correction_level!r}"

    def forward(
        self,
        log_probs: torch.Tensor,
        old_log_probs: torch.Tensor,
        advantages: torch.Tensor,
        action_mask: Optional[torch.Tensor] = None,
        rollout_log_probs: Optional[torch.Tensor] = None,
        dp_size: int = 1,
        batch_num_tokens: Optional[float | torch.Tensor] = None,
        global_batch_size: Optional[float | torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
        if action_mask is None:
            action_mask = torch.ones_like(log_probs, dtype=torch.bool)

        denominator = old_log_probs
        weights = vllm_kl = is_filter_ratio = None
        if self._is_probe is not None:
            if rollout_log_probs is None:
                raise ValueError(
                    f"is_correction_level={self.is_correction_level!r} needs rollout_log_probs (OpenRLHF passes "
                    "experience.rollout_log_probs when --algo.advantage.is_correction_level is not 'off'); got None"
                )
            if self.policy_loss_type == "gspo":
                # OpenRLHF's GSPO: rollout log-probs as the ratio's denominator, no IS weight.
                denominator = rollout_log_probs
            else:
                weights, vllm_kl, is_filter_ratio = _openrlhf_is_weights(
                    self._is_probe, old_log_probs, action_mask, rollout_log_probs
                )

        count = batch_num_tokens if self.token_level_loss else global_batch_size
        if count is None:
            global_batch_info = None  # OpenRLHF: local mean, dp_size unused
        elif self.token_level_loss:  # dp_size as given: the core rejects 2.7 or True rather than truncating
            global_batch_info = {"batch_num_tokens": count, "dp_size": dp_size}
        else:
            global_batch_info = {"global_batch_size": count, "dp_size": dp_size}

        loss, metrics = compute_policy_loss(
            self.policy_loss_type,
            log_prob=log_probs,
            old_log_prob=denominator,
            advantages=advantages,
            response_mask=action_mask,
            loss_agg_mode=self.loss_agg_mode,
            config=self.config,
            rollout_is_weights=weights,
            global_batch_info=global_batch_info,
            on_nonfinite=self.on_nonfinite,
            arg_names=_OPENRLHF_ARG_NAMES_GSPO_IS if denominator is rollout_log_probs else _OPENRLHF_ARG_NAMES,
            # OpenRLHF's iter_grad_accum_global_norm divides the step's global counts by the accumulation steps:
            # a micro-batch may hold more tokens than batch_num_tokens, so only a count of 0 is refused.
            count_floor="nonzero",
        )
        self.last_metrics = metrics
        # OpenRLHF logs these two as tensors (it calls .detach() on them); float64 in, float64 out.
        dtype = torch.float64 if log_probs.dtype == torch.float64 else torch.float32
        clip_ratio = torch.tensor(metrics["pg_clipfrac"], dtype=dtype, device=log_probs.device)
        ppo_kl = _openrlhf_ppo_kl(log_probs, old_log_probs, action_mask, dtype)
        return loss, clip_ratio, ppo_kl, vllm_kl, is_filter_ratio


# Error messages name the arguments as OpenRLHF's caller passed them.
_OPENRLHF_ARG_NAMES = {"log_prob": "log_probs", "old_log_prob": "old_log_probs", "response_mask": "action_mask",
                       "global_batch_info": ""}
_OPENRLHF_ARG_NAMES_GSPO_IS = {**_OPENRLHF_ARG_NAMES, "old_log_prob": "rollout_log_probs"}


def _openrlhf_ppo_kl(log_probs: torch.Tensor, old_log_probs: torch.Tensor, action_mask: torch.Tensor,
                     dtype: torch.dtype) -> torch.Tensor:
    """OpenRLHF's ``ppo_kl`` metric: the masked mean of the *raw* (unclamped) ``old_log_probs - log_probs``, as its
    own ``PolicyLoss`` reports it (the core's ``ppo_kl`` clamps the log-ratio to +-20, as veRL does). Masked and
    non-finite positions are left out; an all-masked call gives 0 (OpenRLHF: 0/0)."""
    with torch.no_grad():
        raw = old_log_probs.detach().to(dtype) - log_probs.detach().to(dtype)
        used = action_mask.bool() & torch.isfinite(raw)
        # A product with the mask of a finite copy: where()'s values, several times cheaper on CPU.
        total = (torch.nan_to_num(raw, nan=0.0, posinf=0.0, neginf=0.0) * used).sum()
        return total / torch.count_nonzero(used).clamp(min=1).to(dtype)


def _openrlhf_is_weights(
    probe: OpenRLHFPolicyLoss,
    old_log_probs: torch.Tensor,
    action_mask: torch.Tensor,
    rollout_log_probs: torch.Tensor,
) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """OpenRLHF's per-token IS coefficient, read off OpenRLHF's own PolicyLoss.

    With ``log_probs = old_log_probs`` the PPO ratio is exactly 1, so with advantages A the per-token loss is
    ``-coef * A`` (clip and dual clip are inactive at ratio 1), and with ``batch_num_tokens=1`` the aggregate is
    ``sum(mask * -coef * A)``. Its gradient with respect to A is therefore ``-coef * mask``: one tiny
    elementwise backward returns OpenRLHF's coefficient (mask/clip, token/seq, ratio/binary_kl/tv) without
    re-implementing its gate. ``vllm_kl`` and ``is_filter_ratio`` are returned by the same call.
    """
    old = old_log_probs.detach()
    probe_adv = torch.full_like(old, -1.0, requires_grad=True)
    with torch.enable_grad():
        probe_loss, _, _, vllm_kl, is_filter_ratio = probe(
            old, old, probe_adv, action_mask=action_mask, rollout_log_probs=rollout_log_probs.detach(),
            dp_size=1, batch_num_tokens=1.0,
        )
        (grad,) = torch.autograd.grad(probe_loss, probe_adv)
    return -grad, vllm_kl, is_filter_ratio


def config_from_openrlhf(
    policy_loss: str,
    overrides: Mapping[str, Any],
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip: Optional[float],
) -> PolicyLossConfig:
    """The core config of ``policy_loss``: our flags' values, plus OpenRLHF's clip flags for the fields they own.

    Raises ``ValueError`` when ``--actor.dual_clip`` is set for a loss that has no dual clip (it would be
    silently ignored otherwise).
    """
    spec = get_policy_loss(policy_loss)
    names = spec.config_cls.field_names()
    for key in overrides:
        if key in OPENRLHF_OWNED_FIELDS:
            raise ValueError(
                f"{policy_loss}.{key} is set by OpenRLHF's own flag: use {OPENRLHF_OWNED_FIELDS[key]}"
            )
    values: dict[str, Any] = dict(overrides)
    if "eps_low" in names:
        values["eps_low"] = float(clip_eps_low)
    if "eps_high" in names:
        values["eps_high"] = float(clip_eps_high)
    if "dual_clip" in names:
        values["dual_clip"] = None if dual_clip is None else float(dual_clip)
    elif dual_clip is not None:
        raise ValueError(
            f"--actor.dual_clip {dual_clip} has no effect with --actor.policy_loss_type {policy_loss}: "
            f"{policy_loss} has no dual clip (losses with one: ppo, maspo). Remove --actor.dual_clip."
        )
    return spec.config_cls.from_mapping(values)


def build_policy_loss(
    policy_loss: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    template: OpenRLHFPolicyLoss,
    on_nonfinite: str = "raise",
) -> CorePolicyLoss:
    """A ``CorePolicyLoss`` configured like ``template``, the ``PolicyLoss`` OpenRLHF built from its flags.

    The template supplies what OpenRLHF already parsed: the clip range and dual clip (post-processing such as
    ``eps_clip_low_high = (eps_clip, eps_clip)`` included), the aggregation mode and the IS-correction gate.
    """
    config = config_from_openrlhf(
        policy_loss,
        overrides or {},
        clip_eps_low=template.clip_eps_low,
        clip_eps_high=template.clip_eps_high,
        dual_clip=template.dual_clip,
    )
    return CorePolicyLoss(
        policy_loss,
        config,
        token_level_loss=template.token_level_loss,
        is_correction_level=template.is_correction_level,
        is_correction_mode=template.is_correction_mode,
        is_correction_gating=template.is_correction_gating,
        is_correction_threshold=tuple(template.is_correction_threshold),
        on_nonfinite=on_nonfinite,
    )
