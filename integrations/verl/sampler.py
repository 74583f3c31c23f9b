"""veRL 0.9.1 replay-buffer sampler that selects prompt groups with ``rlplugins.selection.prompt_groups``.

Enable (sync trainer, the default ``trainer.v1.trainer_mode``)::

    trainer.v1.sampler.custom_sampler.path=pkg://rlplugins.integrations.verl.sampler
    trainer.v1.sampler.custom_sampler.name=PromptGroupReplayBuffer
    data.gen_batch_size=1                                   # refills are single prompts, as under DAPO
    trainer.checkpoint_callback_class=rlplugins.integrations.verl.sampler.PromptGroupCheckpointCallback
    +trainer.v1.sampler.sampler_kwargs.oversample=1.5       # optional: 50% extra prompts to choose from

It is a thin subclass of veRL's ``ReplayBuffer``: veRL's own DAPO machinery (evict a finished group, refill
two prompts per eviction while the batch is short, drain in-flight requests, discard the surplus) runs
unchanged; only the two decisions are ours:

- which finished groups to evict (``_dapo_filtered_keys``): the degenerate ones (pass rate 0 or 1);
- which ``batch_size`` groups to train on (``_select_prompt_uids``): the selector's ranking (stable before
  unstable prompts, curriculum tiers, success variance) instead of "oldest first".

Scores are read as DAPO reads them: ``metric=reward`` sums ``rm_scores`` over the response, any other name
reads ``reward_extra_info[metric]``. The reward must exist at sampling time (rule-based reward, or
``reward.reward_model.enable_resource_pool=True``). A prompt is identified across epochs by a hash of its
token ids (``prompt_key_field=prompts``), so pass-rate histories survive new rollout uids.

State: ``PromptGroupCheckpointCallback`` writes the selector state into each checkpoint folder
(``rlplugins_prompt_selector.json``); the buffer reloads it at the first training step after a resume, from
the folder the trainer resumed from (``trainer.resume_mode`` / ``default_local_dir`` / ``resume_from_path``).

The private veRL hooks overridden here are pinned by tests against veRL 0.9.1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from rlplugins.selection.prompt_groups import PromptGroupSelector, PromptGroupSelectorConfig

from .compat import require_supported_verl

require_supported_verl()

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback  # noqa: E402
from verl.trainer.ppo.v1 import replay_buffer as _rb  # noqa: E402
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync  # noqa: E402

logger = logging.getLogger(__name__)

STATE_FILE = "rlplugins_prompt_selector.json"
METRIC_PREFIX = "training/prompt_selector/"
KWARGS_PREFIX = "trainer.v1.sampler.sampler_kwargs."


@dataclass(frozen=True)
class SamplerOptions:
    """``sampler_kwargs`` read by the veRL wrapper (the selector's own fields are passed through)."""

    metric: str = "reward"  # "reward" = sum of rm_scores; otherwise a key of reward_extra_info
    prompt_key_field: str = "prompts"  # field identifying a prompt across epochs ("prompts" = hash of token ids)
    oversample: float = 1.0  # sync only: dispatch ceil((oversample - 1) * batch) extra prompts per step
    max_inflight_gen_batches: int | None = None  # bound on in-flight prompts (x train_batch_size); default ceil(oversample)
    train_batch_size: int | None = None  # default: data.train_batch_size, else the first sample()'s batch_size
    checkpoint_dir: str | None = None  # where to look for the state on resume; default: the trainer's resume folder


def _split_kwargs(sampler_kwargs: Any) -> tuple[SamplerOptions, PromptGroupSelectorConfig]:
    raw = dict(sampler_kwargs or {})
    own = {f.name for f in fields(SamplerOptions)}
    selector_fields = set(PromptGroupSelectorConfig.__dataclass_fields__)
    unknown = [k for k in raw if k not in own | selector_fields]
    if unknown:
        import difflib

        names = sorted(own | selector_fields)
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), names, n=1)
            hints.append(f"'{key}'" + (f" (did you mean +{KWARGS_PREFIX}{close[0]}?)" if close else ""))
        raise ValueError(
            f"PromptGroupReplayBuffer got unknown sampler_kwargs {', '.join(hints)}. Valid keys: {', '.join(names)}"
        )
    opts = SamplerOptions(**{k: _plain(v) for k, v in raw.items() if k in own})
    if isinstance(opts.oversample, bool) or not isinstance(opts.oversample, (int, float)) or not opts.oversample >= 1:
        raise ValueError(f"{KWARGS_PREFIX}oversample must be a number >= 1, got {opts.oversample!r}")
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


