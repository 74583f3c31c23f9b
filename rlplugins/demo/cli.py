"""Arguments, the run itself, and what ``rlplugins demo`` prints."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..losses import list_policy_losses
from ..toy_rlvr import ReverseTask, TrainConfig
from .report import machine_load, build_result, write_outputs
from .runner import run_jobs
from .specs import parse_losses
from .stats import summarise_run

# maspo, its no-gate control, the official GRPO baseline (PPO clip + dual clip c = 3, veRL's `vanilla`),
# the nearest soft gate, and policy gradient without a ratio.
DEFAULT_LOSSES = ("maspo", "unclipped", "dual_clip", "sapo", "pg")
DEFAULT_BASELINE = "dual_clip"
DEFAULT_OUT_DIR = os.path.join("out", "demo")  # relative to the working directory; /out/ is git-ignored
QUICK = dict(steps=40, seeds=2, prompts=16, minibatches=4, eval_prompts=128)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, t = TrainConfig(), ReverseTask()
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    g = parser.add_argument_group("comparison")
    g.add_argument("--losses", nargs="+", default=[",".join(DEFAULT_LOSSES)], metavar="LOSS[:FIELD=VALUE,...]",
                   help="losses to compare, separated by commas or spaces, each at its published defaults unless "
                        "overridden: maspo:sigma_base=0.2, maspo:alpha=0 (no mass adaptation), "
                        "maspo:beta_pos=0,beta_neg=0 (no risk control); a loss may appear several times. "
                        f"Registered: {', '.join(list_policy_losses())}")
    g.add_argument("--baseline", default=None,
                   help=f"label that the paired per-seed differences are taken against (default: "
                        f"{DEFAULT_BASELINE} if compared, else none)")
    g.add_argument("--seeds", type=int, default=5, help="number of seeds (offset..offset+N-1), the same for every loss")
    g.add_argument("--seed-offset", type=int, default=0, help="first seed")
    g.add_argument("--threshold", type=float, default=0.4,
                   help="greedy accuracy for the steps-to-target column")
    g.add_argument("--final-evals", type=int, default=3,
                   help="final accuracy = mean of the last K greedy evaluations (mean@k / pass@k use the last "
                        "--sampled-evals ones)")
    g = parser.add_argument_group("training (shared by every loss)")
    g.add_argument("--steps", type=int, default=d.steps, help="rollout batches (training steps) per run")
    g.add_argument("--prompts", type=int, default=d.prompts_per_step, help="prompts per rollout batch")
    g.add_argument("--group-size", type=int, default=d.group_size, help="responses per prompt (GRPO group)")
    g.add_argument("--minibatches", type=int, default=d.minibatches,
                   help="optimiser steps per rollout batch and epoch; with 1 (and 1 epoch) every loss is PG")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over each rollout batch (ppo_epochs)")
    g.add_argument("--paper", action="store_true",
                   help="the paper's update schedule: 16 mini-batches x 1 epoch per rollout batch (512 prompts, "
                        "mini-batch 32); overrides --minibatches and --epochs")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    g.add_argument("--hidden", type=int, default=d.hidden, help="GRU hidden size")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="greedy evaluation every N steps")
    g.add_argument("--eval-prompts", type=int, default=d.eval_prompts, help="size of the fixed evaluation set")
    g.add_argument("--eval-k", type=int, default=d.eval_k, help="samples per prompt (T=1) for mean@k and pass@k")
    g.add_argument("--sampled-evals", type=int, default=d.sampled_evals,
                   help="sampled evaluation at the last N greedy evaluations")
    g = parser.add_argument_group("task")
    g.add_argument("--base", type=int, default=t.base, help="digits are in [0, base)")
    g.add_argument("--max-len", type=int, default=t.max_len, help="longest prompt (lengths 1..max-len, uniform)")
    g = parser.add_argument_group("run")
    g.add_argument("--quick", action="store_true",
                   help="a smoke configuration: at most {steps} steps, {seeds} seeds, {prompts} prompts, at most "
                        "{minibatches} mini-batches, 1 epoch, {eval_prompts} eval prompts".format(**QUICK))
    g.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help="where NAME.json and NAME.png are written")
    g.add_argument("--name", default="demo", help="base name of the output files")
    g.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="runs in parallel, one process each (results do not depend on it)")
    g.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads per run; the model is tiny, so more threads mostly add overhead")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    task = ReverseTask(base=args.base, max_len=args.max_len)
    kw = dict(steps=args.steps, prompts_per_step=args.prompts, group_size=args.group_size,
              minibatches=args.minibatches, epochs=args.epochs, lr=args.lr, hidden=args.hidden,
              eval_every=args.eval_every, eval_prompts=args.eval_prompts, eval_k=args.eval_k,
              sampled_evals=args.sampled_evals, task=task)
    if args.paper:
        kw.update(minibatches=16, epochs=1)
    if args.quick:
        kw.update(steps=min(args.steps, QUICK["steps"]), prompts_per_step=QUICK["prompts"], eval_every=10,
                  eval_prompts=QUICK["eval_prompts"], epochs=1)
        kw["minibatches"] = min(kw["minibatches"], QUICK["minibatches"])
    return TrainConfig(**kw)


def mode_of(args: argparse.Namespace) -> str:
    return "+".join(m for m, on in (("paper", args.paper), ("quick", args.quick)) if on) or "default"


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Train every (loss, seed), summarise, and return the JSON-ready result (nothing written)."""
    specs = parse_losses(args.losses)
    labels = [s.label for s in specs]
    if args.baseline is not None and args.baseline not in labels:
        raise ValueError(f"--baseline {args.baseline!r} is not among the compared losses {labels}")
    baseline = args.baseline or (DEFAULT_BASELINE if DEFAULT_BASELINE in labels else None)
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.final_evals < 1:
        raise ValueError(f"--final-evals must be >= 1, got {args.final_evals}")
    cfg = config_from_args(args)
    n_seeds = min(args.seeds, QUICK["seeds"]) if args.quick else args.seeds
    seeds = list(range(args.seed_offset, args.seed_offset + n_seeds))

    load_start = machine_load()
    t0 = time.perf_counter()
    jobs = [(spec, seed) for spec in specs for seed in seeds]
    workers = max(1, min(args.workers, len(jobs)))
    runs = run_jobs(jobs, cfg, workers, args.threads, args.no_progress)
    for run in runs:
        run["summary"] = summarise_run(run, args.threshold, args.final_evals)
    wall = time.perf_counter() - t0
    return build_result(specs=specs, seeds=seeds, cfg=cfg, runs=runs, baseline=baseline, threshold=args.threshold,
                        final_evals=args.final_evals, wall=wall, workers=workers, threads=args.threads,
                        load_start=load_start, mode=mode_of(args))


