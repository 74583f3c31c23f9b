"""SageSampler: constant epoch length, selector-backed batches, per-epoch and per-rank seeding, exact mid-epoch resume."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

from rlplugins.selection import SELECTOR_NAMES, SageConfig, SageSampler, make_selector


class _Pairs(Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i


def _score_fn(holder):
    """Margins that depend on the pair and on the selector's own step, so two runs in the same state see the same."""

    def fn(idx):
        t = holder["sel"].metrics()["step"]
        u = torch.sin(idx.double() * 1.3 + t * 0.7) * 3.0
        z = torch.zeros_like(u)
        return u / 0.1, z, z, z

    return fn


def _make(name, n=64, b=4, rank=0, replicas=1, seed=0):
    holder = {}
    sel = make_selector(name, num_pairs=n, batch_size=b, config=SageConfig(seed=seed),
                        difficulty=torch.linspace(0, 1, n, dtype=torch.float64), total_steps=50, rank=rank,
                        num_replicas=replicas, score_fn=_score_fn(holder))
    holder["sel"] = sel
    return sel


@settings(max_examples=20)
@given(name=st.sampled_from(SELECTOR_NAMES), n=st.integers(8, 70), b=st.integers(1, 6), replicas=st.integers(1, 3),
       epochs=st.integers(1, 3))
