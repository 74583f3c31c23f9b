"""``rlplugins trl-smoke``: a few real steps of TRL's GRPOTrainer with an rlplugins loss and of its DPOTrainer with
a pair selector, on CPU, with a tiny Qwen2 built from a config and an in-memory tokenizer (nothing downloaded).

    rlplugins trl-smoke                              # maspo (GRPO, num_iterations=2) and sage (DPO), 4 steps each
    rlplugins trl-smoke --loss rlp_sapo --selector static_high_margin --steps 6 --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
from typing import Any

GRPO_KEYS = ("loss", "reward", "entropy", "clip_ratio/region_mean", "rlplugins/ratio_max", "rlplugins/gate_mean",
             "rlplugins/gate_min", "rlplugins/damp_frac", "rlplugins/ppo_kl")
DPO_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "logps/chosen", "selector/level", "selector/pool_size",
            "selector/pairs_scored", "selector/pairs_observed", "selector/fallback_fraction")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per trainer (default 4)")
    parser.add_argument("--loss", default="maspo", help="GRPO loss_type: any rlplugins loss or TRL's (default maspo)")
    parser.add_argument("--normalizer", default="dapo", help="loss_normalizer for rlplugins losses (default dapo)")
    parser.add_argument("--selector", default="sage", help="DPO pair selector (default sage)")
    parser.add_argument("--output-dir", default=None, help="trainer output directory (default: a temporary one)")
    parser.add_argument("--json", default=None, help="also write the per-step metrics here")


def _rows(history: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, float]]:
    return [{"step": e["step"], **{k: e[k] for k in keys if k in e}} for e in history if "loss" in e]


def _print(title: str, rows: list[dict[str, float]], keys: tuple[str, ...]) -> None:
    print(f"\n{title}")
    cols = ["step", *[k for k in keys if any(k in r for r in rows)]]
    print("  ".join(f"{c:>22}" for c in cols))
    for r in rows:
        print("  ".join(f"{r[c]:>22.6g}" if c in r else f"{'-':>22}" for c in cols))


def _quiet(trainer: Any) -> None:
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the table below says it once


def run_grpo(output_dir: str, steps: int, loss: str, normalizer: str) -> list[dict[str, float]]:
    from rlplugins.integrations.trl.grpo import RLPluginsGRPOConfig, RLPluginsGRPOTrainer, resolve_loss_type
    from rlplugins.integrations.trl.tiny import prompt_dataset, target_word_reward, tiny_model, tiny_tokenizer

    extra = {"loss_normalizer": normalizer} if resolve_loss_type(loss) is not None else {}
    args = RLPluginsGRPOConfig(
        output_dir=output_dir, use_cpu=True, loss_type=loss, per_device_train_batch_size=4, num_generations=4,
        gradient_accumulation_steps=2, max_completion_length=6, num_iterations=2, max_steps=steps, logging_steps=1,
        learning_rate=1e-2, report_to=[], save_strategy="no", seed=0, disable_tqdm=True, **extra)
    trainer = RLPluginsGRPOTrainer(model=tiny_model(0), reward_funcs=target_word_reward, args=args,
                                   train_dataset=prompt_dataset(16), processing_class=tiny_tokenizer())
    _quiet(trainer)
    trainer.train()
    return _rows(trainer.state.log_history, GRPO_KEYS)


def run_dpo(output_dir: str, steps: int, selector: str) -> list[dict[str, float]]:
    from rlplugins.integrations.trl.dpo import SageDPOConfig, SageDPOTrainer
    from rlplugins.integrations.trl.tiny import preference_dataset, tiny_model, tiny_tokenizer

    args = SageDPOConfig(
        output_dir=output_dir, use_cpu=True, selector=selector, per_device_train_batch_size=2,
        gradient_accumulation_steps=2, max_steps=steps, logging_steps=1, learning_rate=1e-2, report_to=[],
        save_strategy="no", seed=0, disable_tqdm=True, sage_warmup_steps=1, sage_rescore_interval=2,
        selector_difficulty_column="difficulty")
    trainer = SageDPOTrainer(model=tiny_model(0), ref_model=tiny_model(0), args=args,
                             train_dataset=preference_dataset(16), processing_class=tiny_tokenizer())
    _quiet(trainer)
    trainer.train()
    return _rows(trainer.state.log_history, DPO_KEYS)


def main(args: argparse.Namespace) -> int:
    import torch

    from .version import check_trl_version

    version = check_trl_version()
    import datasets

    datasets.disable_progress_bars()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # a 20K-parameter model: threads only add synchronisation
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")
    with tempfile.TemporaryDirectory(prefix="rlp-trl-smoke-") as tmp:
        root = args.output_dir or tmp
        grpo = run_grpo(os.path.join(root, "grpo"), args.steps, args.loss, args.normalizer)
        dpo = run_dpo(os.path.join(root, "dpo"), args.steps, args.selector)
    print(f"TRL {version}, tiny Qwen2 on CPU")
    _print(f"GRPOTrainer loss_type={args.loss} (num_iterations=2)", grpo, GRPO_KEYS)
    _print(f"SageDPOTrainer selector={args.selector}", dpo, DPO_KEYS)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"trl": version, "grpo": grpo, "dpo": dpo}, fh, indent=2)
    bad = [(name, r["step"], k) for name, rows in (("grpo", grpo), ("dpo", dpo)) for r in rows for k, v in r.items()
           if isinstance(v, float) and not math.isfinite(v) and not k.startswith("selector/")]
    if len(grpo) != args.steps or len(dpo) != args.steps or bad:
        print(f"trl-smoke FAILED: steps grpo={len(grpo)} dpo={len(dpo)} (wanted {args.steps}); non-finite: {bad}")
        return 1
    print(f"\ntrl-smoke ok: {args.steps} GRPO steps and {args.steps} DPO steps")
    return 0
