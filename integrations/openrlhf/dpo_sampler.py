"""``ScoredSampler``: the selector's batches as an OpenRLHF ``DistributedSampler``, with pair identities.

OpenRLHF's DPO batches carry no sample index, so the sampler remembers what it yielded: every index goes into
a FIFO, and the trainer's loss pops one index per pair of each training micro-batch. The sampler runs in the
loader's main process and batches arrive in sampler order, so the FIFO lines up with the batches even with
``num_workers > 0`` (prefetching only makes the FIFO longer); the FIFO is saved with the state, so a resumed run
first re-yields what was prefetched but never trained on (exact resume in samples, whatever ``num_workers``). It is
reset at every ``set_epoch``, and
``len`` is a whole number of the selector's batches, so no dropped partial batch can desynchronise it.

Subclassing OpenRLHF's ``DistributedSampler`` matters: ``DPOTrainer.fit`` calls ``set_epoch(epoch,
consumed_samples)`` only on instances of that class, and that call is how a resumed run skips what it consumed.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Iterator

import torch

from .version import check_openrlhf_version

check_openrlhf_version()

from openrlhf.utils.distributed_sampler import DistributedSampler  # noqa: E402

from rlplugins.selection import PairSelector, SageSampler  # noqa: E402


class SamplerDesyncError(RuntimeError):
    """The trainer consumed more pairs than the sampler yielded: batches and indices no longer line up."""


class ScoredSampler(DistributedSampler):
    """Yields ``selector.next_batch()`` indices (``num_samples`` per epoch, constant) and records them."""

    def __init__(self, dataset: Any, selector: PairSelector, *, num_samples: int | None = None) -> None:
        # The parent only provides the OpenRLHF type and its bookkeeping fields; iteration is the selector's.
        super().__init__(dataset, num_replicas=selector.num_replicas, rank=selector.rank, shuffle=False,
                         seed=0, drop_last=True)
        self.selector = selector
        self.inner = SageSampler(selector, num_samples=num_samples)
        self.num_samples = self.inner.num_samples
        self.total_size = self.num_samples * self.num_replicas
        self._pending: deque[int] = deque()
        self._replay: deque[int] = deque()

    def __iter__(self) -> Iterator[int]:
        # After a resume: first the indices the saved run had prefetched but never trained on, in their order.
        while self._replay:
            index = self._replay.popleft()
            self._pending.append(index)
            yield index
        for index in self.inner:
            self._pending.append(index)
            yield index

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int, consumed_samples: int = 0) -> None:
        super().set_epoch(epoch, consumed_samples)
        if self._replay and epoch == self.inner._epoch:
            # Restored: the state is at the sampler's position and the replay covers the prefetch, so the
            # trainer's count is already accounted for (the inner sampler must not rewind as well).
            self.inner.set_epoch(int(epoch))
        else:
            self._replay.clear()
            self.inner.set_epoch(int(epoch), int(consumed_samples))
        self._pending.clear()

    @property
    def pending(self) -> int:
        """Indices yielded but not yet claimed by a training step (prefetched batches)."""
        return len(self._pending)

    def pop(self, n: int) -> torch.Tensor:
        """The dataset indices of the next ``n`` pairs the trainer consumed, in batch order."""
        if n > len(self._pending):
            raise SamplerDesyncError(
                f"the trainer consumed {n} pairs but only {len(self._pending)} sampled indices are pending: the "
                "training batches no longer come from this sampler in order (was train_dataloader replaced?)"
            )
        return torch.tensor([self._pending.popleft() for _ in range(n)], dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        """The inner sampler's state plus ``pending``: indices handed to the loader (prefetch, ``num_workers > 0``)
        that no training step consumed yet. A resumed run yields them first, so resume is exact in samples."""
        return {**self.inner.state_dict(), "pending": [*self._replay, *self._pending]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.inner.load_state_dict(state)
        self._pending.clear()
        self._replay = deque(int(i) for i in state.get("pending", []))
