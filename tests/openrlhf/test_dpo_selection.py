"""OpenRLHF's real DPOTrainer.fit with SAGE (and every baseline) picking the pairs, on a tiny random Llama (T1).

Real: Actor, RewardDataset (tokenisation, prompt-length filter, collate), setup_dataloader
(StatefulDataLoader), DPOLoss, fit/evaluate loops. Stand-in: the DeepSpeed strategy (CPUStrategy).
The checks that matter: every training batch is exactly the pairs whose indices the sampler handed out,
the epoch length and optimizer-step count are OpenRLHF's, scoring rounds happen, and DPO still learns.
"""

from __future__ import annotations

import datasets
import pytest
import rlp_openrlhf_tiny as tiny
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from openrlhf.models import DPOLoss
from rlplugins.integrations.openrlhf.dpo_dataset import RewardDataset, reward_dataset_with_column
from rlplugins.integrations.openrlhf.dpo_trainer import SageDPOTrainer
from rlplugins.integrations.openrlhf.selector_flags import SelectorSpec
from rlplugins.selection import SELECTOR_NAMES


def build(tiny_model_dir, tmp_path, spec, *, pairs=32, epochs=2, num_workers=0, **arg_overrides):
    args = tiny.dpo_args(str(tmp_path / "ckpt"), **{"train.max_epochs": epochs,
                                                     "data.dataloader_num_workers": num_workers, **arg_overrides})
    strategy = tiny.CPUStrategy(args, accumulated_gradient=args.train.batch_size // args.train.micro_batch_size)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = tiny.dpo_rows(pairs + 1)
    rows[3]["prompt"] = " ".join(["w5"] * 80) + " "  # longer than max_len: OpenRLHF drops it, indices shift
    dataset_cls = reward_dataset_with_column("pass_rate")
    train_set = dataset_cls(datasets.Dataset.from_list(rows), tokenizer, 64, strategy, is_dpo=True, num_processors=1)
    torch.manual_seed(0)
    model, ref = tiny.load_actor(tiny_model_dir), tiny.load_actor(tiny_model_dir)
    ref.eval()
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optim, lambda _: 1.0)
    loader = strategy.setup_dataloader(train_set, args.train.micro_batch_size, True, True, train_set.collate_fn)
    trainer = SageDPOTrainer(model=model, ref_model=ref, strategy=strategy, tokenizer=tokenizer, optim=optim,
                             train_dataloader=loader, eval_dataloader=None, scheduler=scheduler, max_norm=1.0,
                             beta=args.model.beta, max_epochs=epochs, selector_spec=spec)
    return trainer, train_set, args


def record_batches(trainer):
    """Capture each training batch's chosen_ids and the indices the loss popped for it."""
    seen, popped = [], []
    forward, loss_fn = trainer.concatenated_forward, trainer.loss_fn

    def concatenated_forward(model, chosen_ids, *rest):
        if model is trainer.model and torch.is_grad_enabled():
            seen.append(chosen_ids.clone())
        return forward(model, chosen_ids, *rest)

    def loss(*logps):
        out = loss_fn(*logps)
        if torch.is_grad_enabled():
            popped.append(loss_fn.last_indices.clone())
        return out

    trainer.concatenated_forward, trainer.loss_fn = concatenated_forward, loss
    return seen, popped


def assert_batches_match_indices(dataset, seen, popped):
    assert len(seen) == len(popped) > 0
    for chosen_ids, indices in zip(seen, popped):
        expected = dataset.collate_fn([dataset[int(i)] for i in indices])[0].squeeze(1)
        assert torch.equal(chosen_ids, expected), f"batch does not hold pairs {indices.tolist()}"


def dpo_loss_on_all_pairs(trainer, dataset):
    pc, pr, rc, rr = trainer._score_pairs(torch.arange(len(dataset)))
    return (-F.logsigmoid(trainer.beta * ((pc.double() - rc) - (pr.double() - rr)))).mean().item()


