"""The demo's JSON document (schema ``rlplugins.demo/2``) and the files written from it."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..toy_rlvr import LOSS_METRICS, TrainConfig, eval_set
from .specs import LossSpec
from .stats import mean_std, paired_vs, summarise_loss, windowed
from .table import format_tables

SCHEMA = "rlplugins.demo/2"


def machine_load() -> dict[str, Any]:
    """Load averages and core count: the wall time means little without them (the machine may be shared)."""
    try:
        one, five, fifteen = os.getloadavg()
        return {"cpu_count": os.cpu_count(), "loadavg_1_5_15": [round(one, 2), round(five, 2), round(fifteen, 2)]}
    except OSError:  # not available on every platform
        return {"cpu_count": os.cpu_count(), "loadavg_1_5_15": None}


def build_result(*, specs: list[LossSpec], seeds: list[int], cfg: TrainConfig, runs: list[dict[str, Any]],
                 baseline: str | None, threshold: float, final_evals: int, wall: float, workers: int, threads: int,
                 load_start: dict[str, Any], mode: str) -> dict[str, Any]:
    labels = [s.label for s in specs]
    by_label = {label: [r for r in runs if r["label"] == label] for label in labels}
    summary = {label: summarise_loss(rs) for label, rs in by_label.items()}
    diffs = paired_vs(by_label, baseline) if baseline is not None else {}
    ev_prompts, ev_lengths = eval_set(cfg)
    offpolicy = cfg.minibatches * cfg.epochs > 1
    json_runs = [{
        "loss": r["loss"],
        "label": r["label"],
        "seed": r["seed"],
        "eval_steps": r["eval_steps"],
        "eval_reward": [round(x, 6) for x in r["eval_reward"]],
        "sampled_eval": {k: [round(x, 6) for x in v] if k != "steps" else v for k, v in r["sampled_eval"].items()},
        "train_reward": [round(x, 6) for x in r["train_reward"]],
        "entropy": [round(x, 5) for x in r["entropy"]],
        # Per-step loss metrics, averaged over each interval between evaluations (eval_steps[1:]).
        "metrics": {k: windowed(r["metrics"][k], r["eval_steps"]) for k in LOSS_METRICS},
        "offpolicy_metrics": {k: windowed(r["offpolicy_metrics"][k], r["eval_steps"]) for k in LOSS_METRICS}
        if offpolicy else None,
        "summary": r["summary"],
        "wall_s": round(r["wall_s"], 3),
        "cpu_s": round(r["cpu_s"], 3),
    } for r in runs]
    k = cfg.eval_k
    return {
        "schema": SCHEMA,
        "rlplugins_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "command": "rlplugins demo " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None,
        "mode": mode,
        "task": (f"reverse a sequence of 1..{cfg.task.max_len} digits in base {cfg.task.base} (lengths uniform); "
                 f"reward 1 for an exact match, else 0"),
        "eval": (f"held-out set of {cfg.eval_prompts} prompts drawn with seed {cfg.eval_seed} (short prompts also "
                 f"occur in training): greedy exact-match accuracy every {cfg.eval_every} steps; mean@{k} and "
                 f"pass@{k} from {k} samples per prompt at temperature 1, at the last {cfg.sampled_evals} evaluations"),
        "eval_prompt_lengths": {str(L): int((ev_lengths == L).sum()) for L in range(1, cfg.task.max_len + 1)},
        "losses": labels,
        "loss_configs": {s.label: {"name": s.name, **s.config().to_dict()} for s in specs},
        "baseline": baseline,
        "seeds": seeds,
        "num_seeds": len(seeds),
        "threshold": threshold,
        "final_evals": final_evals,
        "config": cfg.to_dict(),
        "num_params": runs[0]["num_params"],
        "random_policy_reward": mean_std([r["eval_reward"][0] for r in runs]),
        "summary": summary,
        "paired_vs_baseline": diffs,
        "table": format_tables(summary, diffs, baseline or "", threshold, k),
        "runs": json_runs,
        "wall_s": round(wall, 2),
        # Training CPU time summed over runs (excludes interpreter start-up and imports); on an idle machine the
        # wall time is about this divided by the number of workers.
        "cpu_s": round(sum(r["cpu_s"] for r in runs), 2),
        "threads": max(1, threads),
        "workers": workers,
        "machine": {"start": load_start, "end": machine_load(), "platform": platform.platform()},
    }


def write_outputs(result: dict[str, Any], out_dir: Path, name: str = "demo", make_plot: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.json"]
    paths[0].write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    if make_plot:
        from .plot import plot

        paths.append(out_dir / f"{name}.png")
        plot(result, paths[1])
    return paths
