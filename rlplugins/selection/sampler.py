"""`SageSampler`: a `torch.utils.data.Sampler` over dataset indices backed by a `PairSelector`.

The epoch length is constant whatever the selector picks (learning-rate schedules and progress bars are computed from
``len(dataloader)``): selection focuses the data by *which* indices are drawn, never by shortening the epoch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler

from rlplugins._config import check_int

from .base import PairSelector


class SageSampler(Sampler[int]):
    """Yields the indices of successive ``selector.next_batch()`` calls, ``num_samples`` per epoch on this rank.

    ``set_epoch(epoch, consumed_samples=None)`` follows OpenRLHF's ``DistributedSampler``: ``consumed_samples``
    counts all ranks and is divided by ``num_replicas``. Seeding is per ``(seed, rank, epoch)`` through the selector.

    Resume is counted in samples, not selector batches, so a DataLoader batch smaller than the selector batch resumes
    exactly: ``state_dict()`` holds the selector batch being yielded and how many of its indices were handed out.
    Guarantees (docs/selection-api.md): with ``num_workers=0`` the state taken between training steps is exact. With
    ``num_workers > 0`` the loader prefetches, so the sampler has handed out more indices than the trainer consumed;
    pass the trainer's own count to ``set_epoch(epoch, consumed_samples)`` after ``load_state_dict``: the sampler
    rewinds to it exactly when the prefetched indices lie in the current selector batch, and otherwise warns and
    continues from its own position (OpenRLHF's ``ScoredSampler`` replays its recorded prefetch instead: exact).
    """

    def __init__(self, selector: PairSelector, num_samples: int | None = None) -> None:
        if not isinstance(selector, PairSelector):
            raise TypeError(f"selector must be a PairSelector, got {type(selector).__name__}")
        b = selector.batch_size
        if num_samples is None:
            num_samples = (selector.shard.numel() // b) * b
        num_samples = int(check_int("", "num_samples", num_samples, low=1))
        if num_samples % b:
            raise ValueError(f"num_samples must be a positive multiple of selector.batch_size={b}, got {num_samples}")
        self.selector = selector
        self.num_samples = num_samples
        self.num_batches = num_samples // b
        self._epoch = 0
        self._batches_done = 0  # selector batches drawn this epoch (the last one may be partly handed out)
        self._batch: list[int] = []  # the selector batch being handed out
        self._offset = 0  # how many of its indices were handed out
        self._skip = 0  # indices of the next drawn batch already consumed (set_epoch with a mid-batch count)
        self._restored = False

    def __len__(self) -> int:
        return self.num_samples

    @property
    def samples_done(self) -> int:
        """Indices handed out this epoch on this rank."""
        b = self.selector.batch_size
        if self._batch:
            return (self._batches_done - 1) * b + self._offset
        return self._batches_done * b + self._skip

    def set_epoch(self, epoch: int, consumed_samples: int | None = None) -> None:
        epoch = int(check_int("", "epoch", epoch, low=0))
        if check_int("", "consumed_samples", consumed_samples, low=0, allow_none=True) is not None:
            consumed_samples = int(consumed_samples)
        if self._restored and epoch == self._epoch:
            # A restored state already positions this epoch (OpenRLHF calls set_epoch after loading); the trainer's
            # own count can only move it back over indices handed out but never trained on (prefetch).
            self._restored = False
            if consumed_samples:
                self._rewind_to(consumed_samples // self.selector.num_replicas)
            return
        self._restored = False
        self._epoch = epoch
        b = self.selector.batch_size
        per_rank = min((consumed_samples or 0) // self.selector.num_replicas, self.num_samples)
        self._batches_done, self._skip = divmod(per_rank, b)
        self._batch, self._offset = [], 0
        self.selector.set_epoch(epoch)

    def _rewind_to(self, per_rank: int) -> None:
        start = (self._batches_done - 1) * self.selector.batch_size  # first sample of the current batch
        if per_rank == self.samples_done:
            return
        if self._batch and start <= per_rank <= start + len(self._batch):
            self._offset = per_rank - start
            return
        warnings.warn(
            f"SageSampler: the trainer consumed {per_rank} samples of epoch {self._epoch} on this rank but the restored "
            f"state handed out {self.samples_done}; the difference spans more than the current selector batch, so the "
            f"run continues from the sampler's position (exact resume needs the state saved with num_workers=0, or "
            f"a sampler that records its prefetch such as OpenRLHF's ScoredSampler)",
            RuntimeWarning, stacklevel=3,
        )

    def __iter__(self) -> Iterator[int]:
        if self._batches_done >= self.num_batches and self._offset >= len(self._batch):
            # Plain DataLoader loops never call set_epoch: start the next epoch ourselves.
            self.set_epoch(self._epoch + 1)
        self._restored = False
        while True:
            if self._offset < len(self._batch):
                index = self._batch[self._offset]
                self._offset += 1  # before yielding: an index the consumer holds counts as handed out
                yield index
                continue
            if self._batches_done >= self.num_batches:
                return
            self._batch = self.selector.next_batch().tolist()
            self._batches_done += 1
            self._offset, self._skip = min(self._skip, len(self._batch)), 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "batches_done": self._batches_done, "batch": list(self._batch),
                "offset": self._offset, "skip": self._skip, "selector": self.selector.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or not {"epoch", "batches_done", "selector"} <= state.keys():
            raise ValueError("state must be a dict returned by SageSampler.state_dict()")
        self.selector.load_state_dict(state["selector"])
        self._epoch = int(state["epoch"])
        self._batches_done = int(state["batches_done"])
        # States saved before the sample count (no "batch"): the last drawn batch counts as handed out whole.
        self._batch = [int(i) for i in state.get("batch", [])]
        self._offset = int(state.get("offset", len(self._batch)))
        self._skip = int(state.get("skip", 0))
        self._restored = True
