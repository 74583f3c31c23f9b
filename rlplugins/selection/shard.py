"""Data-parallel shards: each rank owns a disjoint, seeded part of the dataset."""

from __future__ import annotations

import torch

from ._rng import make_generator, mix_seed

# Salt of the shard permutation: it depends on the seed only, so every rank computes the same permutation and the
# shards are disjoint and cover the dataset.
_SHARD_SALT = 0x5A6E_D5A1


def make_shard(num_pairs: int, seed: int, rank: int, num_replicas: int, batch_size: int) -> torch.Tensor:
    """Sorted indices of rank ``rank``: ``perm[rank::num_replicas]`` of a permutation seeded by ``seed`` only."""
    perm = torch.randperm(num_pairs, generator=make_generator(mix_seed(seed, _SHARD_SALT)))
    # Check the smallest shard (floor(n / replicas)), not this rank's: every rank must fail alike, otherwise some
    # ranks would start training while the others raise.
    if num_pairs // num_replicas < batch_size:
        raise ValueError(
            f"the smallest shard holds {num_pairs // num_replicas} pairs (num_pairs={num_pairs}, "
            f"num_replicas={num_replicas}), fewer than batch_size={batch_size}: batches could not be duplicate-free"
        )
    return torch.sort(perm[rank::num_replicas]).values
