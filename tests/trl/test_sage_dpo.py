"""SageDPOTrainer through TRL's real ``DPOTrainer.train()`` (tiny Qwen2, CPU): every selector by name, margins
fed back equal to TRL's own, exact resume mid-epoch, data-parallel sharding through accelerate's own batch
sharder, and the offline route.
"""

from __future__ import annotations

import glob
import math
import os

import pytest
import torch
from accelerate.data_loader import DataLoaderShard
from torch.utils.data import DataLoader, SequentialSampler

from rlplugins.integrations.trl.dpo import (
    SELECTOR_STATE_FILE,
    SageDPOConfig,
    SageDPOTrainer,
    SelectorSampler,
    score_preference_pairs,
    select_pairs_offline,
)
from rlplugins.integrations.trl.tiny import preference_dataset, tiny_model, tiny_tokenizer
from rlplugins.selection import SELECTOR_NAMES, SageConfig, make_selector, sage_scores
from trl import DPOConfig, DPOTrainer

SCORING_SELECTORS = {"sage", "sage_no_curriculum", "sage_no_filter", "signal_only", "dynamic_loss", "static_low_gap",
                     "static_high_margin"}


def _args(tmp_path, **overrides):
    base = dict(output_dir=str(tmp_path), use_cpu=True, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                max_steps=3, logging_steps=1, report_to=[], learning_rate=1e-2, save_strategy="no", seed=0,
                disable_tqdm=True, selector="sage", sage_warmup_steps=1, sage_rescore_interval=2,
                selector_difficulty_column="difficulty")
    base.update(overrides)
    return SageDPOConfig(**base)


def _trainer(args, cls=SageDPOTrainer, n=16):
    return cls(model=tiny_model(0), ref_model=tiny_model(0), args=args, train_dataset=preference_dataset(n),
               processing_class=tiny_tokenizer())


class Recorder(SageDPOTrainer):
    """Records, per training micro-step, the pairs it trained on, the margins it fed back, and TRL's own metric."""

    def _compute_loss(self, model, inputs, return_outputs):
        before = len(self._metrics["train"]["rewards/margins"])
        out = super()._compute_loss(model, inputs, return_outputs)
        if self.model.training and torch.is_grad_enabled():
            obs = self.last_observed
            self.steps_seen.append({
                "indices": obs["indices"].tolist(),
                "margin": float((self.beta * ((obs["pc"] - obs["rc"]) - (obs["pr"] - obs["rr"]))).mean()),
                "trl_margin": self._metrics["train"]["rewards/margins"][before],
                "trl_logps_chosen": self._metrics["train"]["logps/chosen"][-1],
                "pc_mean": float(obs["pc"].mean()),
                "loss": float(out.detach()),
            })
        return out


def _run(args, cls=Recorder, resume=None):
    trainer = _trainer(args, cls)
    trainer.steps_seen = []
    drawn = []
    original = trainer.selector.next_batch

    def spy():
        batch = original()
        drawn.append(batch.tolist())
        return batch

    trainer.selector.next_batch = spy
    trainer.train(resume_from_checkpoint=resume)
    return trainer, drawn


def test_margins_fed_back_equal_trl_and_batches_follow_the_selector(tmp_path):
    policy_calls = []

    class Watched(Recorder):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.model.register_forward_hook(
                lambda m, args, kwargs, out: policy_calls.append((torch.is_grad_enabled(), m.training))
                if kwargs.get("fused_lm_head") else None, with_kwargs=True)

    trainer, drawn = _run(_args(tmp_path, max_steps=4), cls=Watched)
    seen = trainer.steps_seen
    # Scoring forwards of the policy: no gradient, eval mode; the training forwards: one per micro-step.
    scoring = [c for c in policy_calls if not c[0]]
    assert scoring and all(training is False for _, training in scoring)
    assert sum(1 for grad, training in policy_calls if grad and training) == len(seen)
    assert len(seen) == 8  # 4 optimizer steps x 2 micro-batches
    for step in seen:
        assert math.isclose(step["margin"], step["trl_margin"], rel_tol=1e-5, abs_tol=1e-6)
        assert math.isclose(step["pc_mean"], step["trl_logps_chosen"], rel_tol=1e-5, abs_tol=1e-5)
    # Each optimizer step trains on exactly one selector batch, in order.
    trained = [seen[2 * i]["indices"] + seen[2 * i + 1]["indices"] for i in range(4)]
    assert trained == drawn[:4]
    metrics = trainer.selector_metrics()
    assert metrics["selector/pairs_observed"] == 16
    assert metrics["selector/pairs_scored"] > 0
    assert any(abs(s["margin"]) > 1e-3 for s in seen)  # the policy moved: margins are not all zero
    logged = trainer.state.log_history[0]
    assert "selector/pairs_scored" in logged and "rewards/margins" in logged


@pytest.mark.parametrize("name", SELECTOR_NAMES)
def test_every_selector_trains(name, tmp_path):
    trainer, drawn = _run(_args(tmp_path, selector=name, max_steps=2, sage_warmup_steps=0))
    assert len(trainer.steps_seen) == 4
    assert all(len(set(b)) == len(b) == 4 for b in drawn)
    scored = trainer.selector_metrics()["selector/pairs_scored"]
    assert (scored > 0) == (name in SCORING_SELECTORS), scored
    assert all(math.isfinite(s["loss"]) for s in trainer.steps_seen)