def _prompt_key(value: Any) -> str:
    """A stable key for one prompt: a hash of its token ids (tensors) or the value's text."""
    if hasattr(value, "detach"):
        t = value.detach().cpu().contiguous().to(dtype=torch.int64)
        return hashlib.blake2b(t.numpy().tobytes(), digest_size=12).hexdigest()
    data = getattr(value, "data", value)  # NonTensorData
    return str(data)


class _PromptGroupSelection:
    """The selection logic shared by the sync and async buffers (a mixin over veRL's ReplayBuffer)."""

    selector: PromptGroupSelector
    options: SamplerOptions

    def _setup_selection(self, opts: SamplerOptions, config: PromptGroupSelectorConfig, root: Any) -> None:
        self.options = opts
        self.selector = PromptGroupSelector(config)
        self._root = root
        self._restore_checked = False
        self._step_metrics: dict[str, float] = {}

    # ---- veRL hook 1: which finished groups to evict (DAPO's slot)

    def _dapo_filtered_keys(self, partition_id: str) -> tuple[set[str], Counter]:
        if partition_id == "val":
            return set(), Counter()
        finished = self.finished_keys[partition_id]
        new = [uid for uid in finished if self.selector.pending(uid) is None]
        if new:
            steps = self.prompt_global_steps[partition_id]
            scores, prompt_keys = self._read_groups(partition_id, new)
            for uid in sorted(new, key=lambda u: (steps.get(u, 0), u)):
                if uid in scores:  # a finished group with no stored trajectory is left to veRL's failure handling
                    self.selector.observe(uid, prompt_keys[uid], scores[uid])
        dropped = {uid for uid in finished if self.selector.should_drop(uid)}
        # veRL logs this breakdown as a table: which pass rate (0.0 or 1.0) the dropped groups had.
        return dropped, Counter(self.selector.pending(uid).pass_rate for uid in dropped)

    def _read_groups(self, partition_id: str, uids: list[str]) -> tuple[dict[str, list[float]], dict[str, str]]:
        wanted = set(uids)
        keys = sorted(k for k in self.partitions[partition_id] if k.split("_")[0] in wanted)
        if not keys:
            return {}, {}
        metric = self.options.metric
        use_reward = metric == "reward"
        data = _rb.tq.kv_batch_get(
            keys=keys, partition_id=partition_id, select_fields=["rm_scores"] if use_reward else ["extra_fields"]
        )
        values = list(data["rm_scores"] if use_reward else data["extra_fields"])
        scores: dict[str, list[float]] = {}
        for key, value in zip(keys, values, strict=True):
            uid = key.split("_")[0]
            if use_reward:
                score = float(value.sum().item())
            else:
                extra = getattr(value, "data", value)
                info = extra.get("reward_extra_info", {}) if isinstance(extra, dict) else {}
                if metric not in info:
                    raise RuntimeError(
                        f"PromptGroupReplayBuffer: trajectory {key!r} has no reward_extra_info[{metric!r}]. "
                        f"Set {KWARGS_PREFIX}metric=reward (sum of rm_scores) or to a key your reward function "
                        f"returns (found: {sorted(info)})"
                    )
                score = float(info[metric])
            scores.setdefault(uid, []).append(score)

        first_key: dict[str, str] = {}
        for key in keys:
            first_key.setdefault(key.split("_")[0], key)
        field = self.options.prompt_key_field
        if field == "uid":  # no identity across epochs: every group is a new prompt
            return scores, {uid: uid for uid in first_key}
        probe = list(first_key.values())
        got = _rb.tq.kv_batch_get(keys=probe, partition_id=partition_id, select_fields=[field])
        if field not in got.keys():
            raise RuntimeError(
                f"PromptGroupReplayBuffer: TransferQueue has no field {field!r}; "
                f"set {KWARGS_PREFIX}prompt_key_field to prompts, index, or uid"
            )
        column = got[field]
        items = column.unbind(0) if hasattr(column, "unbind") else list(column)
        prompt_keys = {key.split("_")[0]: _prompt_key(item) for key, item in zip(probe, items, strict=True)}
        return scores, prompt_keys

    # ---- veRL hook 2: which sampleable groups form the batch

    def _select_prompt_uids(
        self, partition_id: str, sampleable_keys: set[str], batch_size: int
    ) -> tuple[list[str], dict[str, dict], dict[str, int]]:
        uids, partition_snapshot, steps_snapshot = super()._select_prompt_uids(  # type: ignore[misc]
            partition_id, sampleable_keys, batch_size
        )
        if partition_id == "val":
            return uids, partition_snapshot, steps_snapshot
        ordered = sorted(sampleable_keys, key=lambda k: (steps_snapshot.get(k, 0), k))
        selection = self.selector.select(ordered, batch_size)
        self._step_metrics.update(selection.metrics)
        return selection.selected, partition_snapshot, steps_snapshot

    def _clear_groups(self, partition_id: str, uids: set[str]) -> None:
        super()._clear_groups(partition_id, uids)  # type: ignore[misc]
        if partition_id != "val":
            self.selector.discard(uids)

    # ---- state

    def state_dict(self) -> dict[str, Any]:
        return self.selector.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.selector.load_state_dict(state)

    def save_state(self, checkpoint_dir: str | os.PathLike) -> Path:
        """Write the selector state into a checkpoint folder (atomically)."""
        path = Path(checkpoint_dir) / STATE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.state_dict()))
        os.replace(tmp, path)
        return path

    def resume_folder(self, global_steps: int) -> Path | None:
        """The checkpoint folder the trainer resumed from before step ``global_steps``, or None (fresh run)."""
        if global_steps <= 1:
            return None
        if self.options.checkpoint_dir:
            return Path(self.options.checkpoint_dir) / f"global_step_{global_steps - 1}"
        mode = _select(self._root, "trainer.resume_mode", "auto")
        if mode == "disable":
            return None
        if mode == "resume_path":
            path = _select(self._root, "trainer.resume_from_path")
            return Path(path) if path else None
        root_dir = _select(self._root, "trainer.default_local_dir")
        return Path(root_dir) / f"global_step_{global_steps - 1}" if root_dir else None

    def _maybe_restore(self, global_steps: int) -> None:
        if self._restore_checked:
            return
        self._restore_checked = True
        folder = self.resume_folder(global_steps)
        if folder is None:
            return
        path = folder / STATE_FILE
        if path.exists():
            self.load_state_dict(json.loads(path.read_text()))
            self._step_metrics["restored"] = 1.0
            logger.info("PromptGroupReplayBuffer: restored selector state from %s", path)
        else:
            self._step_metrics["restored"] = 0.0
            logger.warning(
                "PromptGroupReplayBuffer: resuming at step %d but %s does not exist; the selector starts "
                "fresh. Set trainer.checkpoint_callback_class=%s.PromptGroupCheckpointCallback to save it.",
                global_steps, path, __name__,
            )

    def _pop_step_metrics(self) -> dict[str, float]:
        metrics = {METRIC_PREFIX + k: float(v) for k, v in self._step_metrics.items()}
        self._step_metrics = {}
        return metrics


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
        if _select(root, "trainer.save_freq", -1) > 0 and not (callback and "PromptGroupCheckpointCallback" in str(callback)):
            logger.warning(
                "PromptGroupReplayBuffer: checkpoints are saved but the selector state is not; set "
                "trainer.checkpoint_callback_class=%s.PromptGroupCheckpointCallback for an exact resume.", __name__
            )
    return opts, config, root, train_batch_size, max_inflight


