"""OpenRLHF's ``RewardDataset`` plus one per-pair column (difficulty or pass rate) for the curriculum.

``RewardDataset`` keeps only prompt/chosen/rejected and drops pairs whose prompt is too long, so a column of
the raw data no longer lines up with the dataset indices. The subclass re-derives the keep decision with
OpenRLHF's own ``process_data`` (same tokenizer, same rule) and keeps the column for the surviving rows, in
order, as ``rlplugins_difficulty``.
"""

from __future__ import annotations

from typing import Any

import torch

from .version import check_openrlhf_version

check_openrlhf_version()

from openrlhf.datasets import RewardDataset  # noqa: E402  (the original class)


def reward_dataset_with_column(column: str) -> type:
    """A ``RewardDataset`` subclass that also reads ``column`` (a float in [0, 1] per pair) when present."""

    class RewardDatasetWithColumn(RewardDataset):
        def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(dataset, *args, **kwargs)
            self.rlplugins_columns = list(dataset.column_names)
            self.rlplugins_difficulty = None
            self.rlplugins_difficulty_column = column
            if column not in dataset.column_names:
                return  # e.g. an eval set without the column; the trainer reports it if the train set lacks it
            marked = dataset.map(
                lambda row: {"_rlp_keep": self.process_data(row)["prompt"] is not None, "_rlp_value": row[column]},
                remove_columns=dataset.column_names,
            )
            values = [float(v) for keep, v in zip(marked["_rlp_keep"], marked["_rlp_value"]) if keep]
            if len(values) != len(self):
                raise RuntimeError(f"column {column!r}: {len(values)} values for {len(self)} pairs")
            self.rlplugins_difficulty = torch.tensor(values, dtype=torch.float64)

    RewardDatasetWithColumn.__qualname__ = RewardDatasetWithColumn.__name__ = f"RewardDatasetWith_{column}"
    return RewardDatasetWithColumn