def test_resume_mid_epoch_continues_exactly(tmp_path):
    # 16 pairs, 4 per optimizer step: 4 steps per epoch; the checkpoint at step 3 is mid-epoch, 6 steps cross epochs.
    full_args = _args(tmp_path / "full", max_steps=6, save_strategy="steps", save_steps=3)
    full, full_drawn = _run(full_args)
    checkpoint = os.path.join(full_args.output_dir, "checkpoint-3")
    assert os.path.exists(os.path.join(checkpoint, SELECTOR_STATE_FILE.format(rank=0)))

    resumed, resumed_drawn = _run(_args(tmp_path / "full", max_steps=6, save_strategy="no"), resume=checkpoint)
    assert [s["indices"] for s in resumed.steps_seen] == [s["indices"] for s in full.steps_seen[6:]]
    assert resumed_drawn == full_drawn[3:3 + len(resumed_drawn)]
    for a, b in zip(resumed.steps_seen, full.steps_seen[6:]):
        assert a["margin"] == pytest.approx(b["margin"], abs=1e-6)
    _assert_same(full.selector.state_dict(), resumed.selector.state_dict())
    for pa, pb in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(pa, pb, atol=1e-6)


def _assert_same(a, b, path="state"):
    assert type(a) is type(b), path
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _assert_same(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype, path
        if a.is_floating_point():
            assert torch.allclose(a, b, equal_nan=True, rtol=1e-6, atol=1e-9), path
        else:
            assert torch.equal(a, b), path
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), path
    else:
        assert a == b, path


def test_resume_needs_the_selector_state(tmp_path):
    args = _args(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    _run(args)
    checkpoint = glob.glob(os.path.join(args.output_dir, "checkpoint-*"))[0]
    os.remove(os.path.join(checkpoint, SELECTOR_STATE_FILE.format(rank=0)))
    with pytest.raises(FileNotFoundError, match="selector cannot resume"):
        _trainer(args).train(resume_from_checkpoint=checkpoint)


@pytest.mark.parametrize("name", ["dpo_full", "sage"])
def test_data_parallel_shards(name, tmp_path):
    micro, accumulation, world, n = 2, 2, 2, 24
    config = SageConfig(seed=3)

    def selector(rank):
        return make_selector(name, num_pairs=n, batch_size=micro * accumulation, config=config, rank=rank,
                             num_replicas=world, total_steps=6)

    per_process = []
    for rank in range(world):
        sampler = SelectorSampler(selector(rank))
        sampler.set_epoch(0)
        got = [b.tolist() for b in DataLoader(list(range(n)), batch_size=micro, sampler=sampler)]
        reference = selector(rank)
        reference.set_epoch(0)
        expected = [reference.next_batch().tolist() for _ in range(len(got) // accumulation)]
        assert got == [b[i:i + micro] for b in expected for i in range(0, len(b), micro)]
        assert len(got) * micro == n // world  # this process's whole shard once per epoch
        per_process.append({i for b in got for i in b})
    assert not per_process[0] & per_process[1]  # disjoint shards
    # The trainer's loader is its own process's, not re-dealt by accelerate.
    loader = _trainer(_args(tmp_path)).get_train_dataloader()
    assert not isinstance(loader, DataLoaderShard) and isinstance(loader.sampler, SelectorSampler)


def test_offline_route_orders_by_sage_score(tmp_path):
    plain = DPOTrainer(model=tiny_model(0), ref_model=tiny_model(1), args=DPOConfig(
        output_dir=str(tmp_path / "score"), use_cpu=True, report_to=[], per_device_train_batch_size=4),
        train_dataset=preference_dataset(12), processing_class=tiny_tokenizer())
    config = SageConfig(beta=plain.beta, boundary_band=0.05)
    selected = select_pairs_offline(plain, config, selection_ratio=0.5)
    pc, pr, rc, rr = score_preference_pairs(plain)
    scores, stable = sage_scores(pc, pr, rc, rr, config)
    assert len(selected) == 6
    ranked = sorted(range(12), key=lambda i: (not bool(stable[i]), -float(scores[i])))[:6]
    assert selected["sage_score"] == pytest.approx([float(scores[i]) for i in ranked], rel=1e-12)
    assert 0 < int(stable.sum()) < 12  # both groups present: the stable-first rule is exercised
    prompts = preference_dataset(12)["prompt"]
    assert selected["prompt"] == [prompts[i] for i in ranked]
    # Then a plain DPOTrainer reads it in that order.
    trainer = DPOTrainer(model=tiny_model(0), ref_model=tiny_model(1), args=DPOConfig(
        output_dir=str(tmp_path / "train"), use_cpu=True, report_to=[], per_device_train_batch_size=2, max_steps=1,
        train_sampling_strategy="sequential", save_strategy="no", disable_tqdm=True), train_dataset=selected,
        processing_class=tiny_tokenizer())
    assert isinstance(trainer._get_train_sampler(), SequentialSampler)
    trainer.train()
    assert trainer.state.global_step == 1


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="selector must be one of"):
        _args(tmp_path, selector="sag")
    with pytest.raises(ValueError, match="selection_ratio"):
        _args(tmp_path, sage_selection_ratio=1.5)
    with pytest.raises(ValueError, match="padding_free"):
        _args(tmp_path, padding_free=True)
    with pytest.raises(ValueError, match="no such column"):
        _trainer(_args(tmp_path, selector_difficulty_column="nope"))
    with pytest.raises(TypeError, match="SageDPOConfig"):
        SageDPOTrainer(model=tiny_model(0), ref_model=tiny_model(0), args=DPOConfig(output_dir=str(tmp_path), use_cpu=True),
                       train_dataset=preference_dataset(8), processing_class=tiny_tokenizer())
