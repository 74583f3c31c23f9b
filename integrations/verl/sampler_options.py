"""``trainer.v1.sampler.sampler_kwargs`` of the prompt-group replay buffer: parsing and launch-flag checks.

Imports no veRL (omegaconf only, when the kwargs are a DictConfig node).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, fields
from typing import Any, Callable

from rlplugins._config import check_number, suggest
from rlplugins.selection.prompt_groups import PromptGroupSelectorConfig

logger = logging.getLogger("rlplugins.integrations.verl.sampler")

KWARGS_PREFIX = "trainer.v1.sampler.sampler_kwargs."
_CALLBACK = "rlplugins.integrations.verl.sampler.PromptGroupCheckpointCallback"


@dataclass(frozen=True)
class SamplerOptions:
    """``sampler_kwargs`` read by the veRL wrapper (the selector's own fields are passed through)."""

    metric: str = "reward"  # "reward" = sum of rm_scores; otherwise a key of reward_extra_info
    prompt_key_field: str = "prompts"  # field identifying a prompt across epochs ("prompts" = hash of token ids)
    oversample: float = 1.0  # sync only: dispatch ceil((oversample - 1) * batch) extra prompts per step
    # bound on in-flight prompts (x train_batch_size); default ceil(oversample)
    max_inflight_gen_batches: int | None = None
    train_batch_size: int | None = None  # default: data.train_batch_size, else the first sample()'s batch_size
    checkpoint_dir: str | None = None  # where to look for the state on resume; default: the trainer's resume folder


def _split_kwargs(sampler_kwargs: Any) -> tuple[SamplerOptions, PromptGroupSelectorConfig]:
    raw = dict(sampler_kwargs or {})
    own = {f.name for f in fields(SamplerOptions)}
    selector_fields = set(PromptGroupSelectorConfig.__dataclass_fields__)
    unknown = [k for k in raw if k not in own | selector_fields]
    if unknown:
        names = sorted(own | selector_fields)
        hints = []
        for key in unknown:
            close = suggest(key, names)
            hints.append(f"'{key}'" + (f" (did you mean +{KWARGS_PREFIX}{close}?)" if close else ""))
        raise ValueError(
            f"PromptGroupReplayBuffer got unknown sampler_kwargs {', '.join(hints)}. Valid keys: {', '.join(names)}"
        )
    opts = SamplerOptions(**{k: _plain(v) for k, v in raw.items() if k in own})
    check_number("", KWARGS_PREFIX + "oversample", opts.oversample, low=1.0)
    config = PromptGroupSelectorConfig.from_mapping({k: _plain(v) for k, v in raw.items() if k in selector_fields})
    return opts, config


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig values -> Python values."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, (DictConfig, ListConfig)):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with veRL
        pass
    return value


def _root_config(sampler_kwargs: Any) -> Any:
    """The full trainer config that ``sampler_kwargs`` (a DictConfig node) belongs to, or None."""
    get_root = getattr(sampler_kwargs, "_get_root", None)
    if get_root is None:
        return None
    try:
        root = get_root()
        return root if root is not sampler_kwargs and "trainer" in root else None
    except Exception:  # a plain dict or a detached node: no root to read
        return None


def _select(cfg: Any, path: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    from omegaconf import OmegaConf

    value = OmegaConf.select(cfg, path, default=default)
    return default if value is None else value


def _check_refill(refill_fn: Callable[[int], Any] | None) -> Callable[[int], Any] | None:
    if refill_fn is None:
        return None

    def refill(num_prompts: int) -> Any:
        try:
            return refill_fn(num_prompts)
        except ValueError as exc:
            if "gen_batch_size" in str(exc):
                raise ValueError(
                    f"{exc} PromptGroupReplayBuffer refills single prompts: add data.gen_batch_size=1 to the launch "
                    "flags (veRL sets it only when algorithm.filter_groups is enabled)."
                ) from exc
            raise

    return refill


def _init_options(
    sampler_kwargs: Any, trainer_mode: str
) -> tuple[SamplerOptions, PromptGroupSelectorConfig, Any, int | None, int]:
    opts, config = _split_kwargs(sampler_kwargs)
    root = _root_config(sampler_kwargs)
    train_batch_size = opts.train_batch_size or _select(root, "data.train_batch_size")
    max_inflight = opts.max_inflight_gen_batches or max(1, math.ceil(opts.oversample))
    if root is not None and trainer_mode == "sync":
        gen = _select(root, "data.gen_batch_size")
        dapo = bool(_select(root, "algorithm.filter_groups.enable", False))
        if gen != 1 and not dapo:
            raise ValueError(
                f"PromptGroupReplayBuffer refills evicted groups one prompt at a time, but data.gen_batch_size={gen}: "
                "add data.gen_batch_size=1 to the launch flags."
            )
        callback = _select(root, "trainer.checkpoint_callback_class")
        saves_state = bool(callback) and "PromptGroupCheckpointCallback" in str(callback)
        if _select(root, "trainer.save_freq", -1) > 0 and not saves_state:
            logger.warning(
                "PromptGroupReplayBuffer: checkpoints are saved but the selector state is not; set "
                "trainer.checkpoint_callback_class=%s for an exact resume.", _CALLBACK
            )
    return opts, config, root, train_batch_size, max_inflight


