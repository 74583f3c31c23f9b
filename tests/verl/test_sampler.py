"""The replay-buffer selector inside veRL 0.9.1's real ReplayBuffer sampling loop.

The buffer is built by veRL's own ``PPOTrainer._build_replay_buffer`` from a composed ppo_trainer config
(``trainer.v1.sampler.custom_sampler`` with a ``pkg://`` path), and sampled through veRL's sync/async
``sample`` loops; only TransferQueue's storage is the in-memory fake from conftest.
"""

from __future__ import annotations

import inspect
import json
from types import SimpleNamespace

import pytest
import torch

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer, ReplayBufferAsync
from verl.trainer.ppo.v1.trainer_base import PPOTrainer

from rlplugins.integrations.verl.sampler import (
    STATE_FILE,
    PromptGroupCheckpointCallback,
    PromptGroupReplayBuffer,
    PromptGroupReplayBufferAsync,
)

SAMPLER = [
    "trainer.v1.sampler.custom_sampler.path=pkg://rlplugins.integrations.verl.sampler",
    "trainer.v1.sampler.custom_sampler.name=PromptGroupReplayBuffer",
    "data.gen_batch_size=1",
    "data.train_batch_size=4",
]
KW = "+trainer.v1.sampler.sampler_kwargs"


def build(ppo_config, rollout, overrides=(), mode: str = "sync"):
    """The buffer exactly as veRL's trainer builds it (constructor contract, refill_fn, sampler_kwargs node)."""
    cfg = ppo_config([*SAMPLER, *overrides])
    trainer = SimpleNamespace(config=cfg, trainer_mode=mode, _add_prompts_to_generate=rollout)
    buffer = PPOTrainer._build_replay_buffer(trainer)
    buffer.poll_interval = 0.0  # FakeRollout finishes prompts at once; nothing to wait for
    return buffer


def step(buffer, rollout, global_steps: int, batch_size: int = 4):
    """One trainer step: prepare_step dispatches a batch, then the buffer samples it."""
    rollout.global_steps = global_steps
    rollout(batch_size)
    batch, metrics = buffer.sample(global_steps=global_steps, partition_id="train", batch_size=batch_size)
    uids = list(dict.fromkeys(k.split("_")[0] for k in batch.keys))
    # what the trainer does after the update: clear the consumed keys
    for key in batch.keys:
        buffer_tq(buffer).kv_clear([key], "train")
    return uids, metrics


def buffer_tq(buffer):
    from verl.trainer.ppo.v1 import replay_buffer

    return replay_buffer.tq


def test_veRLs_hooks_we_override_still_exist_with_the_same_signatures():
    # Pinned: these are private in veRL 0.9.1; a change must fail here, not in a training run.
    assert list(inspect.signature(ReplayBuffer._dapo_filtered_keys).parameters) == ["self", "partition_id"]
    assert list(inspect.signature(ReplayBuffer._select_prompt_uids).parameters) == [
        "self", "partition_id", "sampleable_keys", "batch_size"]
    assert list(inspect.signature(ReplayBuffer._clear_groups).parameters) == ["self", "partition_id", "uids"]
    assert "refill_fn" in inspect.signature(ReplayBuffer.__init__).parameters
    assert issubclass(PromptGroupReplayBuffer, ReplayBuffer) and issubclass(PromptGroupReplayBufferAsync, ReplayBufferAsync)


def test_selects_by_rank_after_dropping_all_correct_and_all_wrong(ppo_config, fake_tq, make_rollout):
    # 4 prompts per step, n = 4 samples. A/B are degenerate (all right / all wrong); the refills bring E..H.
    passes = {"A": [4], "B": [0], "C": [1], "D": [2], "E": [3], "F": [2], "G": [4], "H": [1]}
    rollout = make_rollout(["A", "B", "C", "D", "E", "F", "G", "H"], passes)
    buffer = build(ppo_config, rollout)
    assert isinstance(buffer, PromptGroupReplayBuffer)
    uids, metrics = step(buffer, rollout, 1)
    prompts = [rollout.uid_prompt[u] for u in uids]
    # 2 groups evicted -> 4 refills (veRL's 2 per eviction) -> E, F, G, H; G is all-correct and evicted too
    assert "A" not in prompts and "B" not in prompts and "G" not in prompts
    assert metrics["training/filter_groups/evicted_samples"] == 3
    # candidates C (1/4), D (2/4), E (3/4), F (2/4), H (1/4): medium D, F first, then easy E, then the
    # locked hard tier in arrival order (C before H). (The batch lists keys in TransferQueue order.)
    assert sorted(prompts) == ["C", "D", "E", "F"]
    assert metrics["training/prompt_selector/selected"] == 4
    assert metrics["training/prompt_selector/candidates"] == 5
    assert metrics["training/prompt_selector/selected_locked_tier_frac"] == 0.25
    assert metrics["training/filter_groups/discarded_surplus_samples"] == 1  # H: veRL clears the surplus
    # everything of step 1 left the buffer and the selector's pending set
    assert not fake_tq.tags.get("train") and not buffer.selector._pending