class PromptGroupReplayBuffer(_PromptGroupSelection, ReplayBuffer):
    """Sync-trainer replay buffer (``trainer.v1.trainer_mode=sync``) that selects prompt groups.

    Built by veRL's ``_build_replay_buffer`` with the custom-sampler constructor contract; everything of ours
    comes from ``trainer.v1.sampler.sampler_kwargs`` (``SamplerOptions`` and ``PromptGroupSelectorConfig``).
    """

    def __init__(
        self,
        trainer_mode: str,
        trainer_config: Any,
        max_off_policy_threshold: int | None,
        max_off_policy_strategy: str,
        sampler_kwargs: Any,
        poll_interval: float = 2.0,
        refill_fn: Callable[[int], Any] | None = None,
        **_: Any,
    ) -> None:
        if trainer_mode != "sync":
            raise ValueError(
                f"PromptGroupReplayBuffer is the sync-trainer buffer, but trainer.v1.trainer_mode={trainer_mode}: "
                "set trainer.v1.sampler.custom_sampler.name=PromptGroupReplayBufferAsync"
            )
        if refill_fn is None:
            raise ValueError("PromptGroupReplayBuffer needs the trainer's refill_fn to replace dropped groups")
        opts, config, root, train_batch_size, max_inflight = _init_options(sampler_kwargs, trainer_mode)
        super().__init__(
            trainer_mode=trainer_mode,
            trainer_config=trainer_config,
            max_off_policy_threshold=max_off_policy_threshold,
            max_off_policy_strategy=max_off_policy_strategy,
            sampler_kwargs=sampler_kwargs,
            poll_interval=poll_interval,
            refill_fn=_check_refill(refill_fn),
            # Turns on veRL's evict/refill/drain/discard loop; our _dapo_filtered_keys decides what is evicted.
            filter_groups_metric=opts.metric,
            train_batch_size=train_batch_size,
            gen_batch_size=1,
            max_inflight_gen_batches=max_inflight,
        )
        self._setup_selection(opts, config, root)

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        if partition_id == "val":
            return super().sample(global_steps, partition_id, batch_size)
        self._maybe_restore(global_steps)
        if self.train_batch_size is None:
            self.train_batch_size = batch_size
        extra = math.ceil((self.options.oversample - 1.0) * batch_size - 1e-9)
        if extra > 0:
            # SAGE's online batch variant: more candidates than the batch, keep the best batch_size.
            self.refill_fn(extra)
            self._step_metrics["oversampled"] = float(extra)
        batch, metrics = super().sample(global_steps, partition_id, batch_size)
        metrics.update(self._pop_step_metrics())
        return batch, metrics