def main(args: argparse.Namespace) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        result = run_demo(args)
    except ValueError as exc:
        print(f"rlplugins demo: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    cfg = result["config"]
    print()
    print(f"Toy RLVR: {result['task']}.")
    print(f"Policy: 1-layer GRU, {result['num_params']:,} parameters. Each step: {cfg['prompts_per_step']} prompts x "
          f"G={cfg['group_size']} samples at T=1, GRPO advantages, {cfg['minibatches']} mini-batch update(s) x "
          f"{cfg['epochs']} epoch(s), Adam lr {cfg['lr']:g}, {cfg['loss_agg_mode']}; {cfg['steps']} steps.")
    print(f"Evaluation: {result['eval']}. Random init: greedy {result['random_policy_reward']['mean']:.3f}.")
    print(f"Mean ± sample std over {result['num_seeds']} seeds {result['seeds']}. Greedy acc = mean of the last "
          f"{result['final_evals']} evaluations; AUC = mean greedy accuracy over training; entropy (end) = mean "
          f"rollout entropy over the last 10% of steps. Gate statistics are averaged over the off-policy "
          f"mini-batches (2nd onwards).")
    if result["baseline"]:
        print(f"Paired: per-seed difference against {result['baseline']}, mean ± 95% t-interval (seeds ahead/seeds).")
    print()
    print(result["table"])
    print()
    paths = write_outputs(result, Path(args.out_dir), args.name, make_plot=not args.no_plot)
    load = result["machine"]["start"]["loadavg_1_5_15"]
    print(f"Wall time {result['wall_s']:.1f} s ({result['cpu_s']:.0f} CPU-s of training over {result['workers']} "
          f"worker(s); {result['machine']['start']['cpu_count']} CPUs, load average at start "
          f"{load[0] if load else 'n/a'}). Wrote " + ", ".join(str(p.resolve()) for p in paths))
    return 0
