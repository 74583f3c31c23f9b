"""PromptGroupReplayBuffer under two data-parallel ranks.

In veRL 0.9.1's v1 trainer the replay buffer runs once, in the TaskRunner; what reaches the actor ranks is
the sampled batch after ``PPOTrainer._balance_batch`` (pad to a multiple of the DP size and mini-batch,
reorder into sequence-length-balanced partitions) and the dispatch split into ``dp_size`` contiguous chunks.
Here the buffer is built by veRL's own ``_build_replay_buffer``, the batch goes through veRL's real
``_balance_batch`` with a 2-rank actor mesh, and is split with ``KVBatchMeta.chunk`` (the split the dispatcher
applies, ``BatchData.chunk``, after a key -> index translation that needs TransferQueue's controller).
Only TransferQueue's storage is the in-memory fake from conftest.
"""

from __future__ import annotations

import types
from types import SimpleNamespace

from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from rlplugins.integrations.verl.sampler import PromptGroupCheckpointCallback

DP = 2
N = 4  # samples per prompt
GROUPS = 4  # prompt groups per step
FLAGS = [
    "trainer.v1.sampler.custom_sampler.path=pkg://rlplugins.integrations.verl.sampler",
    "trainer.v1.sampler.custom_sampler.name=PromptGroupReplayBuffer",
    "data.gen_batch_size=1",
    f"data.train_batch_size={GROUPS}",
    f"actor_rollout_ref.rollout.n={N}",
    "actor_rollout_ref.actor.ppo_mini_batch_size=2",  # 2 mini-batches of 2 groups x 4 samples per step
    "+trainer.v1.sampler.sampler_kwargs.oversample=1.5",
    "trainer.save_freq=1",
    "trainer.checkpoint_callback_class=rlplugins.integrations.verl.sampler.PromptGroupCheckpointCallback",
]
ORDER = list("ABCDEFGHIJKL")
# Pass counts (of 4) on successive visits. All-correct / all-wrong visits are evicted and refilled; B, D, F, H, J,
# L swing between visits, so the selector's history (restored on resume, or not) changes which groups it picks.
PASSES = {"A": [1], "B": [4, 1], "C": [2], "D": [3, 0], "E": [1, 2], "F": [0, 2], "G": [3], "H": [2, 4],
          "I": [1, 3], "J": [4, 2], "K": [2, 1], "L": [0, 3]}


def with_seq_len(fake_tq) -> None:
    """veRL's agent loop tags every trajectory with its length (``_balance_batch`` reads it); so does the fake."""
    put = fake_tq.put_trajectory

    def put_with_len(key, partition_id, fields, global_steps):
        put(key, partition_id, fields, global_steps)
        uid, sample = key.split("_")[0], int(key.split("_")[1])
        fake_tq.tags[partition_id][key]["seq_len"] = 8 + (int(uid[3:]) * 7 + sample * 3) % 11

    fake_tq.put_trajectory = put_with_len


def build_trainer(ppo_config, rollout, tmp_path):
    """What the v1 PPOTrainer holds for sampling and balancing: its config, buffer, a 2-rank actor mesh."""
    cfg = ppo_config([*FLAGS, f"trainer.default_local_dir={tmp_path}"])
    trainer = SimpleNamespace(config=cfg, trainer_mode="sync", _add_prompts_to_generate=rollout, use_critic=False,
                              global_steps=1, tokenizer=SimpleNamespace(eos_token_id=2),
                              actor_rollout_wg=SimpleNamespace(_dispatch_info={"actor": list(range(DP))}))
    trainer._get_required_batch_multiple = types.MethodType(PPOTrainer._get_required_batch_multiple, trainer)
    trainer.replay_buffer = PPOTrainer._build_replay_buffer(trainer)
    trainer.replay_buffer.poll_interval = 0.0
    return trainer


