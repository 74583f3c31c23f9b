"""`rlplugins demo`: a toy RLVR run on CPU, nothing downloaded, comparing policy losses.

A tiny GRU policy learns to reverse digit sequences from a binary verifiable reward (``toy_rlvr``), with
GRPO group-normalised advantages and several off-policy mini-batch updates per rollout batch. Every loss
gets the same hyper-parameters, the same seeds (hence the same initial weights and the same first batch)
and its published default config. The run prints a table, writes ``demo.json`` and ``demo.png`` and says
where.

This is a toy: it shows the losses running through one real code path and how their gates behave
off-policy. It is not evidence about LLM-scale results.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from . import __version__
from .losses import list_policy_losses, make_config
from .toy_rlvr import LOSS_METRICS, ReverseTask, TrainConfig, eval_set, train

SCHEMA = "rlplugins.demo/1"
DEFAULT_LOSSES = ("maspo", "ppo_clip", "sapo", "pg")
DEFAULT_OUT_DIR = os.path.join("out", "demo")  # relative to the working directory; /out/ is git-ignored


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, t = TrainConfig(), ReverseTask()
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    g = parser.add_argument_group("comparison")
    g.add_argument("--losses", default=",".join(DEFAULT_LOSSES),
                   help=f"comma-separated policy losses, each at its default config; registered: "
                        f"{', '.join(list_policy_losses())}")
    g.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1), the same for every loss")
    g.add_argument("--seed-offset", type=int, default=0, help="first seed")
    g.add_argument("--threshold", type=float, default=0.5,
                   help="reward threshold for the steps-to-threshold column")
    g.add_argument("--final-evals", type=int, default=3, help="final reward = mean of the last K evaluations")
    g = parser.add_argument_group("training (shared by every loss)")
    g.add_argument("--steps", type=int, default=d.steps, help="rollout batches (training steps) per run")
    g.add_argument("--prompts", type=int, default=d.prompts_per_step, help="prompts per rollout batch")
    g.add_argument("--group-size", type=int, default=d.group_size, help="responses per prompt (GRPO group)")
    g.add_argument("--minibatches", type=int, default=d.minibatches,
                   help="optimiser steps per rollout batch and epoch; with 1 (and 1 epoch) every loss is PG")
    g.add_argument("--epochs", type=int, default=d.epochs, help="passes over each rollout batch (ppo_epochs)")
    g.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate")
    g.add_argument("--hidden", type=int, default=d.hidden, help="GRU hidden size")
    g.add_argument("--eval-every", type=int, default=d.eval_every, help="evaluate every N steps")
    g.add_argument("--eval-prompts", type=int, default=d.eval_prompts, help="size of the fixed evaluation set")
    g = parser.add_argument_group("task")
    g.add_argument("--base", type=int, default=t.base, help="digits are in [0, base)")
    g.add_argument("--max-len", type=int, default=t.max_len, help="longest prompt (lengths 1..max-len, uniform)")
    g = parser.add_argument_group("run")
    g.add_argument("--quick", action="store_true",
                   help="a tiny configuration for smoke tests: at most 40 steps and 2 seeds, 16 prompts, at most "
                        "4 mini-batches, 1 epoch, 128 eval prompts")
    g.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help="where demo.json and demo.png are written")
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
              eval_every=args.eval_every, eval_prompts=args.eval_prompts, task=task)
    if args.quick:
        kw.update(steps=min(args.steps, 40), prompts_per_step=16, eval_every=10, eval_prompts=128, epochs=1)
        kw["minibatches"] = min(kw["minibatches"], 4)
    return TrainConfig(**kw)


# ---------------------------------------------------------------------------------------------- summaries


def auc(steps: Sequence[int], values: Sequence[float]) -> float:
    """Trapezoidal area under the curve divided by the step span: the mean reward over training, in [0, 1]."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return float(values[-1])
    area = sum((steps[i + 1] - steps[i]) * (values[i + 1] + values[i]) / 2 for i in range(len(steps) - 1))
    return area / (steps[-1] - steps[0])


