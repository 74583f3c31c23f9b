"""Deterministic randomness for the selectors: every draw comes from an explicit CPU `torch.Generator`."""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = x
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (seed, rank, epoch, ...).

    Chained splitmix64 rather than ``seed + rank`` so that (seed=1, rank=0) and (seed=0, rank=1) do not collide.
    """
    h = 0x1234_5678_9ABC_DEF0
    for p in parts:
        h = _splitmix64(h ^ (int(p) & _MASK64))
    return h & ((1 << 63) - 1)


def make_generator(seed: int) -> torch.Generator:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    return gen


def shuffled(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random permutation of the 1-D tensor ``x``."""
    if x.numel() <= 1:
        return x.clone()
    return x[torch.randperm(x.numel(), generator=gen)]


def take_random(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """``min(k, len(x))`` distinct elements of ``x`` drawn uniformly without replacement."""
    k = max(0, min(int(k), x.numel()))
    if k == 0:
        return x[:0].clone()
    return x[torch.randperm(x.numel(), generator=gen)[:k]]


def take_random_valid(
    x: torch.Tensor, k: int, gen: torch.Generator, invalid: torch.Tensor, attempts: int = 4
) -> torch.Tensor | None:
    """``k`` distinct elements of ``x`` not flagged in ``invalid`` (a mask over their values), uniformly at random,
    in O(k) when most of ``x`` is valid: draws with replacement, keeps first occurrences of valid elements.

    The first occurrences of i.i.d. uniform draws are a uniform sample without replacement, so this has the law of
    `take_random` over the valid elements (not its random stream). None when ``attempts`` rounds of draws did not
    find ``k`` (mostly invalid ``x``, or ``k`` close to ``len(x)``): the caller takes the O(len(x)) path.
    """
    k = int(k)
    got = x[:0]
    for _ in range(attempts):
        draws = x[torch.randint(0, x.numel(), (2 * (k - got.numel()) + 16,), generator=gen)]
        both = torch.cat([got, draws[~invalid[draws]]])
        uniq, inverse = torch.unique(both, return_inverse=True)
        first = torch.full((uniq.numel(),), both.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, inverse, torch.arange(both.numel()), reduce="amin")
        got = both[torch.sort(first).values]
        if got.numel() >= k:
            return got[:k]
    return None


def top_k_random_ties(
    items: torch.Tensor, scores: torch.Tensor, k: int, gen: torch.Generator, *, with_positions: bool = False
):
    """The ``k`` items with the largest scores; equal scores are ordered by a random permutation
    (``with_positions``: also their positions in ``items``).

    A random tie-break matters at step 0, where every margin is 0 and a stable sort would always favour low indices.
    """
    k = max(0, min(int(k), items.numel()))
    if k == 0:
        pos = torch.empty(0, dtype=torch.int64)
    else:
        perm = torch.randperm(items.numel(), generator=gen)
        order = torch.argsort(scores[perm], descending=True, stable=True)
        pos = perm[order[:k]]
    return (items[pos], pos) if with_positions else items[pos]


def weighted_sample_without_replacement(
    items: torch.Tensor, weights: torch.Tensor, k: int, gen: torch.Generator, *, with_positions: bool = False
):
    """``k`` distinct items drawn sequentially with probability proportional to ``weights`` (all > 0)
    (``with_positions``: also their positions in ``items``).

    Gumbel-top-k: the top k of ``log w + Gumbel`` has the law of successive draws without replacement with
    probability ∝ w (Vieira 2014; Kool et al. 2019). One uniform draw per item, so it is deterministic given ``gen``.
    """
    k = max(0, min(int(k), items.numel()))
    if k == 0:
        pos = torch.empty(0, dtype=torch.int64)
        return (items[pos], pos) if with_positions else items[pos]
    w = weights.to(torch.float64)
    if not bool(torch.all(torch.isfinite(w) & (w > 0))):
        raise ValueError("weights must be finite and > 0 for weighted sampling")
    u = torch.rand(items.numel(), generator=gen, dtype=torch.float64)
    u = u.clamp(min=torch.finfo(torch.float64).tiny, max=1.0 - 1e-16)
    keys = torch.log(w) - torch.log(-torch.log(u))
    pos = torch.argsort(keys, descending=True, stable=True)[:k]
    return (items[pos], pos) if with_positions else items[pos]