def train_step(trainer, rollout, fake_tq, global_steps: int) -> tuple[list[str], list[list[str]]]:
    """One step: dispatch prompts, sample, balance, split across the ranks, clear what was trained on.

    Returns the selected group uids and, per rank, the trajectory keys that rank trains on.
    """
    rollout.global_steps = trainer.global_steps = global_steps
    rollout(GROUPS)
    batch, _ = trainer.replay_buffer.sample(global_steps=global_steps, partition_id="train", batch_size=GROUPS)
    selected = list(dict.fromkeys(k.split("_")[0] for k in batch.keys))
    balanced = PPOTrainer._balance_batch(trainer, batch, metrics={})
    shards = [list(chunk.keys) for chunk in balanced.chunk(DP)]
    for key in balanced.keys:
        fake_tq.kv_clear([key], "train")
    return selected, shards


def readable(rollout, shards: list[list[str]]) -> list[list[tuple[str, int]]]:
    """Trajectory keys -> (prompt, sample index): comparable across runs whose uids differ."""
    return [[(rollout.uid_prompt[k.split("_")[0]], int(k.split("_")[1])) for k in shard] for shard in shards]


def test_each_selected_group_is_trained_once_across_the_two_ranks(ppo_config, fake_tq, make_rollout, tmp_path):
    with_seq_len(fake_tq)
    rollout = make_rollout(ORDER, PASSES, n=N)
    trainer = build_trainer(ppo_config, rollout, tmp_path)
    trained: set[str] = set()
    split_groups = 0
    for global_steps in range(1, 6):
        selected, shards = train_step(trainer, rollout, fake_tq, global_steps)
        assert len(selected) == GROUPS
        flat = [k for shard in shards for k in shard]
        assert len(flat) == len(set(flat)), "a trajectory went to two ranks"
        assert [len(s) for s in shards] == [GROUPS * N // DP] * DP  # equal shares, no padding needed
        # every trajectory of every selected group reaches exactly one rank; nothing else does
        assert sorted(flat) == sorted(f"{uid}_{s}_0" for uid in selected for s in range(N))
        assert not trained & set(selected), "a prompt group was trained in two steps"
        trained |= set(selected)
        rank_groups = [{k.split("_")[0] for k in shard} for shard in shards]
        split_groups += len(rank_groups[0] & rank_groups[1])
    assert split_groups > 0  # the balancer did split some groups across ranks, so the check above had teeth


def test_resume_gives_both_ranks_the_same_batches_as_a_straight_run(ppo_config, fake_tq, make_rollout, tmp_path):
    with_seq_len(fake_tq)
    straight_rollout = make_rollout(ORDER, PASSES, n=N)
    straight = build_trainer(ppo_config, straight_rollout, tmp_path / "straight")
    expected = [readable(straight_rollout, train_step(straight, straight_rollout, fake_tq, s)[1]) for s in range(1, 7)]

    fake_tq.tags.clear(), fake_tq.fields.clear()
    rollout = make_rollout(ORDER, PASSES, n=N)
    first = build_trainer(ppo_config, rollout, tmp_path)
    got = [readable(rollout, train_step(first, rollout, fake_tq, s)[1]) for s in range(1, 4)]
    callback = build_checkpoint_callback(first.config)  # as the trainer builds it, then calls it at save_freq
    assert isinstance(callback, PromptGroupCheckpointCallback)
    callback.on_save(trainer=first, global_step=3, checkpoint_dir=str(tmp_path / "global_step_3"))

    # a new TaskRunner: fresh buffer restored from global_step_3 at the first step; the dataloader resumes
    resumed = build_trainer(ppo_config, rollout, tmp_path)
    got += [readable(rollout, train_step(resumed, rollout, fake_tq, s)[1]) for s in range(4, 7)]
    assert got == expected  # per step, per rank: the same trajectories in the same order
    assert resumed.replay_buffer.selector.state_dict() == straight.replay_buffer.selector.state_dict()
