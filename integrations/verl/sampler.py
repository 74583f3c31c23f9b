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

Layout: ``sampler_options`` (sampler_kwargs parsing, launch-flag checks), ``sampler_hooks`` (the two veRL hooks,
reading TransferQueue), ``sampler_state`` (state_dict, checkpoint file, resume folder), and here the two buffers
and the checkpoint callback. Every name below stays importable from this module.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable

from rlplugins.selection.prompt_groups import PromptGroupSelector, PromptGroupSelectorConfig

from .version import check_verl_version

check_verl_version()

from verl.trainer.ppo.checkpoint_callback import CheckpointCallback  # noqa: E402
from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync  # noqa: E402

# The parts, by concern; their public names stay importable from here (docs and launch flags name this module).
from .sampler_hooks import SelectionHooks, _prompt_key  # noqa: E402,F401
from .sampler_options import (  # noqa: E402,F401
    KWARGS_PREFIX,
    SamplerOptions,
    _check_refill,
    _init_options,
    _plain,
    _root_config,
    _select,
    _split_kwargs,
)
from .sampler_state import STATE_FILE, SelectorState  # noqa: E402,F401

logger = logging.getLogger(__name__)

METRIC_PREFIX = "training/prompt_selector/"


class _PromptGroupSelection(SelectionHooks, SelectorState):
    """The selection shared by the sync and async buffers (a mixin over veRL's ReplayBuffer)."""

    selector: PromptGroupSelector
    options: SamplerOptions

    def _setup_selection(self, opts: SamplerOptions, config: PromptGroupSelectorConfig, root: Any) -> None:
        self.options = opts
        self.selector = PromptGroupSelector(config)
        self._root = root
        self._restore_checked = False
        self._step_metrics: dict[str, float] = {}

    def _pop_step_metrics(self) -> dict[str, float]:
        metrics = {METRIC_PREFIX + k: float(v) for k, v in self._step_metrics.items()}
        self._step_metrics = {}
        return metrics


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

    def on_save(
        self, trainer: Any, global_step: int, checkpoint_dir: str, async_save: bool = False, **kwargs: Any
    ) -> None:
        buffer = getattr(trainer, "replay_buffer", None)
        if not isinstance(buffer, _PromptGroupSelection):
            raise TypeError(
                "PromptGroupCheckpointCallback saves PromptGroupReplayBuffer state, but the trainer's replay buffer is "
                f"{type(buffer).__name__}: set trainer.v1.sampler.custom_sampler.name=PromptGroupReplayBuffer or "
                "remove trainer.checkpoint_callback_class"
            )
        path = buffer.save_state(checkpoint_dir)
        logger.info("PromptGroupReplayBuffer state saved to %s (step %d)", path, global_step)