def test_fit_with_sage(tiny_model_dir, tmp_path):
    spec = SelectorSpec("sage", {"selection_ratio": 0.5, "rescore_interval": 2, "warmup_steps": 2,
                                 "boundary_band": 0.05, "num_tiers": 2}, pass_rate_key="pass_rate")
    trainer, dataset, args = build(tiny_model_dir, tmp_path, spec)
    assert len(dataset) == 32  # 33 rows, one prompt too long: the curriculum column must be re-aligned
    expected = [r["pass_rate"] for i, r in enumerate(tiny.dpo_rows(33)) if i != 3]
    assert torch.equal(dataset.rlplugins_difficulty, torch.tensor(expected, dtype=torch.float64))
    assert isinstance(trainer.loss_fn.inner, DPOLoss)  # the loss itself stays OpenRLHF's
    assert dpo_loss_on_all_pairs(trainer, dataset) == pytest.approx(0.6931, abs=1e-3)  # policy == reference
    seen, popped = record_batches(trainer)
    steps_per_epoch = len(trainer.train_dataloader)
    assert steps_per_epoch == len(dataset) // args.train.batch_size * trainer.strategy.accumulated_gradient

    trainer.fit(args, consumed_samples=0, num_update_steps_per_epoch=len(dataset) // args.train.batch_size)

    assert_batches_match_indices(dataset, seen, popped)
    assert len(seen) == 2 * steps_per_epoch  # constant epoch length, both epochs
    assert trainer.strategy.optimizer_steps == 2 * (len(dataset) // args.train.batch_size)
    assert trainer.sampler.pending == 0  # FIFO drained exactly
    metrics = trainer.selector_metrics()
    assert metrics["selector/rounds"] >= 3 and metrics["selector/pairs_scored"] > 0
    assert metrics["selector/pairs_observed"] == 2 * steps_per_epoch * args.train.micro_batch_size
    assert metrics["selector/working_set_size"] <= len(dataset) // 2  # selection (ratio 0.5), not a reshuffle
    assert dpo_loss_on_all_pairs(trainer, dataset) < 0.6  # and DPO still learns


def test_indices_line_up_with_loader_workers(tiny_model_dir, tmp_path):
    """Prefetching workers make the FIFO longer, never out of order."""
    trainer, dataset, args = build(tiny_model_dir, tmp_path, SelectorSpec("sage", {"rescore_interval": 2}),
                                   pairs=16, epochs=1, num_workers=2)
    seen, popped = record_batches(trainer)
    trainer.fit(args, 0, len(dataset) // args.train.batch_size)
    assert_batches_match_indices(dataset, seen, popped)
    assert trainer.sampler.pending == 0


@pytest.mark.parametrize("name", [n for n in SELECTOR_NAMES if n != "sage"])
def test_every_baseline_by_name(tiny_model_dir, tmp_path, name):
    spec = SelectorSpec(name, {"selection_ratio": 0.5, "rescore_interval": 2}, pass_rate_key="pass_rate")
    trainer, dataset, args = build(tiny_model_dir, tmp_path, spec, pairs=16, epochs=1)
    seen, popped = record_batches(trainer)
    trainer.fit(args, 0, len(dataset) // args.train.batch_size)
    assert_batches_match_indices(dataset, seen, popped)
    assert len(seen) == len(trainer.train_dataloader) and trainer.sampler.pending == 0


def test_selector_state_is_checkpointed_and_restored(tiny_model_dir, tmp_path):
    spec = SelectorSpec("sage", {"rescore_interval": 2})
    trainer, dataset, args = build(tiny_model_dir, tmp_path, spec, pairs=16, epochs=1, **{"ckpt.save_steps": 2})
    trainer.fit(args, 0, len(dataset) // args.train.batch_size)
    saved = torch.load(trainer._selector_state_path(), weights_only=False)
    assert saved["batches_done"] == len(trainer.train_dataloader) // trainer.strategy.accumulated_gradient
    resumed, _, _ = build(tiny_model_dir, tmp_path, spec, pairs=16, epochs=1, **{"ckpt.load_enable": True})
    assert resumed.sampler.state_dict()["batches_done"] == saved["batches_done"]
    assert resumed.selector_metrics()["selector/step"] == trainer.selector_metrics()["selector/step"]


def test_evaluate_uses_plain_dpo_loss(tiny_model_dir, tmp_path):
    trainer, dataset, _ = build(tiny_model_dir, tmp_path, SelectorSpec("dpo_full"), pairs=8, epochs=1)
    eval_loader = trainer.strategy.setup_dataloader(dataset, 2, True, False, dataset.collate_fn, drop_last=False)
    trainer.evaluate(eval_loader, steps=0)  # under no_grad: no FIFO pops, no observations
    assert trainer.sampler.pending == 0 and trainer.selector_metrics()["selector/pairs_observed"] == 0


def test_missing_curriculum_column_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="--selector.difficulty_key hardness: the training dataset has no column"):
        build(tiny_model_dir, tmp_path, SelectorSpec("sage", difficulty_key="hardness"), pairs=8)


def test_plain_reward_dataset_is_untouched():
    assert reward_dataset_with_column("pass_rate").__mro__[1] is RewardDataset