def test_oversample_dispatches_extra_prompts_and_keeps_the_best(ppo_config, fake_tq, make_rollout):
    passes = {p: [k] for p, k in zip("ABCDEF", [1, 2, 3, 1, 2, 1])}
    rollout = make_rollout(list("ABCDEF"), passes)
    buffer = build(ppo_config, rollout, [f"{KW}.oversample=1.5", f"{KW}.curriculum=false"])
    uids, metrics = step(buffer, rollout, 1)
    assert len(rollout.dispatched) == 6 and metrics["training/prompt_selector/oversampled"] == 2
    # curriculum off: hardest first (1/4: A, D, F), then medium B (2/4, before E by arrival) over easy C (3/4)
    assert sorted(rollout.uid_prompt[u] for u in uids) == ["A", "B", "D", "F"]


def test_unstable_prompts_are_deprioritised_across_steps(ppo_config, fake_tq, make_rollout):
    # Prompt P goes from 4/4 to 1/4 (history std 0.375 > 0.25: unstable); Q stays at 1/4. 2 prompts per step,
    # oversample 2: all four prompts are candidates every step.
    passes = {"P": [4, 1], "Q": [1, 1], "R": [2, 2], "S": [2, 2]}
    rollout = make_rollout(["P", "Q", "R", "S"], passes)
    buffer = build(ppo_config, rollout, ["data.train_batch_size=2", f"{KW}.oversample=2.0", f"{KW}.curriculum=false"])
    uids, _ = step(buffer, rollout, 1, batch_size=2)
    assert sorted(rollout.uid_prompt[u] for u in uids) == ["Q", "R"]  # P all-correct: dropped; hard Q first
    uids, metrics = step(buffer, rollout, 2, batch_size=2)
    # step 2: P (1/4, unstable) would rank first on difficulty; it ranks last, behind the stable Q, R, S
    assert sorted(rollout.uid_prompt[u] for u in uids) == ["Q", "R"]
    assert buffer.selector.history(rollout.prompt_key("P")) == (1.0, 0.25)
    assert metrics["training/prompt_selector/selected_unstable_frac"] == 0.0
    assert metrics["training/prompt_selector/candidates"] == 4


def test_prompt_identity_survives_new_uids(ppo_config, fake_tq, make_rollout):
    rollout = make_rollout(["A", "B"], {"A": [1, 2], "B": [3, 2]})
    buffer = build(ppo_config, rollout, ["data.train_batch_size=2"])
    step(buffer, rollout, 1, batch_size=2)
    step(buffer, rollout, 2, batch_size=2)
    assert buffer.selector.history(rollout.prompt_key("A")) == (0.25, 0.5)
    assert buffer.selector.history(rollout.prompt_key("B")) == (0.75, 0.5)


def test_metric_from_reward_extra_info(ppo_config, fake_tq, make_rollout):
    rollout = make_rollout(["A", "B", "C", "D"], {"A": [1], "B": [2], "C": [3], "D": [2]})
    buffer = build(ppo_config, rollout, [f"{KW}.metric=acc"])
    uids, _ = step(buffer, rollout, 1)
    assert len(uids) == 4
    assert any("extra_fields" in names for _, names, _ in fake_tq.batch_get_calls)


def test_validation_partition_returns_every_group_untouched(ppo_config, fake_tq, make_rollout):
    rollout = make_rollout(["A"], {"A": [4]})
    buffer = build(ppo_config, rollout)
    for i in range(3):  # all-correct groups: evicted in train, but validation must see them all
        fake_tq.put_prompt(f"v{i}", "val", "finished", 0)
        fake_tq.put_trajectory(f"v{i}_0_0", "val", {"rm_scores": torch.ones(2)}, 0)
    batch, metrics = buffer.sample(global_steps=0, partition_id="val", batch_size=3)
    assert sorted(batch.keys) == ["v0_0_0", "v1_0_0", "v2_0_0"]
    assert not any(k.startswith("training/prompt_selector") for k in metrics)


