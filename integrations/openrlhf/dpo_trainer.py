"""``SageDPOTrainer``: OpenRLHF's ``DPOTrainer`` whose training pairs come from an rlplugins pair selector.

``fit()``, the loss, the logging and the checkpointing stay OpenRLHF's; after ``DPOTrainer.__init__`` we swap
two attributes:

- ``train_dataloader``: rebuilt by OpenRLHF's own ``strategy.setup_dataloader`` around a ``ScoredSampler``
  (SAGE or any baseline, by name). Its length is constant per epoch (the LR schedule is fixed from
  ``len(train_dataset) // batch_size``): the selector focuses by choosing which pairs fill the epoch, never by
  shortening it. One selector step is one optimizer step (``micro_batch_size * accumulated_gradient`` pairs
  on this rank), so ``--sage.rescore_interval N`` re-scores and reselects every N optimizer steps.
- ``loss_fn``: OpenRLHF's ``DPOLoss`` unchanged, wrapped to pop the batch's dataset indices from the sampler
  and hand the margins the training forward already computed to ``selector.observe_batch`` (free history for
  the stability filter). SAGE selects, it does not reweight: the loss value is OpenRLHF's.

Scoring (``selector.indices_to_score()``) runs no-grad forwards of the policy in eval mode through
OpenRLHF's ``concatenated_forward``; reference log-probs are cached per pair (they never change). Selector
metrics (``selector/*``) join OpenRLHF's logs; the selector state is saved next to each checkpoint and
restored with ``--ckpt.load_enable``.
"""

from __future__ import annotations

import os
import pickle
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.nn as nn

from .version import check_openrlhf_version

check_openrlhf_version()

from openrlhf.trainer.dpo_trainer import DPOTrainer  # noqa: E402  (the original class, before any patch)

from rlplugins.selection import PairSelector, SageConfig, make_selector  # noqa: E402

from ..reference_cache import ReferenceCache  # noqa: E402
from .dpo_sampler import ScoredSampler  # noqa: E402
from .selector_flags import SelectorSpec  # noqa: E402

SELECTOR_STATE_FILE = "rlplugins_selector_rank{rank}.pt"
# The core's selector metrics are unprefixed; OpenRLHF's logs name them selector/<name>.
SELECTOR_METRIC_PREFIX = "selector/"


