"""The two decisions the prompt-group replay buffer makes inside veRL 0.9.1's ``ReplayBuffer``.

- which finished groups to evict (``_dapo_filtered_keys``, DAPO's slot): the degenerate ones (pass rate 0 or 1);
- which ``batch_size`` groups to train on (``_select_prompt_uids``): the selector's ranking.

Scores and prompt identities are read from TransferQueue (``verl.trainer.ppo.v1.replay_buffer.tq``, looked up at
call time). The private veRL hooks overridden here are pinned by tests against veRL 0.9.1.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import torch

from rlplugins.selection.prompt_groups import PromptGroupSelector

from .sampler_options import KWARGS_PREFIX, SamplerOptions
from .version import check_verl_version

check_verl_version()

from verl.trainer.ppo.v1 import replay_buffer as _rb  # noqa: E402


def _prompt_key(value: Any) -> str:
    """A stable key for one prompt: a hash of its token ids (tensors) or the value's text."""
    if hasattr(value, "detach"):
        t = value.detach().cpu().contiguous().to(dtype=torch.int64)
        return hashlib.blake2b(t.numpy().tobytes(), digest_size=12).hexdigest()
    data = getattr(value, "data", value)  # NonTensorData
    return str(data)


class SelectionHooks:
    """Mixin over veRL's ReplayBuffer: the eviction and selection hooks (needs ``selector``, ``options`` and
    ``_step_metrics``, set by the buffer)."""

    selector: PromptGroupSelector
    options: SamplerOptions
    _step_metrics: dict[str, float]

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

