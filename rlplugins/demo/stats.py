"""Summaries of the demo's runs: per-run numbers, mean ± std over seeds, and paired differences.

Every loss runs on the same seeds, and a seed fixes the initial weights, the first batch and the sampled
evaluation stream; so the per-seed difference between two losses removes the seed-to-seed spread that both
share. The paired mean difference comes with a 95% Student-t interval and the count of seeds on which the
loss was ahead.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

# Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30; beyond, the normal 1.96 (within 2%).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)

# Summary keys (per run) that are "higher is better" outcomes, compared per seed against the baseline.
OUTCOMES = ("final_greedy", "mean_at_k", "pass_at_k", "auc", "final_entropy")
# Per-run statistics of the loss itself, averaged over the off-policy mini-batches.
GATE_KEYS = ("gate_mean", "gate_min", "damp_frac", "eff_weight_mean", "pg_clipfrac", "ppo_kl", "ratio_max")


def t975(df: int) -> float:
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def auc(steps: Sequence[int], values: Sequence[float]) -> float:
    """Trapezoidal area under the curve divided by the step span: the mean reward over training, in [0, 1]."""
    if len(steps) < 2 or steps[-1] == steps[0]:
        return float(values[-1])
    area = sum((steps[i + 1] - steps[i]) * (values[i + 1] + values[i]) / 2 for i in range(len(steps) - 1))
    return area / (steps[-1] - steps[0])


def steps_to(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """First evaluated step whose reward is >= threshold (None if never)."""
    return next((s for s, v in zip(steps, values) if v >= threshold), None)


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def mean_std(xs: Sequence[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(xs)
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1)) if n > 1 else 0.0
    return {"mean": m, "std": sd}


def paired(xs: Sequence[float], ys: Sequence[float]) -> dict[str, Any]:
    """Per-seed differences ``x - y``: mean, sample std, 95% t half-width (None for one seed), wins/ties/losses."""
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"paired() needs two equally long non-empty sequences, got {len(xs)} and {len(ys)}")
    d = [x - y for x, y in zip(xs, ys)]
    ms = mean_std(d)
    n = len(d)
    return {**ms, "ci95": t975(n - 1) * ms["std"] / math.sqrt(n) if n > 1 else None,
            "wins": sum(v > 0 for v in d), "ties": sum(v == 0 for v in d), "n": n, "diffs": d}


def windowed(per_step: Sequence[float], eval_steps: Sequence[int]) -> list[float]:
    """Mean of a per-step series over each interval between consecutive evaluations (keeps the JSON small)."""
    return [round(mean(per_step[a:b]), 6) for a, b in zip(eval_steps[:-1], eval_steps[1:])]


def summarise_run(run: dict[str, Any], threshold: float, final_evals: int) -> dict[str, Any]:
    """One run's numbers: outcomes, and the loss statistics over the off-policy mini-batches."""
    steps, ev = run["eval_steps"], run["eval_reward"]
    om = run["offpolicy_metrics"]
    sampled = run["sampled_eval"]
    ent = run["entropy"]
    tail = max(1, len(ent) // 10)  # the last 10% of the steps
    out: dict[str, Any] = {
        "final_greedy": mean(ev[-final_evals:]),
        "mean_at_k": mean(sampled["mean_at_k"]),
        "pass_at_k": mean(sampled["pass_at_k"]),
        "auc": auc(steps, ev),
        "steps_to_threshold": steps_to(steps, ev, threshold),
        "final_entropy": mean(ent[-tail:]),
        "mean_entropy": mean(ent),
        "first_minibatch_max_abs_ppo_kl": max(abs(x) for x in run["first_minibatch_ppo_kl"]),
        "final_greedy_by_length": run["final_eval_by_length"],
    }
    # Mini-batches after the first: the first has ratio 1 exactly, so its gate is 1 for every loss.
    for key in GATE_KEYS:
        out[key] = mean(om[key]) if om[key] else None
    return out


def summarise_loss(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean ± sample std over seeds; steps_to_threshold over the seeds that reached it, with the count."""
    s: dict[str, Any] = {}
    for key in (*OUTCOMES, "mean_entropy", *GATE_KEYS):
        vals = [r["summary"][key] for r in runs if r["summary"].get(key) is not None]
        s[key] = mean_std(vals) if vals else None
    lengths = runs[0]["summary"]["final_greedy_by_length"]
    s["final_greedy_by_length"] = {L: mean_std([r["summary"]["final_greedy_by_length"][L] for r in runs])
                                   for L in lengths}
    reached = [r["summary"]["steps_to_threshold"] for r in runs if r["summary"]["steps_to_threshold"] is not None]
    s["steps_to_threshold"] = {**(mean_std(reached) if reached else {"mean": None, "std": None}),
                               "reached": len(reached), "seeds": len(runs)}
    return s


def paired_vs(runs_by_label: dict[str, list[dict[str, Any]]], baseline: str) -> dict[str, dict[str, Any]]:
    """For every label but the baseline: per-outcome paired differences against the baseline, seed by seed."""
    base = {r["seed"]: r["summary"] for r in runs_by_label[baseline]}
    out: dict[str, dict[str, Any]] = {}
    for label, runs in runs_by_label.items():
        if label == baseline:
            continue
        mine = {r["seed"]: r["summary"] for r in runs}
        seeds = sorted(set(mine) & set(base))
        out[label] = {key: paired([mine[s][key] for s in seeds], [base[s][key] for s in seeds]) for key in OUTCOMES}
    return out
