"""``SageDPOConfig`` / ``SageDPOTrainer``: TRL's ``DPOTrainer`` whose training pairs come from an rlplugins pair
selector (SAGE or any baseline, by name), plus the offline route (``select_pairs_offline``).

    args = SageDPOConfig(output_dir="out", selector="sage", sage_selection_ratio=0.5, beta=0.1, ...)
    trainer = SageDPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=pairs, processing_class=tok)

The loss, its metrics, the optimizer and checkpointing stay TRL's. What changes:

- **Sampler.** The training loader (``get_train_dataloader``; ``_get_train_sampler`` returns the same sampler) reads
  ``selector.next_batch()``. One selector batch is one optimizer step on this process
  (``per_device_train_batch_size * gradient_accumulation_steps`` pairs), so ``sage_rescore_interval=N`` re-scores
  every N optimizer steps. The epoch length is TRL's (this process's share of ``len(train_dataset)``, in whole
  steps), so the LR schedule does not change.
- **Scoring.** When the selector asks (``indices_to_score``, pull mode), the policy runs forward-only, in eval mode
  without gradients, on those pairs through TRL's fused LM head (``score_preference_pairs``); reference log-probs come
  from TRL's ``compute_ref_log_probs`` (or the precomputed columns) and are cached per pair.
- **Feedback.** The per-pair log-probs of each training forward (captured with forward hooks on the policy and the
  reference model, summed as TRL sums them, ``ld_alpha`` included) go to ``selector.observe_batch``; each batch carries
  its dataset indices in an ``rlplugins_index`` column the collator turns into a tensor and the loss drops.
- **Data parallelism.** Each process runs its own selector on its own shard (``rank=process_index``,
  ``num_replicas=num_processes``) and reads it through its own loader, which accelerate does not re-shard. The
  loader has no workers and reads lazily, so step ``k``'s pairs are drawn (and scored) after step ``k - 1``'s update.
- **Checkpoints.** ``rlplugins_selector_rank{r}.pt`` next to each checkpoint holds the selector/sampler state at that
  step boundary and the reference cache; ``train(resume_from_checkpoint=...)``
  restores it, and a mid-epoch resume continues the interrupted selection exactly.
- **Logs.** ``selector/*`` metrics join TRL's.

Offline route (no custom trainer): ``select_pairs_offline(trainer)`` scores every pair once with any DPOTrainer's
policy and reference, and returns the training set ordered by SAGE score (kept pairs only); train a plain
``DPOTrainer`` on it with ``DPOConfig(train_sampling_strategy="sequential")``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Sampler

from .version import check_trl_version

check_trl_version()

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402

from rlplugins._config import check_choice, check_int  # noqa: E402
from rlplugins.selection import (  # noqa: E402
    SELECTOR_NAMES,
    PairSelector,
    SageConfig,
    SageSampler,
    make_selector,
    sage_scores,
)

from ..reference_cache import ReferenceCache  # noqa: E402

INDEX_COLUMN = "rlplugins_index"
SELECTOR_STATE_FILE = "rlplugins_selector_rank{rank}.pt"
# The core's selector metrics are unprefixed; TRL's logs name them selector/<name>.
SELECTOR_METRIC_PREFIX = "selector/"
# SageConfig fields the trainer sets itself: the DPO beta and the training seed.
_FROM_TRAINER = {"beta": "beta", "seed": "seed"}


def _selector_fields() -> tuple[list[tuple[str, Any, Any]], dict[str, str]]:
    hints = typing.get_type_hints(SageConfig)
    taken = {f.name for f in dataclasses.fields(DPOConfig)}
    fields, mapping = [], {}
    for f in dataclasses.fields(SageConfig):
        if f.name in _FROM_TRAINER:
            continue
        arg = f"sage_{f.name}"
        if arg in taken:
            raise RuntimeError(f"selector field {arg!r} collides with DPOConfig.{arg}")
        fields.append((arg, hints[f.name], field(default=f.default, metadata={
            "help": f"rlplugins SageConfig.{f.name} (default {f.default!r}), shared by every selector."})))
        mapping[arg] = f.name
    return fields, mapping


_FIELDS, SELECTOR_FIELDS = _selector_fields()
_SelectorFields = dataclasses.make_dataclass("_SageSelectorFields", _FIELDS, bases=(DPOConfig,))


@dataclass
class SageDPOConfig(_SelectorFields):
    """``DPOConfig`` plus the pair selector: ``selector`` (one of ``SELECTOR_NAMES``), every ``SageConfig`` field as
    ``sage_<field>`` (beta and seed are the DPO ``beta`` and the training ``seed``), the curriculum difficulty source
    and the scoring chunk size."""

    selector: str = field(default="sage", metadata={"help": "pair selector: " + ", ".join(SELECTOR_NAMES)})
    selector_difficulty_column: str | None = field(default=None, metadata={
        "help": "training-set column with per-pair difficulty in [0, 1] (curriculum tiers); default: one tier"})
    selector_pass_rate_column: str | None = field(default=None, metadata={
        "help": "training-set column with per-pair pass rate in [0, 1]; difficulty = 1 - pass rate"})
    selector_score_batch_size: int | None = field(default=None, metadata={
        "help": "pairs per forward-only scoring chunk (default: per_device_train_batch_size)"})

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("", "selector", self.selector, SELECTOR_NAMES)
        if self.selector_difficulty_column and self.selector_pass_rate_column:
            raise ValueError("set selector_difficulty_column or selector_pass_rate_column, not both")
        check_int("", "selector_score_batch_size", self.selector_score_batch_size, low=1, allow_none=True)
        if self.padding_free:
            raise ValueError("padding_free=True packs a batch into one row; SageDPOTrainer needs per-pair rows to "
                             "attribute margins to pairs. Set padding_free=False.")
        self.selector_config()  # validates the sage_* fields now

    def selector_config(self) -> SageConfig:
        values = {name: getattr(self, arg) for arg, name in SELECTOR_FIELDS.items()}
        values.update({name: getattr(self, attr) for name, attr in _FROM_TRAINER.items()})
        values["beta"] = float(values["beta"])
        return SageConfig(**values)


# ------------------------------------------------------------------------------------------------ log-probs


def _sequence_logps(per_token_logps: torch.Tensor, shift_completion_mask: torch.Tensor,
                    ld_alpha: float | None) -> torch.Tensor:
    """Per-sequence sums as TRL 1.16.0's ``DPOTrainer._compute_loss`` forms them (LD-DPO's ``ld_alpha`` included)."""
    if ld_alpha is None:
        return per_token_logps.sum(dim=1)
    comp_pos = shift_completion_mask.cumsum(dim=1)
    comp_lens = shift_completion_mask.sum(dim=1).long()
    chosen_lens, rejected_lens = comp_lens.chunk(2, dim=0)
    shared_lens = torch.minimum(chosen_lens, rejected_lens)
    shared_lens = torch.cat([shared_lens, shared_lens], dim=0).to(per_token_logps.device)
    shared_mask = (comp_pos > 0) & (comp_pos <= shared_lens.unsqueeze(1))
    tail_mask = comp_pos > shared_lens.unsqueeze(1)
    return (per_token_logps * shared_mask).sum(dim=1) + ld_alpha * (per_token_logps * tail_mask).sum(dim=1)


def _pair_logps(log_probs: torch.Tensor, completion_mask: torch.Tensor, ld_alpha: float | None):
    shift_completion_mask = completion_mask[..., 1:]
    per_token = log_probs[:, -shift_completion_mask.size(1):]
    return _sequence_logps(per_token, shift_completion_mask, ld_alpha).chunk(2, dim=0)


def score_preference_pairs(trainer: DPOTrainer, indices: torch.Tensor | None = None, *, batch_size: int | None = None,
                           cache: ReferenceCache | None = None) -> tuple[torch.Tensor, ...]:
    """Forward-only summed log-probs ``(pc, pr, rc, rr)`` (float64, CPU) of ``trainer.train_dataset[indices]``.

    The policy runs in eval mode without gradients through TRL's fused LM head; the reference through TRL's own
    ``compute_ref_log_probs`` (which handles PEFT adapters), or the precomputed ``ref_*_logps`` columns.
    """
    dataset = trainer.train_dataset
    if indices is None:
        indices = torch.arange(len(dataset))
    indices = torch.as_tensor(indices, dtype=torch.long).cpu()
    chunk_size = int(batch_size or trainer.args.per_device_train_batch_size)
    model = trainer.accelerator.unwrap_model(trainer.model)
    was_training = model.training
    model.eval()
    parts: list[tuple[torch.Tensor, ...]] = []
    try:
        with torch.no_grad():
            for chunk in indices.split(chunk_size):
                batch = trainer.data_collator([dataset[int(i)] for i in chunk])
                batch.pop(INDEX_COLUMN, None)
                batch = trainer._prepare_inputs(batch)
                model_kwargs = {k: v for k, v in batch.items()
                                if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
                labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
                out = model(**model_kwargs, use_cache=False, labels=labels, fused_lm_head=True)
                pc, pr = _pair_logps(out.log_probs, batch["completion_mask"], trainer.ld_alpha)
                cached = cache.lookup(chunk) if cache is not None else None
                if cached is None:
                    if trainer.precompute_ref_logps:
                        rc, rr = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
                    else:
                        rc, rr = trainer.compute_ref_log_probs(trainer.ref_model or trainer.model, batch)
                    if cache is not None:
                        cache.store(chunk, rc, rr)
                    cached = (rc.detach().to("cpu", torch.float64), rr.detach().to("cpu", torch.float64))
                parts.append((pc.to("cpu", torch.float64), pr.to("cpu", torch.float64), *cached))
    finally:
        if was_training:
            model.train()
    return tuple(torch.cat([p[k] for p in parts]) for k in range(4))


def select_pairs_offline(trainer: DPOTrainer, config: SageConfig | None = None, *,
                         selection_ratio: float | None = None, batch_size: int | None = None) -> Any:
    """The offline route: score every training pair once and return the kept pairs ordered by SAGE score.

    Pairs are ranked stable-first, then by descending score (``sage_scores`` with ``config``, default
    ``SageConfig(beta=trainer.beta)``); the first ``ceil(selection_ratio * N)`` are kept (default
    ``config.selection_ratio``). Columns ``sage_score``, ``sage_margin`` and ``sage_stable`` are added. Train on the
    result with ``DPOConfig(train_sampling_strategy="sequential")`` to see the pairs in this order.
    """
    if config is None:
        config = SageConfig(beta=float(trainer.beta))
    ratio = config.selection_ratio if selection_ratio is None else float(selection_ratio)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"selection_ratio must be in (0, 1], got {ratio}")
    pc, pr, rc, rr = score_preference_pairs(trainer, batch_size=batch_size)
    scores, stable = sage_scores(pc, pr, rc, rr, config)
    margins = config.beta * ((pc - rc) - (pr - rr))
    # Stable pairs first, each group by descending score; ties keep dataset order (stable sort).
    order = torch.sort(-scores, stable=True).indices
    order = order[torch.sort((~stable[order]).to(torch.int8), stable=True).indices]
    keep = order[: math.ceil(ratio * len(order))]
    dataset = trainer.train_dataset
    if INDEX_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(INDEX_COLUMN)
    selected = dataset.select(keep.tolist())
    selected = selected.add_column("sage_score", scores[keep].tolist())
    selected = selected.add_column("sage_margin", margins[keep].tolist())
    return selected.add_column("sage_stable", stable[keep].tolist())


# ------------------------------------------------------------------------------------------------ sampler


class SelectorSampler(Sampler[int]):
    """This process's ``selector.next_batch()`` indices as a training sampler (``SageSampler`` underneath).

    Read lazily by a loader without workers, so batch ``k`` is drawn (and scored, if the selector asks) when the
    Trainer fetches optimizer step ``k``'s micro-batches, after step ``k - 1``'s update: selection always sees the
    current policy, and the state at a checkpoint is the state at the step boundary.
    """

    def __init__(self, selector: PairSelector) -> None:
        self.selector = selector
        self.inner = SageSampler(selector)
        self._skip_batches = 0
        self._epoch_set: int | None = None

    def __len__(self) -> int:
        return len(self.inner)

    def set_epoch(self, epoch: int) -> None:
        # A repeated call for the same epoch must not restart the pass, least of all the one a resume restored.
        if epoch == self._epoch_set:
            return
        self._epoch_set = int(epoch)
        self.inner.set_epoch(int(epoch))

    def __iter__(self) -> Iterator[int]:
        # After a mid-epoch resume the Trainer skips the batches it already trained on; these indices stand in for
        # them (skipped batches are never loaded), so the selector continues exactly where it stopped.
        for _ in range(self._skip_batches * self.selector.batch_size):
            yield 0
        self._skip_batches = 0
        yield from self.inner

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict()

    def restore(self, state: dict[str, Any], *, skip_consumed: bool) -> None:
        self.inner.load_state_dict(state)
        self._epoch_set = None
        done = int(state["batches_done"])
        if done >= self.inner.num_batches:
            self._skip_batches = 0  # the epoch was complete: the next epoch starts as in an uninterrupted run
        elif skip_consumed:
            self._skip_batches = done
        else:
            # ignore_data_skip: the Trainer replays the epoch from its start, so start a full pass now.
            epoch = int(state["epoch"])
            self.inner.set_epoch(epoch)  # consumes the "restored" mark
            self.inner.set_epoch(epoch)


class _SelectorDataLoader(DataLoader):
    """A plain (per-process, not accelerate-sharded) loader whose ``set_epoch`` reaches the selector sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)


