"""Tiny random models, tokenizers, data and stand-in strategies for running OpenRLHF's trainers on CPU."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import torch

# The model is the one every adapter check uses (rlplugins.integrations.tiny_llama; also `rlplugins verl-smoke`).
from rlplugins.integrations.tiny_llama import SPECIALS, VOCAB, build_tiny_llama  # noqa: F401


def load_actor(path: str):
    """OpenRLHF's own ``Actor`` loading path (eager attention), in float32 for CPU."""
    from openrlhf.models import Actor

    return Actor(path, attn_implementation="eager", param_dtype="bf16").float()


def namespace(flat: dict[str, Any]) -> SimpleNamespace:
    """Dotted flat keys -> nested namespace, with OpenRLHF's own ``hierarchize``."""
    import argparse

    from openrlhf.utils.config import hierarchize

    original = getattr(hierarchize, "_rlplugins_original", hierarchize)
    return original(argparse.Namespace(**flat))


def dpo_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Preference pairs over the tiny vocabulary; ``pass_rate`` in (0, 1) feeds the curriculum tiers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = " ".join(f"w{rng.randrange(4, 60)}" for _ in range(rng.randint(2, 5))) + " "
        chosen = " ".join(f"w{rng.randrange(60, 90)}" for _ in range(rng.randint(2, 6)))
        rejected = " ".join(f"w{rng.randrange(90, 120)}" for _ in range(rng.randint(2, 6)))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                     "pass_rate": round(0.05 + 0.9 * rng.random(), 3), "row": i})
    return rows


class CPUStrategy:
    """The part of ``DeepspeedStrategy`` the trainers call, on one CPU process.

    ``setup_dataloader`` is OpenRLHF's own (unbound) method, so loaders are built by OpenRLHF's code path.
    ``backward`` divides by the accumulation steps and ``optimizer_step`` steps every ``accumulated_gradient``
    calls, as DeepSpeed's engine does.
    """

    def __init__(self, args: SimpleNamespace, accumulated_gradient: int = 1) -> None:
        from openrlhf.utils.deepspeed import DeepspeedStrategy

        self.args = args
        self.accumulated_gradient = accumulated_gradient
        self.ring_attn_group = None
        self.seed = int(args.train.seed)
        self._micro_steps = 0
        self.optimizer_steps = 0
        self._setup_dataloader = DeepspeedStrategy.setup_dataloader

    def setup_dataloader(self, *args: Any, **kwargs: Any):
        return self._setup_dataloader(self, *args, **kwargs)

    def backward(self, loss: torch.Tensor, model: Any, optimizer: Any) -> None:
        (loss / self.accumulated_gradient).backward()

    def optimizer_step(self, optimizer: Any, model: Any, scheduler: Any, name: str = "model") -> None:
        self._micro_steps += 1
        if self._micro_steps % self.accumulated_gradient == 0:
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
            self.optimizer_steps += 1

    def all_reduce(self, data: Any, op: str = "mean") -> Any:
        return data

    def get_grad_norm(self, model: Any) -> float:
        return 0.0

    def is_rank_0(self) -> bool:
        return True

    def print(self, *args: Any) -> None:
        pass

    def save_ckpt(self, *args: Any, **kwargs: Any) -> None:
        self.saved_checkpoints = getattr(self, "saved_checkpoints", 0) + 1


def dpo_args(ckpt_path: str, **overrides) -> SimpleNamespace:
    """The fields OpenRLHF's DPOTrainer and RewardDataset read, as its CLI would produce them."""
    flat = {
        "model.beta": 0.1, "model.label_smoothing": 0.0, "model.ipo_enable": False, "model.aux_loss_coef": 0.0,
        "model.nll_loss_coef": 0.0,
        "ds.packing_samples": False, "ds.zero_stage": 2,
        "logger.wandb.key": None, "logger.tensorboard_dir": None, "logger.logging_steps": 1,
        "eval.steps": -1,
        "ckpt.save_steps": -1, "ckpt.path": ckpt_path, "ckpt.max_num": 1, "ckpt.max_mem": 1000,
        "ckpt.load_enable": False,
        "train.batch_size": 4, "train.micro_batch_size": 2, "train.seed": 0, "train.max_epochs": 2,
        "data.dataloader_num_workers": 0, "data.prompt_key": "prompt", "data.chosen_key": "chosen",
        "data.rejected_key": "rejected", "data.apply_chat_template": False, "data.max_len": 64,
    }
    flat.update(overrides)
    return namespace(flat)
