"""`SageSampler`: a `torch.utils.data.Sampler` over dataset indices backed by a `PairSelector`.

The epoch length is constant whatever the selector picks (learning-rate schedules and progress bars are computed from
``len(dataloader)``): selection focuses the data by *which* indices are drawn, never by shortening the epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler

from .base import PairSelector


class SageSampler(Sampler[int]):
    """Yields the indices of successive ``selector.next_batch()`` calls, ``num_samples`` per epoch on this rank.

    ``set_epoch(epoch, consumed_samples=0)`` follows OpenRLHF's ``DistributedSampler``: ``consumed_samples`` counts all
    ranks and is divided by ``num_replicas``. Seeding is per ``(seed, rank, epoch)`` through the selector.
    """

    def __init__(self, selector: PairSelector, num_samples: int | None = None) -> None:
        if not isinstance(selector, PairSelector):
            raise TypeError(f"selector must be a PairSelector, got {type(selector).__name__}")
        b = selector.batch_size
        if num_samples is None:
            num_samples = (selector.shard.numel() // b) * b
        if isinstance(num_samples, bool) or not isinstance(num_samples, int):
            raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
        if num_samples <= 0 or num_samples % b:
            raise ValueError(f"num_samples must be a positive multiple of selector.batch_size={b}, got {num_samples}")
        self.selector = selector
        self.num_samples = num_samples
        self.num_batches = num_samples // b
        self._epoch = 0
        self._batches_done = 0
        self._restored = False

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int, consumed_samples: int = 0) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        if isinstance(consumed_samples, bool) or not isinstance(consumed_samples, int) or consumed_samples < 0:
            raise ValueError(f"consumed_samples must be an int >= 0, got {consumed_samples!r}")
        if self._restored and epoch == self._epoch:
            # A restored state already positions this epoch exactly (OpenRLHF calls set_epoch after loading).
            self._restored = False
            return
        self._restored = False
        self._epoch = epoch
        per_rank = consumed_samples // self.selector.num_replicas
        self._batches_done = min(self.num_batches, per_rank // self.selector.batch_size)
        self.selector.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        if self._batches_done >= self.num_batches:
            # Plain DataLoader loops never call set_epoch: start the next epoch ourselves.
            self.set_epoch(self._epoch + 1)
        self._restored = False
        while self._batches_done < self.num_batches:
            batch = self.selector.next_batch()
            self._batches_done += 1
            yield from batch.tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batches_done": self._batches_done, "selector": self.selector.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not {"epoch", "batches_done", "selector"} <= state.keys():
            raise ValueError("state must be a dict returned by SageSampler.state_dict()")
        self.selector.load_state_dict(state["selector"])
        self._epoch = int(state["epoch"])
        self._batches_done = int(state["batches_done"])
        self._restored = True