class _IndexCollator:
    """TRL's collator plus the dataset indices of the batch as ``batch["rlplugins_index"]``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(examples)
        if examples and INDEX_COLUMN in examples[0]:
            batch[INDEX_COLUMN] = torch.tensor([int(e[INDEX_COLUMN]) for e in examples], dtype=torch.long)
        return batch


class _LogProbCapture:
    """Collects ``log_probs`` of every fused-LM-head forward of the given modules, in call order."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.outputs: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook, with_kwargs=True) for m in modules]

    def _hook(self, module, args, kwargs, output) -> None:
        if kwargs.get("fused_lm_head"):
            self.outputs.append(output.log_probs.detach())

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()


# ------------------------------------------------------------------------------------------------ trainer


class SageDPOTrainer(DPOTrainer):
    """``DPOTrainer`` with selector-driven batches (see the module docstring). ``args`` must be a ``SageDPOConfig``."""

    def __init__(self, model: Any, ref_model: Any = None, args: SageDPOConfig | None = None, *a: Any, **kw: Any):
        if not isinstance(args, SageDPOConfig):
            raise TypeError(f"SageDPOTrainer needs args=SageDPOConfig(...), got {type(args).__name__}")
        super().__init__(model, ref_model, args, *a, **kw)
        if self._is_vision_dataset:
            raise ValueError("SageDPOTrainer supports text preference datasets only")
        dataset = self.train_dataset
        if not hasattr(dataset, "add_column"):
            raise TypeError(f"SageDPOTrainer needs a map-style datasets.Dataset, got {type(dataset).__name__}")
        if INDEX_COLUMN in dataset.column_names:
            raise ValueError(f"the training set already has a column {INDEX_COLUMN!r}; rename it")
        self.train_dataset = dataset = dataset.add_column(INDEX_COLUMN, list(range(len(dataset))))
        self.data_collator = _IndexCollator(self.data_collator)

        rank, world = self.accelerator.process_index, self.accelerator.num_processes
        if world > 1 and (self.is_fsdp_enabled or (self.is_deepspeed_enabled and getattr(
                self.accelerator.state.deepspeed_plugin, "zero_stage", 0) == 3)):
            # Each process scores its own shard when its own selector asks; FSDP / ZeRO-3 forwards are collective
            # and processes asking at different steps would deadlock.
            raise ValueError("SageDPOTrainer with several processes needs DDP or DeepSpeed ZeRO-1/2: scoring forwards "
                             "are per process, FSDP and ZeRO-3 forwards are collective")
        if args.dataloader_num_workers:
            raise ValueError("SageDPOTrainer needs dataloader_num_workers=0: loader workers prefetch batches, so the "
                             "selector would draw (and score) pairs steps before they are trained on")
        micro = int(args.per_device_train_batch_size)
        batch_size = micro * int(args.gradient_accumulation_steps)
        shard = len(range(rank, len(dataset), world))
        if shard < batch_size:
            raise ValueError(f"the training set has {len(dataset)} pairs, {shard} on this process, fewer than one "
                             f"optimizer step's {batch_size} (per_device_train_batch_size * "
                             "gradient_accumulation_steps)")
        steps_per_epoch = shard // batch_size
        total_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs) * steps_per_epoch
        self.selector = make_selector(
            args.selector,
            num_pairs=len(dataset),
            batch_size=batch_size,
            config=args.selector_config(),
            difficulty=self._difficulty(dataset),
            total_steps=int(total_steps),
            rank=rank,
            num_replicas=world,
            score_fn=self._score_pairs,
        )
        self.reference_cache = None if args.sync_ref_model else ReferenceCache(len(dataset))
        self.selector_sampler = SelectorSampler(self.selector)
        self.last_observed: dict[str, torch.Tensor] | None = None

    # -- data --------------------------------------------------------------------------------------------------
    def _difficulty(self, dataset: Any) -> torch.Tensor | None:
        column = self.args.selector_difficulty_column or self.args.selector_pass_rate_column
        if column is None:
            return None
        if column not in dataset.column_names:
            which = "selector_difficulty_column" if self.args.selector_difficulty_column else "selector_pass_rate_column"
            raise ValueError(f"{which}={column!r}: the training set has no such column (columns: "
                             f"{', '.join(dataset.column_names)})")
        values = torch.as_tensor(dataset[column], dtype=torch.float64)
        return 1.0 - values if self.args.selector_pass_rate_column else values

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if self._signature_columns is not None and INDEX_COLUMN not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, INDEX_COLUMN]

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler:
        return self.selector_sampler

    def get_train_dataloader(self) -> DataLoader:
        # Not accelerate-prepared: accelerate would deal one global sampler's batches out to processes and read one
        # batch ahead (drawing, and scoring, the next step's pairs before this step's update). Here each process
        # reads its own selector's shard lazily; the Trainer moves each batch to the device in _prepare_inputs.
        dataset = self._remove_unused_columns(self.train_dataset, description="Training")
        return _SelectorDataLoader(dataset, batch_size=self._train_batch_size, sampler=self.selector_sampler,
                                   collate_fn=self.data_collator, num_workers=0,
                                   pin_memory=self.args.dataloader_pin_memory, drop_last=False)

    def _score_pairs(self, indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return score_preference_pairs(self, indices, batch_size=self.args.selector_score_batch_size,
                                      cache=self.reference_cache)

    # -- loss: TRL's, plus the margins of the training forward fed back -----------------------------------------
    def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool):
        inputs = dict(inputs)
        indices = inputs.pop(INDEX_COLUMN, None)
        training = self.model.training and torch.is_grad_enabled() and indices is not None
        if not training:
            return super()._compute_loss(model, inputs, return_outputs)
        modules = [self.accelerator.unwrap_model(model)]
        if self.ref_model is not None and not self.precompute_ref_logps:
            modules.append(self.accelerator.unwrap_model(self.ref_model))
        capture = _LogProbCapture(modules)
        try:
            result = super()._compute_loss(model, inputs, return_outputs)
        finally:
            capture.close()
        expected = 1 if self.precompute_ref_logps else 2
        if len(capture.outputs) != expected:
            raise RuntimeError(f"SageDPOTrainer captured {len(capture.outputs)} fused-LM-head forwards, expected "
                               f"{expected} (policy, then reference): TRL's DPO forward changed")
        mask = inputs["completion_mask"]
        pc, pr = _pair_logps(capture.outputs[0], mask, self.ld_alpha)
        if self.precompute_ref_logps:
            rc, rr = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            rc, rr = _pair_logps(capture.outputs[1], mask, self.ld_alpha)
        indices = indices.cpu()
        self.selector.observe_batch(indices, pc, pr, rc, rr)
        if self.reference_cache is not None:
            self.reference_cache.store(indices, rc, rr)
        self.last_observed = {"indices": indices, "pc": pc.cpu(), "pr": pr.cpu(), "rc": rc.cpu(), "rr": rr.cpu()}
        return result

    # -- logging and checkpoints ---------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if self.model.training:
            logs = {**logs, **self.selector_metrics()}
        super().log(logs, start_time)

    def selector_metrics(self) -> dict[str, float]:
        """The selector's metrics under the names this trainer logs (``selector/<name>``)."""
        return {SELECTOR_METRIC_PREFIX + k: v for k, v in self.selector.metrics().items()}

    def _selector_state_path(self, checkpoint_dir: str) -> str:
        return os.path.join(checkpoint_dir, SELECTOR_STATE_FILE.format(rank=self.accelerator.process_index))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        checkpoint_dir = os.path.join(self._get_output_dir(trial=trial),
                                      f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        os.makedirs(checkpoint_dir, exist_ok=True)
        state = {
            "global_step": int(self.state.global_step),
            "sampler": self.selector_sampler.state_dict(),
            "reference_cache": None if self.reference_cache is None else self.reference_cache.state_dict(),
        }
        torch.save(state, self._selector_state_path(checkpoint_dir))

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any):
        checkpoint = resume_from_checkpoint
        if checkpoint is True:
            checkpoint = get_last_checkpoint(self.args.output_dir)
            if checkpoint is None:
                raise ValueError(f"no valid checkpoint found in output directory ({self.args.output_dir})")
        if checkpoint:
            path = self._selector_state_path(checkpoint)
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} is missing: this checkpoint was not written by SageDPOTrainer (or "
                                        "by a run with a different number of processes); the selector cannot resume")
            state = torch.load(path, weights_only=False)
            self.selector_sampler.restore(state["sampler"], skip_consumed=not self.args.ignore_data_skip)
            if self.reference_cache is not None and state["reference_cache"] is not None:
                self.reference_cache.load_state_dict(state["reference_cache"])
        return super().train(resume_from_checkpoint, *args, **kwargs)


__all__ = [
    "INDEX_COLUMN",
    "ReferenceCache",
    "SELECTOR_FIELDS",
    "SageDPOConfig",
    "SageDPOTrainer",
    "SelectorSampler",
    "score_preference_pairs",
    "select_pairs_offline",
]
