"""``RLPluginsGRPOConfig`` / ``RLPluginsGRPOTrainer``: every rlplugins policy loss as a TRL ``loss_type``.

    args = RLPluginsGRPOConfig(output_dir="out", loss_type="maspo", maspo_alpha=0.3, loss_normalizer="dapo")
    trainer = RLPluginsGRPOTrainer(model=..., reward_funcs=..., args=args, train_dataset=...)

TRL's own loss types (``grpo``, ``dapo``, ``dr_grpo``, ``bnpo``, ``sapo``, ``cispo``, ``luspo``, ``vespo``) are
passed to ``GRPOTrainer._compute_loss`` untouched. Every registered rlplugins loss is accepted by its registry
name, or as ``rlp_<name>``; the two whose names TRL already uses are ``rlp_sapo`` and ``rlp_cispo``. Each
loss's config fields are dataclass fields named ``<loss>_<field>`` (``maspo_alpha``, ``gspo_eps_high``), so
``TrlParser`` and the command line see them.

For an rlplugins loss, ``_compute_loss`` below is TRL 1.16.0's ``_compute_loss`` with the loss-type branch and
the normaliser replaced by one call of ``rlplugins.losses.compute_policy_loss``:

- the off-policy sequence mask, the entropy mask and the vLLM importance-sampling ratio (TRL multiplies the
  per-token loss by all three) go in as ``rollout_is_weights``;
- TRL's normaliser becomes a loss aggregation (``loss_normalizer``, see ``NORMALIZERS``): ``dapo`` is token-mean
  over ``num_items_in_batch`` (global tokens of the generation batch, rescaled to one accumulation window as TRL
  does), ``bnpo`` token-mean over the local micro-batch, ``dr_grpo`` the token sum over
  ``batch * max_completion_length``, ``grpo`` seq-mean-token-mean, ``luspo`` seq-mean-token-sum; the last four
  are divided by the gradient-accumulation steps, as in TRL;
- the KL term (with TRL's bias correction) is aggregated with the same normaliser and added, as TRL adds it to
  the per-token loss before normalising; the entropy bonus, the MoE aux loss and every TRL metric follow
  unchanged. Our gate statistics are logged as ``rlplugins/<metric>`` (``gate_mean``, ``damp_frac``, ...).

``tests/trl/test_grpo_exactness.py`` runs ``GRPOTrainer.train()`` and checks this body against TRL's own
branches (``ppo_clip`` against ``grpo``/``bnpo``/``dr_grpo``/``dapo``, ``rlp_sapo`` against ``sapo``,
``rlp_cispo`` against ``cispo``): loss, gradients and metrics.
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from dataclasses import dataclass, field
from typing import Any

import torch

from .version import check_trl_version

check_trl_version()

from trl import GRPOConfig, GRPOTrainer  # noqa: E402
from trl.trainer.utils import nanmax, nanmin  # noqa: E402

from rlplugins._config import check_choice, did_you_mean  # noqa: E402
from rlplugins.losses import (  # noqa: E402
    METRIC_KEYS,
    PolicyLossConfig,
    agg_loss,
    compute_policy_loss,
    get_policy_loss,
    list_policy_losses,
    token_policy_loss,
)

logger = logging.getLogger(__name__)

# TRL 1.16.0's loss types: handled by GRPOTrainer itself.
TRL_LOSS_TYPES: tuple[str, ...] = ("grpo", "dapo", "dr_grpo", "bnpo", "sapo", "cispo", "luspo", "vespo")
# TRL's normalisers, usable with our losses: name -> (loss_agg_mode, divide by gradient-accumulation steps).
NORMALIZERS: dict[str, tuple[str, bool]] = {
    "dapo": ("token-mean", False),
    "bnpo": ("token-mean", True),
    "dr_grpo": ("token-mean", True),
    "grpo": ("seq-mean-token-mean", True),
    "luspo": ("seq-mean-token-sum", True),
}
DEFAULT_NORMALIZER = "dapo"
ALIAS_PREFIX = "rlp_"


def rlplugins_loss_types() -> list[str]:
    """The ``loss_type`` values that select an rlplugins loss (registry names TRL does not use, and ``rlp_*``)."""
    names = list_policy_losses()
    return [n for n in names if n not in TRL_LOSS_TYPES] + [ALIAS_PREFIX + n for n in names]


def resolve_loss_type(loss_type: str) -> str | None:
    """The registry name selected by ``loss_type``; None for a TRL loss type; ValueError for anything else."""
    if loss_type in TRL_LOSS_TYPES:
        return None
    registered = list_policy_losses()
    if loss_type in registered:
        return loss_type
    if isinstance(loss_type, str) and loss_type.startswith(ALIAS_PREFIX) and loss_type[len(ALIAS_PREFIX):] in registered:
        return loss_type[len(ALIAS_PREFIX):]
    ours = rlplugins_loss_types()
    hint = did_you_mean(loss_type, list(TRL_LOSS_TYPES) + ours)
    raise ValueError(
        f"loss_type {loss_type!r} is neither a TRL loss type ({', '.join(TRL_LOSS_TYPES)}) nor an rlplugins loss "
        f"({', '.join(ours)}).{hint}"
    )


def loss_field_name(loss: str, config_field: str) -> str:
    return f"{loss}_{config_field}"


def _loss_fields() -> tuple[list[tuple[str, Any, Any]], dict[str, dict[str, str]]]:
    """One dataclass field per (registered loss, config field), and the map back to the config fields."""
    taken = {f.name for f in dataclasses.fields(GRPOConfig)}
    fields: list[tuple[str, Any, Any]] = []
    mapping: dict[str, dict[str, str]] = {}
    for name in list_policy_losses():
        cls = get_policy_loss(name).config_cls
        hints = typing.get_type_hints(cls)
        mapping[name] = {}
        for f in dataclasses.fields(cls):
            arg = loss_field_name(name, f.name)
            if arg in taken:
                raise RuntimeError(f"rlplugins loss field {arg!r} collides with GRPOConfig.{arg}")
            taken.add(arg)
            used_by = f"loss_type={name!r}" if name not in TRL_LOSS_TYPES else f"loss_type={ALIAS_PREFIX + name!r}"
            fields.append((arg, hints[f.name], field(default=f.default, metadata={
                "help": f"rlplugins {cls.__name__}.{f.name} (default {f.default!r}); used with {used_by}."})))
            mapping[name][arg] = f.name
    return fields, mapping


_FIELDS, LOSS_FIELDS = _loss_fields()
_LossFields = dataclasses.make_dataclass("_RLPluginsLossFields", _FIELDS, bases=(GRPOConfig,))


@dataclass
class RLPluginsGRPOConfig(_LossFields):
    """``GRPOConfig`` whose ``loss_type`` also accepts every rlplugins loss (see the module docstring).

    Extra fields: ``loss_normalizer`` (one of ``NORMALIZERS``; default ``dapo``; rlplugins losses only),
    ``rlplugins_on_nonfinite`` and one field per loss parameter, ``<loss>_<field>``. ``LOSS_FIELDS`` lists them.
    With an rlplugins loss, TRL's ``epsilon``/``epsilon_high``/``sapo_temperature_*`` do not apply (each loss
    reads its own fields), ``importance_sampling_level`` must be ``"token"`` (``gspo`` is the sequence-level
    loss) and ``delta`` must be unset.
    """

    loss_normalizer: str | None = field(default=None, metadata={
        "help": "rlplugins losses only: TRL's normaliser to aggregate with, one of " + ", ".join(NORMALIZERS)
                + f" (default {DEFAULT_NORMALIZER}). TRL's own loss types keep their built-in normaliser."})
    rlplugins_on_nonfinite: str = field(default="raise", metadata={
        "help": "rlplugins losses only: 'raise' on a NaN/inf log-prob, advantage or IS weight at a valid token, "
                "or 'mask' to drop such tokens (counted in rlplugins/nonfinite_tokens)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        name = resolve_loss_type(self.loss_type)
        if name is None:
            if self.loss_normalizer is not None:
                raise ValueError(f"loss_normalizer={self.loss_normalizer!r} applies to rlplugins losses only; TRL's "
                                 f"loss_type={self.loss_type!r} has its own normaliser. Unset loss_normalizer.")
            return
        if self.loss_normalizer is not None:
            check_choice("", "loss_normalizer", self.loss_normalizer, NORMALIZERS)
        if self.importance_sampling_level != "token":
            raise ValueError(f"importance_sampling_level={self.importance_sampling_level!r} is TRL's sequence-level "
                             f"ratio for its own loss types; rlplugins losses compute their own ratio and need "
                             f"'token' (use loss_type='gspo' for the sequence-level GSPO ratio).")
        if self.delta is not None:
            raise ValueError(f"delta={self.delta!r} (two-sided clipping) belongs to TRL's grpo-family loss types; "
                             f"with loss_type={self.loss_type!r} use a dual clip instead (e.g. "
                             f"{loss_field_name(name, 'dual_clip')} where the loss has one).")
        check_choice("", "rlplugins_on_nonfinite", self.rlplugins_on_nonfinite, ("raise", "mask"))
        self.rlplugins_loss_config()  # validates the chosen loss's fields now, not at the first step
        for other, fields in LOSS_FIELDS.items():
            if other == name:
                continue
            changed = [arg for arg, cfg in fields.items()
                       if getattr(self, arg) != _default_of(other, cfg)]
            if changed:
                logger.warning("rlplugins: %s set but loss_type=%r does not use them", ", ".join(changed),
                               self.loss_type)

    @property
    def rlplugins_loss(self) -> str | None:
        """Registry name of the selected rlplugins loss, or None for a TRL loss type."""
        return resolve_loss_type(self.loss_type)

    @property
    def rlplugins_normalizer(self) -> str | None:
        return None if self.rlplugins_loss is None else (self.loss_normalizer or DEFAULT_NORMALIZER)

    def rlplugins_loss_config(self) -> PolicyLossConfig | None:
        """The selected loss's config dataclass built from the ``<loss>_<field>`` fields (None for TRL's types)."""
        name = self.rlplugins_loss
        if name is None:
            return None
        fields = LOSS_FIELDS.get(name)
        if fields is None:
            raise ValueError(f"rlplugins loss {name!r} was registered after rlplugins.integrations.trl was imported, "
                             "so RLPluginsGRPOConfig has no fields for it; register it before importing the adapter")
        values = {cfg: getattr(self, arg) for arg, cfg in fields.items()}
        try:
            return get_policy_loss(name).make_config(values)
        except (TypeError, ValueError) as exc:
            names = ", ".join(fields) or "(none)"
            raise type(exc)(f"{exc} (RLPluginsGRPOConfig fields for loss_type={self.loss_type!r}: {names})") from exc


def _default_of(loss: str, config_field: str) -> Any:
    cls = get_policy_loss(loss).config_cls
    return {f.name: f.default for f in dataclasses.fields(cls)}[config_field]


# TRL metric names for the clip fractions; our losses report them when they have a notion of clipping.
_CLIP_METRICS = ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean")


class RLPluginsGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` that also trains with rlplugins losses; TRL's own loss types run TRL's code unchanged."""

    def __init__(self, model: Any, reward_funcs: Any = None, args: GRPOConfig | None = None, *a: Any, **kw: Any):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = RLPluginsGRPOConfig(f"{str(model_name).split('/')[-1]}-GRPO")
        if not isinstance(args, RLPluginsGRPOConfig) and resolve_loss_type(args.loss_type) is not None:
            raise TypeError(f"loss_type={args.loss_type!r} is an rlplugins loss: pass args=RLPluginsGRPOConfig(...) "
                            f"(a plain GRPOConfig has no fields for its parameters)")
        super().__init__(model, reward_funcs, args, *a, **kw)
        self.rlplugins_loss = args.rlplugins_loss if isinstance(args, RLPluginsGRPOConfig) else None
        self.rlplugins_loss_config = args.rlplugins_loss_config() if self.rlplugins_loss else None

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        if self.rlplugins_loss is None:
            return super()._compute_loss(model, inputs)
        return self._compute_rlplugins_loss(model, inputs)

    def _normalizer(self, mode: str, inputs: dict[str, Any], batch_size: int) -> tuple[str, dict[str, Any], float]:
        """TRL's normaliser as ``(loss_agg_mode, global_batch_info, divisor applied after aggregation)``."""
        name = self.args.rlplugins_normalizer
        agg_mode, per_accumulation = NORMALIZERS[name]
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1.0
        divisor = accumulation if per_accumulation else 1.0
        if name == "dapo":
            # As TRL: num_items_in_batch spans the generation batch; rescale it to one accumulation window.
            tokens = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if mode == "train":
                tokens = tokens * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return agg_mode, {"batch_num_tokens": tokens}, divisor
        if name == "dr_grpo":
            return agg_mode, {"batch_num_tokens": batch_size * self.max_completion_length}, divisor
        if name in ("grpo", "luspo"):  # TRL averages over every sequence of the micro-batch, empty ones included
            return agg_mode, {"global_batch_size": batch_size}, divisor
        return agg_mode, {}, divisor  # bnpo: the micro-batch's own valid tokens

    def _compute_rlplugins_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        # From here to the loss, TRL 1.16.0's GRPOTrainer._compute_loss, whose loss-type branch is replaced below.
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits_to_keep = completion_ids.size(1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]

        per_token_logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            logits_to_keep,
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            pixel_values=inputs.get("pixel_values"),
            image_grid_thw=inputs.get("image_grid_thw"),
            num_images=inputs.get("num_images"),
            pixel_attention_mask=inputs.get("pixel_attention_mask"),
            spatial_shapes=inputs.get("spatial_shapes"),
            num_tiles=inputs.get("num_tiles"),
            image_sizes=inputs.get("image_sizes"),
            token_type_ids=inputs.get("token_type_ids"),
            mm_token_type_ids=inputs.get("mm_token_type_ids"),
            image_position_ids=inputs.get("image_position_ids"),
        )

        entropy_mask = (self.get_high_entropy_mask(entropies, mask, 1 - self.top_entropy_quantile)
                        if self.top_entropy_quantile < 1.0 else None)

        advantages = inputs["advantages"]
        if advantages.dim() == 1:
            advantages = advantages.unsqueeze(1)
        old_per_token_logps = inputs.get("old_per_token_logps")
        old_per_token_logps = per_token_logps.detach() if old_per_token_logps is None else old_per_token_logps

        # TRL multiplies the per-token loss by these; they are detached, so they are importance weights.
        weights: list[torch.Tensor] = []
        if self.off_policy_mask_threshold is not None:
            sampling_per_token_logps = inputs.get("sampling_per_token_logps", old_per_token_logps)
            weights.append(self.get_off_policy_mask(
                advantages=advantages,
                per_token_logps=per_token_logps,
                sampling_per_token_logps=sampling_per_token_logps,
                mask=mask,
                off_policy_threshold=self.off_policy_mask_threshold,
            ))
        if entropy_mask is not None:
            weights.append(entropy_mask)
        if self.use_vllm and self.vllm_importance_sampling_correction:
            weights.append(inputs["importance_sampling_ratio"])
        rollout_is_weights = None
        for w in weights:
            w = w.to(per_token_logps.dtype)
            rollout_is_weights = w if rollout_is_weights is None else rollout_is_weights * w
        if rollout_is_weights is not None:
            rollout_is_weights = rollout_is_weights.expand_as(per_token_logps).detach()

        if self.beta != 0.0:
            ref_per_token_logps = inputs["ref_per_token_logps"]
            per_token_kl = (
                torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
            )
            if self.args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(per_token_logps - old_per_token_logps)

        mode = "train" if self.model.training else "eval"
        agg_mode, batch_info, divisor = self._normalizer(mode, inputs, per_token_logps.size(0))
        advantages = advantages.expand_as(per_token_logps)
        # The replaced branch: the per-token loss, the weights and the normaliser in one call of the core.
        loss, loss_metrics = compute_policy_loss(
            self.rlplugins_loss,
            log_prob=per_token_logps,
            old_log_prob=old_per_token_logps,
            advantages=advantages,
            response_mask=mask,
            loss_agg_mode=agg_mode,
            config=self.rlplugins_loss_config,
            rollout_is_weights=rollout_is_weights,
            global_batch_info=batch_info,
            on_nonfinite=self.args.rlplugins_on_nonfinite,
        )
        if self.beta != 0.0:
            loss = loss + agg_loss(self.beta * per_token_kl, mask, agg_mode, **batch_info)
        policy_loss = loss.detach()
        loss = loss / divisor

        # From here to the end, TRL 1.16.0 unchanged: entropy bonus, MoE aux loss, metrics.
        if self._entropy_bonus_enabled:
            effective_mask = mask if entropy_mask is None else mask * entropy_mask
            accumulation_factor = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            entropy_loss = (
                (entropies * effective_mask).sum() / effective_mask.sum().clamp(min=1.0) / accumulation_factor
            )
            if self.use_adaptive_entropy:
                apply_coef = self.entropy_coef if self._last_world_entropy <= self.args.entropy_target else 0.0
            else:
                apply_coef = self.entropy_coef
            loss = loss - apply_coef * entropy_loss
            self._metrics[mode]["policy_loss"].append(self.accelerator.gather(policy_loss).nanmean().item())
            if self.use_adaptive_entropy and mode == "train":
                stats = torch.stack([(entropies * effective_mask).sum(), effective_mask.sum()]).detach()
                if self._entropy_window_stats is None:
                    self._entropy_window_stats = stats
                else:
                    self._entropy_window_stats = self._entropy_window_stats + stats
                if self.accelerator.sync_gradients:
                    window_stats = self.accelerator.reduce(self._entropy_window_stats, reduction="sum")
                    world_entropy = (window_stats[0] / window_stats[1].clamp(min=1.0)).item()
                    if world_entropy <= self.args.entropy_target:
                        self.entropy_coef = min(
                            self.entropy_coef + self.args.entropy_coef_delta, self.args.entropy_coef_max
                        )
                    else:
                        self.entropy_coef = max(
                            self.entropy_coef - self.args.entropy_coef_delta, self.args.entropy_coef_min
                        )
                    self._last_world_entropy = world_entropy
                    self._entropy_window_stats = None
            if mode == "train" and self.accelerator.sync_gradients:
                self._metrics[mode]["entropy_coef"].append(self.entropy_coef)

        if self.aux_loss_enabled:
            normalizer = self.current_gradient_accumulation_steps if mode == "train" else 1.0
            loss = loss + self.router_aux_loss_coef * aux_loss / normalizer
            self._metrics[mode]["aux_loss"].append(self.accelerator.gather_for_metrics(aux_loss).mean().item())

        def masked_seq_mean(x: torch.Tensor) -> torch.Tensor:
            return (x * mask).sum(-1) / mask.sum(-1)

        def global_masked_mean(x: torch.Tensor) -> float:
            local_sum, local_count = (x * mask).sum(), mask.sum().float()
            totals = self.accelerator.reduce(torch.stack([local_sum, local_count]), reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        if self.beta != 0.0:
            self._metrics[mode]["kl"].append(global_masked_mean(per_token_kl))
        self._metrics[mode]["entropy"].append(global_masked_mean(entropies))

        self._log_rlplugins_metrics(mode, per_token_logps, old_per_token_logps, advantages, mask, loss_metrics,
                                    global_masked_mean, masked_seq_mean)
        return loss

    def _log_rlplugins_metrics(self, mode, per_token_logps, old_per_token_logps, advantages, mask, loss_metrics,
                               global_masked_mean, masked_seq_mean) -> None:
        # TRL's clip_ratio/* for losses that clip: low = clipped with A < 0, high = clipped with A > 0, as TRL's
        # (r < 1 - eps_low) & (A < 0) and (r > 1 + eps_high) & (A > 0) for its grpo family. maspo reports the
        # tokens PPO eps=0.2 would have clipped (a diagnostic, as its pg_clipfrac).
        with torch.no_grad():
            tok = token_policy_loss(self.rlplugins_loss, log_prob=per_token_logps.detach(),
                                    old_log_prob=old_per_token_logps.detach(), advantages=advantages.detach(),
                                    config=self.rlplugins_loss_config, response_mask=mask.bool())
        if tok.clipped is not None:
            clipped = tok.clipped & mask.bool()
            low = (clipped & (advantages < 0)).float()
            high = (clipped & (advantages > 0)).float()
            for key, value in zip(_CLIP_METRICS, (low, high, clipped.float())):
                self._metrics[mode][key].append(global_masked_mean(value))
            self._metrics[mode]["clip_ratio/low_min"].append(
                nanmin(self.accelerator.gather(masked_seq_mean(low))).item())
            self._metrics[mode]["clip_ratio/high_max"].append(
                nanmax(self.accelerator.gather(masked_seq_mean(high))).item())
        # Our gate statistics, reduced over processes: sums for counts, max/min for extrema, else the mean.
        keys = list(loss_metrics)
        local = torch.tensor([loss_metrics[k] for k in keys], dtype=torch.float64, device=per_token_logps.device)
        gathered = self.accelerator.gather(local.unsqueeze(0)).reshape(-1, len(keys))
        for i, key in enumerate(keys):
            column = gathered[:, i]
            if key in ("valid_tokens", "nonfinite_tokens"):
                value = column.sum()
            elif key.endswith("_max"):
                value = column.max()
            elif key.endswith("_min"):
                value = column.min()
            else:
                value = column.mean()
            self._metrics[mode][f"rlplugins/{key}"].append(value.item())


__all__ = [
    "DEFAULT_NORMALIZER",
    "LOSS_FIELDS",
    "METRIC_KEYS",
    "NORMALIZERS",
    "RLPluginsGRPOConfig",
    "RLPluginsGRPOTrainer",
    "TRL_LOSS_TYPES",
    "loss_field_name",
    "resolve_loss_type",
    "rlplugins_loss_types",
]