def steps_to(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """First evaluated step whose reward is >= threshold (None if never)."""
    return next((s for s, v in zip(steps, values) if v >= threshold), None)


def mean_std(xs: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"mean": m, "std": sd}


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _windowed(per_step: Sequence[float], eval_steps: Sequence[int]) -> list[float]:
    """Mean of a per-step series over each interval between consecutive evaluations (keeps the JSON small)."""
    return [round(_mean(per_step[a:b]), 6) for a, b in zip(eval_steps[:-1], eval_steps[1:])]


def summarise_run(run: dict[str, Any], threshold: float, final_evals: int) -> dict[str, Any]:
    steps, ev = run["eval_steps"], run["eval_reward"]
    om, m = run["offpolicy_metrics"], run["metrics"]
    out = {
        "final_reward": _mean(ev[-final_evals:]),
        "auc": auc(steps, ev),
        "steps_to_threshold": steps_to(steps, ev, threshold),
        "gate_mean": _mean(m["gate_mean"]),
        # Mini-batches after the first: the first has ratio 1 exactly, so its gate is 1 for every loss.
        "gate_mean_offpolicy": _mean(om["gate_mean"]) if om["gate_mean"] else None,
        "damp_frac_offpolicy": _mean(om["damp_frac"]) if om["damp_frac"] else None,
        "ppo_kl_offpolicy": _mean(om["ppo_kl"]) if om["ppo_kl"] else None,
        "first_minibatch_max_abs_ppo_kl": max(abs(x) for x in run["first_minibatch_ppo_kl"]),
        "final_reward_by_length": run["final_eval_by_length"],
    }
    return out


def summarise_loss(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample std over seeds; steps_to_threshold over the seeds that reached it, with the count."""
    s: dict[str, Any] = {}
    for key in ("final_reward", "auc", "gate_mean", "gate_mean_offpolicy", "damp_frac_offpolicy", "ppo_kl_offpolicy"):
        vals = [r["summary"][key] for r in runs if r["summary"][key] is not None]
        s[key] = mean_std(vals) if vals else None
    lengths = runs[0]["summary"]["final_reward_by_length"]
    s["final_reward_by_length"] = {L: mean_std([r["summary"]["final_reward_by_length"][L] for r in runs])
                                   for L in lengths}
    reached = [r["summary"]["steps_to_threshold"] for r in runs if r["summary"]["steps_to_threshold"] is not None]
    s["steps_to_threshold"] = {**(mean_std(reached) if reached else {"mean": None, "std": None}),
                               "reached": len(reached), "seeds": len(runs)}
    return s


def _fmt(ms: dict[str, float] | None, digits: int = 3) -> str:
    if ms is None:
        return "—"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def _fmt_steps(st: dict[str, Any]) -> str:
    if not st["reached"]:
        return f"— (0/{st['seeds']})"
    return f"{st['mean']:.0f} ± {st['std']:.0f} ({st['reached']}/{st['seeds']})"


def format_table(summary: dict[str, dict[str, Any]], threshold: float) -> str:
    header = ["loss", "final reward", "AUC", f"steps to {threshold:g}", "gate (off-policy)", "damp frac", "ppo_kl"]
    rows = [[name, _fmt(s["final_reward"]), _fmt(s["auc"]), _fmt_steps(s["steps_to_threshold"]),
             _fmt(s["gate_mean_offpolicy"], 4), _fmt(s["damp_frac_offpolicy"], 4), _fmt(s["ppo_kl_offpolicy"], 4)]
            for name, s in summary.items()]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


# ---------------------------------------------------------------------------------------------- plot


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    import matplotlib.pyplot as plt

    cfg = result["config"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, name in enumerate(result["losses"]):
        runs = [r for r in result["runs"] if r["loss"] == name]
        color = f"C{i}"
        steps = runs[0]["eval_steps"]
        ev = torch.tensor([r["eval_reward"] for r in runs])
        mean, std = ev.mean(0), (ev.std(0) if len(runs) > 1 else torch.zeros_like(ev[0]))
        axes[0].plot(steps, mean, color=color, label=name)
        axes[0].fill_between(steps, (mean - std).clamp(0, 1), (mean + std).clamp(0, 1), color=color, alpha=0.15)
        tr = torch.tensor([r["train_reward"] for r in runs]).mean(0)
        k = max(1, cfg["steps"] // 30)  # moving average over ~3% of the run
        smooth = torch.nn.functional.avg_pool1d(tr[None, None], k, stride=1).flatten()
        axes[1].plot(range(k, len(tr) + 1), smooth, color=color, label=name)
    axes[0].axhline(result["threshold"], color="grey", lw=0.8, ls=":")
    axes[0].set_title(f"held-out greedy accuracy (mean ± std, {result['num_seeds']} seeds)")
    axes[1].set_title(f"training reward (sampled, T=1; moving average of {max(1, cfg['steps'] // 30)} steps)")
    for ax in axes:
        ax.set_xlabel("step (rollout batch)")
        ax.set_ylabel("exact-match reward")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    task = cfg["task"]
    fig.suptitle(
        f"rlplugins demo: reverse 1-{task['max_len']} base-{task['base']} digits, GRU policy; "
        f"{cfg['prompts_per_step']} prompts x G={cfg['group_size']}, {cfg['minibatches']} mini-batches"
        f"{'' if cfg['epochs'] == 1 else ' x %d epochs' % cfg['epochs']}"
        f", Adam lr {cfg['lr']:g}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def _progress(total: int, disabled: bool):
    from tqdm.auto import tqdm

    tty = sys.stderr.isatty()
    # Off a terminal (CI logs) \r-updates pile up, so refresh rarely there.
    return tqdm(total=total, disable=disabled, file=sys.stderr, mininterval=0.2 if tty else 30.0,
                dynamic_ncols=tty, ascii=not tty, unit="step")


def _run_one(name: str, seed: int, cfg: TrainConfig, on_step=None) -> dict[str, Any]:
    run = train(name, seed, cfg, on_step=on_step)
    run.pop("policy")  # not picklable across processes, not needed
    return run


_QUEUE = None  # progress queue of a worker process


def _worker_init(queue, threads: int) -> None:
    global _QUEUE
    _QUEUE = queue
    torch.set_num_threads(threads)


def _worker(name: str, seed: int, cfg: TrainConfig) -> dict[str, Any]:
    pending = [0]

    def on_step(step: int) -> None:  # report progress in chunks: one queue message per step is wasteful
        pending[0] += 1
        if pending[0] >= 5 or step == cfg.steps:
            _QUEUE.put(pending[0])
            pending[0] = 0

    return _run_one(name, seed, cfg, on_step=on_step)


def _run_parallel(jobs, cfg: TrainConfig, workers: int, threads: int, bar, bar_tty: bool) -> list[dict[str, Any]]:
    """One run per process task; results come back in job order, so the output does not depend on timing.

    Each run seeds its own generators and initial weights, so a run's numbers do not depend on which
    process ran it, nor on what ran before it there. ``spawn``: forking a process whose OpenMP pool is
    already running can hang.
    """
    import concurrent.futures as cf
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    bar.set_postfix_str(f"{workers} worker processes", refresh=bar_tty)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(q, threads)) as pool:
        futures = [pool.submit(_worker, name, seed, cfg) for name, seed in jobs]
        pending = set(futures)
        while pending:
            done, pending = cf.wait(pending, timeout=0.25)
            for f in done:
                f.result()  # re-raise a worker's exception here
            while True:
                try:
                    bar.update(q.get_nowait())
                except queue_mod.Empty:
                    break
        return [f.result() for f in futures]


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    """Train every (loss, seed), summarise, and return the JSON-ready result (nothing written)."""
    losses = [x.strip() for x in args.losses.split(",") if x.strip()]
    if not losses:
        raise ValueError("--losses is empty")
    known = set(list_policy_losses())
    unknown = [x for x in losses if x not in known]
    if unknown:
        raise ValueError(f"unknown loss(es) {unknown}; registered: {', '.join(sorted(known))}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    cfg = config_from_args(args)
    seeds = list(range(args.seed_offset, args.seed_offset + (min(args.seeds, 2) if args.quick else args.seeds)))

    t0 = time.perf_counter()
    jobs = [(name, seed) for name in losses for seed in seeds]
    workers = max(1, min(args.workers, len(jobs)))
    bar = _progress(len(jobs) * cfg.steps, args.no_progress)
    bar_tty = sys.stderr.isatty()  # off a terminal, a postfix change must not force an extra log line
    try:
        if workers == 1:
            runs = []
            for name, seed in jobs:
                bar.set_postfix_str(f"{name} seed {seed}", refresh=bar_tty)
                runs.append(_run_one(name, seed, cfg, on_step=lambda _: bar.update(1)))
        else:
            runs = _run_parallel(jobs, cfg, workers, args.threads, bar, bar_tty)
    finally:
        bar.close()
    for run in runs:
        run["summary"] = summarise_run(run, args.threshold, args.final_evals)
    wall = time.perf_counter() - t0

    return _result(args, cfg, losses, seeds, runs, wall, workers)


def _result(args, cfg, losses, seeds, runs, wall, workers) -> dict[str, Any]:
    summary = {name: summarise_loss([r for r in runs if r["loss"] == name]) for name in losses}
    ev_prompts, ev_lengths = eval_set(cfg)
    json_runs = []
    for r in runs:
        json_runs.append({
            "loss": r["loss"],
            "seed": r["seed"],
            "eval_steps": r["eval_steps"],
            "eval_reward": [round(x, 6) for x in r["eval_reward"]],
            "train_reward": [round(x, 6) for x in r["train_reward"]],
            # Per-step loss metrics, averaged over each interval between evaluations (eval_steps[1:]).
            "metrics": {k: _windowed(r["metrics"][k], r["eval_steps"]) for k in LOSS_METRICS},
            "offpolicy_metrics": {k: _windowed(r["offpolicy_metrics"][k], r["eval_steps"]) for k in LOSS_METRICS}
            if cfg.minibatches * cfg.epochs > 1 else None,
            "summary": r["summary"],
            "wall_s": round(r["wall_s"], 3),
            "cpu_s": round(r["cpu_s"], 3),
        })
    return {
        "schema": SCHEMA,
        "rlplugins_version": __version__,
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "command": "rlplugins demo " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None,
        "task": (f"reverse a sequence of 1..{cfg.task.max_len} digits in base {cfg.task.base} (lengths uniform); "
                 f"reward 1 for an exact match, else 0"),
        "eval": (f"greedy exact-match accuracy on a fixed set of {cfg.eval_prompts} prompts drawn with seed "
                 f"{cfg.eval_seed}, every {cfg.eval_every} steps (short prompts also occur in training)"),
        "eval_prompt_lengths": {str(L): int((ev_lengths == L).sum()) for L in range(1, cfg.task.max_len + 1)},
        "losses": losses,
        "loss_configs": {name: make_config(name).to_dict() for name in losses},
        "seeds": seeds,
        "num_seeds": len(seeds),
        "threshold": args.threshold,
        "final_evals": args.final_evals,
        "config": cfg.to_dict(),
        "num_params": runs[0]["num_params"],
        "random_policy_reward": mean_std([r["eval_reward"][0] for r in runs]),
        "summary": summary,
        "table": format_table(summary, args.threshold),
        "runs": json_runs,
        "wall_s": round(wall, 2),
        # Training CPU time summed over runs (excludes interpreter start-up and imports); on an idle machine the
        # wall time is about this divided by the number of workers.
        "cpu_s": round(sum(r["cpu_s"] for r in runs), 2),
        "threads": max(1, args.threads),
        "workers": workers,
    }


def write_outputs(result: dict[str, Any], out_dir: Path, make_plot: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "demo.json"]
    paths[0].write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    if make_plot:
        paths.append(out_dir / "demo.png")
        plot(result, paths[1])
    return paths


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
    print(f"Reward: {result['eval']}. Random init: {result['random_policy_reward']['mean']:.3f}.")
    print(f"Mean ± sample std over {result['num_seeds']} seeds {result['seeds']}; final = mean of the last "
          f"{result['final_evals']} evaluations; AUC = mean accuracy over training; gate, damp frac and ppo_kl "
          f"are averaged over the off-policy mini-batches (2nd onwards).")
    print()
    print(result["table"])
    print()
    paths = write_outputs(result, Path(args.out_dir), make_plot=not args.no_plot)
    print(f"Wall time {result['wall_s']:.1f} s ({result['cpu_s']:.0f} CPU-s of training over {result['workers']} "
          f"worker(s)). Wrote " + ", ".join(str(p.resolve()) for p in paths))
    return 0