class PromptGroupReplayBufferAsync(_PromptGroupSelection, ReplayBufferAsync):
    """The same selection for the async trainers (``trainer.v1.trainer_mode`` other than sync).

    veRL's async buffer refills one prompt per evicted group and keeps unselected groups for later steps, so
    the selector chooses among the groups finished so far; ``oversample`` does not apply.
    """

    def __init__(
        self,
        trainer_mode: str,
        trainer_config: Any,
        max_off_policy_threshold: int | None,
        max_off_policy_strategy: str,
        sampler_kwargs: Any,
        poll_interval: float = 2.0,
        refill_fn: Callable[[int], Any] | None = None,
        **_: Any,
    ) -> None:
        opts, config, root, train_batch_size, _ = _init_options(sampler_kwargs, trainer_mode)
        if opts.oversample != 1.0:
            raise ValueError(f"{KWARGS_PREFIX}oversample applies to trainer.v1.trainer_mode=sync only; remove it")
        super().__init__(
            trainer_mode=trainer_mode,
            trainer_config=trainer_config,
            max_off_policy_threshold=max_off_policy_threshold,
            max_off_policy_strategy=max_off_policy_strategy,
            sampler_kwargs=sampler_kwargs,
            poll_interval=poll_interval,
            refill_fn=refill_fn,
            filter_groups_metric=opts.metric,
            train_batch_size=train_batch_size,
        )
        self._setup_selection(opts, config, root)

    def sample(self, global_steps: int, partition_id: str, batch_size: int):
        if partition_id != "val":
            self._maybe_restore(global_steps)
        batch, metrics = super().sample(global_steps, partition_id, batch_size)
        if partition_id != "val":
            metrics.update(self._pop_step_metrics())
        return batch, metrics


class PromptGroupCheckpointCallback(CheckpointCallback):
    """``trainer.checkpoint_callback_class``: saves the selector state into every checkpoint folder."""

    def on_save(self, trainer: Any, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs: Any) -> None:
        buffer = getattr(trainer, "replay_buffer", None)
        if not isinstance(buffer, _PromptGroupSelection):
            raise TypeError(
                "PromptGroupCheckpointCallback saves PromptGroupReplayBuffer state, but the trainer's replay buffer is "
                f"{type(buffer).__name__}: set trainer.v1.sampler.custom_sampler.name=PromptGroupReplayBuffer or "
                "remove trainer.checkpoint_callback_class"
            )
        path = buffer.save_state(checkpoint_dir)
        logger.info("PromptGroupReplayBuffer state saved to %s (step %d)", path, global_step)