def test_epoch_length_is_constant_and_batches_are_selector_batches(name, n, b, replicas, epochs):
    if n // replicas < b:
        return
    sel = _make(name, n=n, b=b, rank=replicas - 1, replicas=replicas)
    sampler = SageSampler(sel)
    expected = (sel.shard.numel() // b) * b
    assert len(sampler) == expected
    shard = set(sel.shard.tolist())
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        out = list(sampler)
        assert len(out) == expected
        assert set(out) <= shard
        for k in range(0, len(out), b):
            assert len(set(out[k:k + b])) == b  # each selector batch is duplicate-free
    assert sel.metrics()["step"] == epochs * expected // b


def test_dataloader_integration_and_plain_loops_without_set_epoch():
    n, b = 40, 4
    sel = _make("sage", n=n, b=b)
    sampler = SageSampler(sel, num_samples=24)
    loader = DataLoader(_Pairs(n), batch_size=2, sampler=sampler, num_workers=0)
    assert len(loader) == 12
    for _ in range(3):  # no set_epoch: the sampler starts the next epoch itself
        batches = [x.tolist() for x in loader]
        assert len(batches) == 12
    assert sel.metrics()["step"] == 18
    with pytest.raises(ValueError, match="multiple"):
        SageSampler(sel, num_samples=6)
    with pytest.raises(TypeError, match="PairSelector"):
        SageSampler(object())


def test_epochs_and_ranks_are_seeded_deterministically():
    def epoch_indices(rank, epoch):
        sampler = SageSampler(_make("dpo_full", rank=rank, replicas=2))
        sampler.set_epoch(epoch)
        return list(sampler)

    assert epoch_indices(0, 3) == epoch_indices(0, 3)
    assert epoch_indices(0, 3) != epoch_indices(0, 4)
    assert not set(epoch_indices(0, 0)) & set(epoch_indices(1, 0))
    assert sorted(epoch_indices(0, 0) + epoch_indices(1, 0)) == list(range(64))


@pytest.mark.parametrize("name", ["sage", "dynamic_loss", "static_low_gap", "random_subset"])
@pytest.mark.parametrize("stop_at", [3, 9])
def test_mid_epoch_resume_is_exact(name, stop_at):
    # OpenRLHF-style: set_epoch(e, consumed) after loading the state must not disturb the restored position.
    n, b = 48, 4
    sampler = SageSampler(_make(name, n=n, b=b))
    sampler.set_epoch(0)
    it = iter(sampler)
    for _ in range(stop_at * b):
        next(it)
    state = sampler.state_dict()
    rest = list(it)
    sampler.set_epoch(1)
    rest += list(sampler)

    resumed = SageSampler(_make(name, n=n, b=b))
    resumed.load_state_dict(state)
    resumed.set_epoch(0, consumed_samples=stop_at * b)
    rest2 = list(resumed)
    resumed.set_epoch(1)
    rest2 += list(resumed)
    assert len(rest) == (n // b - stop_at) * b + n
    assert rest == rest2


def test_set_epoch_consumed_samples_shortens_only_that_epoch():
    n, b = 48, 4
    sampler = SageSampler(_make("dpo_full", n=n, b=b, replicas=2))
    sampler.set_epoch(0, consumed_samples=16)  # global count: 8 per rank = 2 batches
    assert len(list(sampler)) == len(sampler) - 8
    sampler.set_epoch(1)
    assert len(list(sampler)) == len(sampler)
    with pytest.raises(ValueError, match="epoch"):
        sampler.set_epoch(-1)
    assert math.isfinite(len(sampler))


def _epoch_then_next(sampler, it):
    out = list(it)
    sampler.set_epoch(1)
    return out + list(sampler)


@settings(max_examples=25, deadline=None)
@given(name=st.sampled_from(["sage", "dpo_full", "static_low_gap"]), b=st.integers(2, 8), data=st.data())
def test_resume_is_exact_when_the_loader_batch_is_smaller_than_the_selector_batch(name, b, data):
    """The state counts samples handed out, not selector batches drawn (a DataLoader batch of 1..b-1)."""
    n = 48
    lb = data.draw(st.integers(1, b - 1), label="loader batch")
    sampler = SageSampler(_make(name, n=n, b=b))
    sampler.set_epoch(0)
    loader = DataLoader(_Pairs(n), batch_size=lb, sampler=sampler, num_workers=0)
    steps = data.draw(st.integers(1, len(loader) - 1), label="steps before the checkpoint")
    it = iter(loader)
    done = [x for _ in range(steps) for x in next(it).tolist()]
    state = sampler.state_dict()
    rest = [x for batch in it for x in batch.tolist()]
    sampler.set_epoch(1)
    rest += [x for batch in loader for x in batch.tolist()]

    resumed = SageSampler(_make(name, n=n, b=b))
    resumed.load_state_dict(state)
    resumed.set_epoch(0, consumed_samples=steps * lb)  # OpenRLHF's call after loading
    loader2 = DataLoader(_Pairs(n), batch_size=lb, sampler=resumed, num_workers=0)
    rest2 = [x for batch in loader2 for x in batch.tolist()]
    resumed.set_epoch(1)
    rest2 += [x for batch in loader2 for x in batch.tolist()]
    assert len(done) + len(rest) == 2 * len(sampler)
    assert rest2 == rest


def test_prefetch_within_the_selector_batch_is_rewound_to_the_trainers_count():
    """num_workers > 0: the loader took more indices than the trainer consumed; the trainer's count is exact as long
    as the difference lies in the current selector batch, and otherwise a warning says the resume is approximate."""
    n, b = 48, 8
    sampler = SageSampler(_make("sage", n=n, b=b))
    sampler.set_epoch(0)
    it = iter(sampler)
    handed = [next(it) for _ in range(13)]  # the loader prefetched up to 13; the trainer consumed 10
    state = sampler.state_dict()
    expected = handed[10:] + _epoch_then_next(sampler, it)
    resumed = SageSampler(_make("sage", n=n, b=b))
    resumed.load_state_dict(state)
    resumed.set_epoch(0, consumed_samples=10)
    assert _epoch_then_next(resumed, iter(resumed)) == expected

    far = SageSampler(_make("sage", n=n, b=b))
    far.load_state_dict(state)
    with pytest.warns(RuntimeWarning, match="consumed 4 samples of epoch 0 .* handed out 13"):
        far.set_epoch(0, consumed_samples=4)  # 9 prefetched: more than the current selector batch