class SelectedPairsDPOLoss(nn.Module):
    """OpenRLHF's DPO loss, plus the bookkeeping that ties each training batch to its dataset indices.

    Same call signature and 3-tuple return as ``openrlhf.models.DPOLoss``. Under no_grad (``evaluate()``) it
    is exactly the wrapped loss.
    """

    def __init__(self, inner: nn.Module, sampler: ScoredSampler, selector: PairSelector, cache: ReferenceCache):
        super().__init__()
        self.inner = inner
        self.sampler = sampler
        self.selector = selector
        self.cache = cache
        self.last_indices: Optional[torch.Tensor] = None

    def forward(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
        out = self.inner(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)
        if torch.is_grad_enabled():  # a training step (fit); evaluate() runs under no_grad
            indices = self.sampler.pop(policy_chosen_logps.shape[0])
            self.selector.observe_batch(indices, policy_chosen_logps.detach(), policy_rejected_logps.detach(),
                                        reference_chosen_logps.detach(), reference_rejected_logps.detach())
            self.cache.store(indices, reference_chosen_logps, reference_rejected_logps)
            self.last_indices = indices
        return out


def _dp_rank_and_size(strategy: Any) -> tuple[int, int]:
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    mesh = getattr(strategy, "ds_device_mesh", None)
    group = mesh["dp"].get_group() if mesh is not None else None
    return dist.get_rank(group=group), dist.get_world_size(group=group)


class SageDPOTrainer(DPOTrainer):
    """``DPOTrainer`` with selector-driven batches. Extra keyword arguments (else read from ``strategy.args``):

    selector_spec: a ``SelectorSpec`` (default ``strategy.args.rlplugins_selection``, set by the wrapper CLI).
    difficulty: ``[len(train_dataset)]`` floats in [0, 1] for the curriculum tiers (default: the column the
        spec names, read by the wrapper's dataset class; else none, i.e. a single tier).
    """

    def __init__(self, *args: Any, selector_spec: SelectorSpec | None = None,
                 difficulty: Optional[torch.Tensor] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec_value = selector_spec if selector_spec is not None else getattr(self.args, "rlplugins_selection", None)
        if spec_value is None:
            raise ValueError("SageDPOTrainer needs a selector: pass selector_spec=SelectorSpec('sage') or launch "
                             "with python -m rlplugins.integrations.openrlhf.train_dpo --selector sage")
        self.selector_spec = SelectorSpec.coerce(spec_value)
        dataset = self.train_dataloader.dataset
        rank, world = _dp_rank_and_size(self.strategy)
        if world > 1 and getattr(self.args.ds, "zero_stage", 0) == 3:
            # Each rank scores its own shard when its selector asks; under ZeRO-3 every forward is a collective
            # (parameter all-gather), and ranks whose selectors ask at different times would deadlock.
            raise ValueError("--selector with several data-parallel ranks needs --ds.zero_stage 1 or 2 (scoring "
                             "forwards are per rank; ZeRO-3 forwards are collective)")

        micro = int(self.args.train.micro_batch_size)
        batch_size = micro * int(self.strategy.accumulated_gradient)  # pairs per optimizer step on this rank
        shard = len(range(rank, len(dataset), world))
        if shard < batch_size:
            raise ValueError(f"the training set has {len(dataset)} pairs, {shard} on this rank, fewer than one "
                             f"optimizer step's {batch_size} (--train.batch_size {self.args.train.batch_size})")
        config = SageConfig(**{**self.selector_spec.overrides, "beta": float(self.beta),
                               "seed": int(self.args.train.seed)})
        if difficulty is None:
            difficulty = self._dataset_difficulty(dataset)
        self.selector = make_selector(
            self.selector_spec.name,
            num_pairs=len(dataset),
            batch_size=batch_size,
            config=config,
            difficulty=difficulty,
            total_steps=self.epochs * (shard // batch_size),
            rank=rank,
            num_replicas=world,
            score_fn=self._score_pairs,
        )
        self.reference_cache = ReferenceCache(len(dataset))
        self.sampler = ScoredSampler(dataset, self.selector)
        self.train_dataloader = self.strategy.setup_dataloader(
            dataset, micro, True, True, dataset.collate_fn, sampler=self.sampler,
            num_workers=getattr(self.args.data, "dataloader_num_workers", 0),
        )
        self.loss_fn = SelectedPairsDPOLoss(self.loss_fn, self.sampler, self.selector, self.reference_cache)
        self._rank = rank
        self._maybe_load_selector_state()

    # -- data ---------------------------------------------------------------------------------------------
    def _dataset_difficulty(self, dataset: Any) -> Optional[torch.Tensor]:
        spec = self.selector_spec
        key = spec.difficulty_key or spec.pass_rate_key
        if key is None:
            return None
        values = getattr(dataset, "rlplugins_difficulty", None)
        if getattr(dataset, "rlplugins_difficulty_column", None) != key:
            values = None
        if values is None:
            columns = getattr(dataset, "rlplugins_columns", None)
            where = f" (columns: {', '.join(columns)})" if columns else ""
            raise ValueError(f"--selector.{'difficulty_key' if spec.difficulty_key else 'pass_rate_key'} {key}: "
                             f"the training dataset has no column {key!r}{where}")
        values = torch.as_tensor(values, dtype=torch.float64)
        return 1.0 - values if spec.pass_rate_key else values

    def _score_pairs(self, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Selector pull callback: summed log-probs ``(pc, pr, rc, rr)`` of ``indices``, no grad, eval mode."""
        dataset = self.train_dataloader.dataset
        chunk_size = self.selector_spec.score_batch_size or int(self.args.train.micro_batch_size)
        device = next(self.model.parameters()).device
        was_training = self.model.training
        self.model.eval()
        parts: list[tuple[torch.Tensor, ...]] = []
        try:
            with torch.no_grad():
                for chunk in indices.split(chunk_size):
                    chosen_ids, c_mask, reject_ids, r_mask, prompt_id_lens = dataset.collate_fn(
                        [dataset[int(i)] for i in chunk])
                    inputs = (chosen_ids.squeeze(1).to(device), c_mask.squeeze(1).to(device),
                              reject_ids.squeeze(1).to(device), r_mask.squeeze(1).to(device), prompt_id_lens)
                    pc, pr, _, _ = self.concatenated_forward(self.model, *inputs)
                    cached = self.reference_cache.lookup(chunk)
                    if cached is None:
                        rc, rr, _, _ = self.concatenated_forward(self.ref_model, *inputs)
                        self.reference_cache.store(chunk, rc, rr)
                        cached = self.reference_cache.lookup(chunk)
                    parts.append((pc.float().cpu(), pr.float().cpu(), *cached))
        finally:
            if was_training:
                self.model.train()
        return tuple(torch.cat([p[k] for p in parts]) for k in range(4))

    # -- logging and checkpoints ----------------------------------------------------------------------------
    def save_logs_and_checkpoints(self, args, global_step, step_bar, logs_dict=None, client_states=None):
        logs_dict = dict(logs_dict or {})
        logs_dict.update(self.selector_metrics())
        super().save_logs_and_checkpoints(args, global_step, step_bar, logs_dict, client_states)
        if global_step % args.ckpt.save_steps == 0 and not self.disable_ds_ckpt:
            os.makedirs(args.ckpt.path, exist_ok=True)
            torch.save(self.sampler.state_dict(), self._selector_state_path())

    def selector_metrics(self) -> dict[str, float]:
        """The selector's metrics under the names this trainer logs (``selector/<name>``)."""
        return {SELECTOR_METRIC_PREFIX + k: v for k, v in self.selector.metrics().items()}

    def _selector_state_path(self) -> str:
        return os.path.join(self.args.ckpt.path, SELECTOR_STATE_FILE.format(rank=self._rank))

    def _maybe_load_selector_state(self) -> None:
        ckpt = getattr(self.args, "ckpt", None)
        if ckpt is None or not getattr(ckpt, "load_enable", False):
            return
        path = self._selector_state_path()
        if os.path.exists(path):
            # weights_only: the state is tensors and plain containers; a crafted pickle must not run code at resume.
            try:
                state = torch.load(path, weights_only=True)
            except pickle.UnpicklingError as exc:
                raise RuntimeError(f"refusing to load the selector state {path}: it holds objects other than tensors "
                                   f"and plain containers (torch.load weights_only=True): {exc}") from None
            self.sampler.load_state_dict(state)
            self.strategy.print(f"rlplugins: restored the {self.selector_spec.name} selector state from {path}")