def test_checkpoint_callback_saves_and_a_resumed_buffer_restores_exactly(ppo_config, fake_tq, make_rollout, tmp_path):
    order = list("ABCDEFGH")
    passes = {p: [1 + i % 3, 3 - i % 3, 2] for i, p in enumerate(order)}
    flags = [f"trainer.default_local_dir={tmp_path}", f"{KW}.oversample=1.5", "trainer.save_freq=1",
             "trainer.checkpoint_callback_class=rlplugins.integrations.verl.sampler.PromptGroupCheckpointCallback"]

    def run(steps, buffer, rollout):
        return [[rollout.uid_prompt[u] for u in step(buffer, rollout, s)[0]] for s in steps]

    straight_rollout = make_rollout(order, passes)
    straight = build(ppo_config, straight_rollout, flags)
    expected = run(range(1, 6), straight, straight_rollout)

    fake_tq.tags.clear(), fake_tq.fields.clear()
    rollout = make_rollout(order, passes)
    first = build(ppo_config, rollout, flags)
    got = run(range(1, 4), first, rollout)
    from verl.trainer.ppo.checkpoint_callback import build_checkpoint_callback

    callback = build_checkpoint_callback(ppo_config([*SAMPLER, *flags]))  # as the trainer builds it
    assert isinstance(callback, PromptGroupCheckpointCallback)
    ckpt = tmp_path / "global_step_3"
    callback.on_save(trainer=SimpleNamespace(replay_buffer=first), global_step=3, checkpoint_dir=str(ckpt))
    assert json.loads((ckpt / STATE_FILE).read_text())["version"] == 2

    # a new process: fresh buffer, the dataloader resumes where it was, the trainer resumes at step 4
    resumed = build(ppo_config, rollout, flags)
    got += run(range(4, 6), resumed, rollout)
    assert got == expected
    assert resumed.selector.state_dict() == straight.selector.state_dict()


def test_resume_without_saved_state_warns_and_reports(ppo_config, fake_tq, make_rollout, tmp_path, caplog):
    rollout = make_rollout(list("ABCD"), {p: [2] for p in "ABCD"})
    buffer = build(ppo_config, rollout, [f"trainer.default_local_dir={tmp_path}"])
    _, metrics = step(buffer, rollout, 7)
    assert metrics["training/prompt_selector/restored"] == 0.0
    assert "starts fresh" in caplog.text


def test_resume_disabled_does_not_look_for_state(ppo_config, fake_tq, make_rollout, tmp_path):
    rollout = make_rollout(list("ABCD"), {p: [2] for p in "ABCD"})
    buffer = build(ppo_config, rollout, [f"trainer.default_local_dir={tmp_path}", "trainer.resume_mode=disable"])
    _, metrics = step(buffer, rollout, 7)
    assert "training/prompt_selector/restored" not in metrics


def test_configuration_errors_say_what_to_write(ppo_config, fake_tq, make_rollout):
    rollout = make_rollout(["A"], {"A": [1]})
    with pytest.raises(ValueError, match=r"did you mean \+trainer.v1.sampler.sampler_kwargs.oversample"):
        build(ppo_config, rollout, [f"{KW}.oversampel=2"])
    with pytest.raises(ValueError, match="data.gen_batch_size=1"):
        build(ppo_config, rollout, ["data.gen_batch_size=4"])
    with pytest.raises(ValueError, match="custom_sampler.name=PromptGroupReplayBufferAsync"):
        build(ppo_config, rollout, mode="colocate_async")
    with pytest.raises(ValueError, match=r"stability_tau must be in \[0, inf\)"):
        build(ppo_config, rollout, [f"{KW}.stability_tau=-1"])


def test_async_buffer_selects_with_the_same_ranking(ppo_config, fake_tq, make_rollout):
    passes = {"A": [4], "B": [2], "C": [3], "D": [1], "E": [2]}
    rollout = make_rollout(list("ABCDE"), passes)
    buffer = build(
        ppo_config, rollout,
        ["trainer.v1.sampler.custom_sampler.name=PromptGroupReplayBufferAsync", f"{KW}.curriculum=false"],
        mode="colocate_async",
    )
    assert isinstance(buffer, PromptGroupReplayBufferAsync)
    rollout(4)  # A (evicted, refilled with E), B, C, D
    batch, metrics = buffer.sample(global_steps=1, partition_id="train", batch_size=3)
    chosen = [rollout.uid_prompt[u] for u in dict.fromkeys(k.split("_")[0] for k in batch.keys)]
    assert sorted(chosen) == ["B", "D", "E"]  # hard D first (curriculum off), then the medium B, E; easy C left
    assert metrics["training/filter_groups/evicted_samples"] == 1
    assert metrics["training/prompt_selector/selected"] == 3


def test_callback_refuses_a_foreign_buffer():
    with pytest.raises(TypeError, match="PromptGroupReplayBuffer"):
        PromptGroupCheckpointCallback().on_save(trainer=SimpleNamespace(replay_buffer=object()), global_step=1,
                                                checkpoint_dir="/nonexistent")
