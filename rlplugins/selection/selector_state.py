"""``state_dict`` / ``load_state_dict`` of `PairSelector`: what is saved, and every check a saved state passes before
anything is restored (identity, fingerprint, tensor shapes and dtypes, indices inside the shard)."""

from __future__ import annotations

from typing import Any

import torch

from .book import MarginBook
from .state import check_tensor_like, config_identity, fingerprint
from .working import WorkingSet


class SelectorState:
    """Mixin of `PairSelector`. The host lists its saved attributes in ``_STATE_FIELDS`` (``_OPTIONAL_FIELDS``: those an
    older state may lack; ``_VARIABLE_SIZE_FIELDS``: index tensors whose length changes during training) and rebuilds
    derived state in ``_after_load``."""

    _STATE_FIELDS: tuple[str, ...]
    _OPTIONAL_FIELDS: tuple[str, ...]
    _VARIABLE_SIZE_FIELDS: tuple[str, ...]

    def _identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "class": type(self).__name__,
            "num_pairs": self.num_pairs,
            "batch_size": self.batch_size,
            "rank": self.rank,
            "num_replicas": self.num_replicas,
            "total_steps": self.total_steps,
            "config": config_identity(self.config),
        }

    def _fingerprint(self) -> str:
        return fingerprint(
            self._identity(), {"shard": self.shard, "tiers": self.tiers, "difficulty": self.difficulty}
        )

    @staticmethod
    def _copy(v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v.clone()
        if isinstance(v, dict):
            return dict(v)
        return v

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain Python values (loads with
        ``torch.load(..., weights_only=True)``)."""
        return {
            "identity": self._identity(),
            "fingerprint": self._fingerprint(),
            "shard": self.shard.clone(),
            "tiers": self.tiers.clone(),
            "generator": self._gen.get_state(),
            "book": self._book.state_dict(),
            "working": self._ws.state_dict(),
            "fields": {key: self._copy(getattr(self, key)) for key in self._STATE_FIELDS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()`` taken from a selector built with the same arguments.

        Refused (``ValueError``, nothing changed) when the identity (name, sizes, rank, config) differs, when the
        fingerprint of shard, tiers and difficulty differs (e.g. another ``difficulty`` with the same tiers), or when a
        tensor has another shape or dtype than this selector's.
        """
        keys = {"identity", "fingerprint", "shard", "tiers", "generator", "book", "working", "fields"}
        if not isinstance(state, dict) or not keys <= state.keys():
            missing = sorted(keys - set(state)) if isinstance(state, dict) else sorted(keys)
            raise ValueError(f"state must be a dict returned by PairSelector.state_dict(); missing {missing}")
        mine = self._identity()
        if state["identity"] != mine:
            theirs = state["identity"] if isinstance(state["identity"], dict) else {}
            diff = sorted(k for k in mine if theirs.get(k) != mine[k])
            raise ValueError(f"state_dict was saved by a different selector: mismatch in {diff}")
        check_tensor_like("shard", state["shard"], self.shard)
        check_tensor_like("tiers", state["tiers"], self.tiers)
        if not torch.equal(state["shard"], self.shard) or not torch.equal(state["tiers"], self.tiers):
            raise ValueError("state_dict was saved with a different shard or different tiers")
        if state["fingerprint"] != self._fingerprint():
            raise ValueError(
                "state_dict was saved by a selector built from different data (difficulty, tiers or shard differ: "
                "fingerprint mismatch); build the selector with the same arguments as the saved run"
            )
        fields = state["fields"]
        missing = [k for k in self._STATE_FIELDS if k not in fields and k not in self._OPTIONAL_FIELDS]
        if missing:
            raise ValueError(f"state_dict lacks fields {missing}")
        present = [k for k in self._STATE_FIELDS if k in fields]
        for key in present:
            cur, new = getattr(self, key), fields[key]
            if isinstance(cur, torch.Tensor) and (key not in self._VARIABLE_SIZE_FIELDS):
                check_tensor_like(key, new, cur)
            elif key in self._VARIABLE_SIZE_FIELDS and new is not None:
                self._check_index_state(key, new)
        gen_state = state["generator"]
        if not isinstance(gen_state, torch.Tensor) or gen_state.shape != self._gen.get_state().shape:
            raise ValueError("state_dict field generator must be a torch.Generator state (uint8 tensor)")
        book = MarginBook(self.num_pairs, self.config.history_size)
        book.load_state_dict(state["book"])
        ws = WorkingSet(self.shard)
        ws.load_state_dict(state["working"])
        self._check_index_state("working", ws.working)
        # every check passed: apply
        self._book, self._ws = book, ws
        for key in present:
            setattr(self, key, self._copy(fields[key]))
        self._gen.set_state(gen_state)
        self._rebuild_unfed()
        self._after_load()

    def _check_index_state(self, key: str, value: object) -> None:
        if not isinstance(value, torch.Tensor) or value.dtype != torch.int64 or value.dim() != 1:
            raise ValueError(f"state_dict field {key} must be a 1-D int64 tensor of shard indices")
        if value.numel() and not bool(((value >= 0) & (value < self.num_pairs)).all() and self._in_shard[value].all()):
            raise ValueError(f"state_dict field {key} holds indices outside this rank's shard")

    def _after_load(self) -> None:
        """Rebuild state derived from the saved fields (subclasses)."""
