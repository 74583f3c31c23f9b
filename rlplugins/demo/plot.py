"""The demo's figure: learning curves, entropy, gate activity over training, and per-seed paired differences."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def _smooth(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.nn.functional.avg_pool1d(x[None, None], k, stride=1).flatten()


def _band(ax, steps, series: torch.Tensor, color: str, label: str, clamp01: bool = False) -> None:
    mean = series.mean(0)
    std = series.std(0) if series.shape[0] > 1 else torch.zeros_like(mean)
    lo, hi = mean - std, mean + std
    if clamp01:
        lo, hi = lo.clamp(0, 1), hi.clamp(0, 1)
    ax.plot(steps, mean, color=color, label=label)
    ax.fill_between(steps, lo, hi, color=color, alpha=0.15)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # never needs a display
    import matplotlib.pyplot as plt

    cfg = result["config"]
    labels = result["losses"]
    k_smooth = max(1, cfg["steps"] // 30)  # moving average over ~3% of the run
    fig, axes = plt.subplots(2, 3, figsize=(17, 9))
    (acc, ent, rew), (gate, damp, pair) = axes
    for i, label in enumerate(labels):
        runs = [r for r in result["runs"] if r["label"] == label]
        color = f"C{i % 10}"
        steps = runs[0]["eval_steps"]
        _band(acc, steps, torch.tensor([r["eval_reward"] for r in runs]), color, label, clamp01=True)
        e = torch.stack([_smooth(torch.tensor(r["entropy"]), k_smooth) for r in runs])
        _band(ent, range(k_smooth, cfg["steps"] + 1), e, color, label)
        tr = torch.stack([_smooth(torch.tensor(r["train_reward"]), k_smooth) for r in runs])
        rew.plot(range(k_smooth, cfg["steps"] + 1), tr.mean(0), color=color, label=label)
        if runs[0]["offpolicy_metrics"] is not None:
            mid = steps[1:]  # windowed means end at each evaluation
            gate.plot(mid, torch.tensor([r["offpolicy_metrics"]["gate_mean"] for r in runs]).mean(0), color=color,
                      label=label)
            damp.plot(mid, torch.tensor([r["offpolicy_metrics"]["damp_frac"] for r in runs]).mean(0), color=color,
                      label=label)
    acc.axhline(result["threshold"], color="grey", lw=0.8, ls=":")
    acc.set_title(f"held-out greedy accuracy (mean ± std, {result['num_seeds']} seeds)")
    acc.set_ylim(0, 1)
    ent.set_title(f"policy entropy on the rollouts, nats/token (moving avg {k_smooth})")
    rew.set_title(f"training reward (sampled, T=1; moving avg {k_smooth})")
    rew.set_ylim(0, 1)
    gate.set_title("gate mean, off-policy mini-batches")
    damp.set_title("share of tokens damped (gate < 0.5), off-policy")
    damp.set_yscale("symlog", linthresh=1e-3)
    for ax in (acc, ent, rew, gate, damp):
        ax.set_xlabel("step (rollout batch)")
        ax.grid(alpha=0.3)
    acc.legend(loc="lower right", fontsize=8)
    ent.legend(loc="upper right", fontsize=8)

    baseline, diffs = result.get("baseline"), result.get("paired_vs_baseline") or {}
    keys = [("final_greedy", "greedy acc"), ("mean_at_k", f"mean@{cfg['eval_k']}"),
            ("pass_at_k", f"pass@{cfg['eval_k']}"), ("auc", "AUC")]
    if diffs:
        width = 0.8 / len(diffs)
        for j, (label, d) in enumerate(diffs.items()):
            color = f"C{labels.index(label) % 10}"
            for x, (key, _) in enumerate(keys):
                xs = x - 0.4 + width * (j + 0.5)
                pts = d[key]["diffs"]
                pair.scatter([xs] * len(pts), pts, color=color, s=12, alpha=0.7)
                pair.errorbar(xs, d[key]["mean"], yerr=d[key]["ci95"] or 0, color=color, fmt="_", ms=14, capsize=3,
                              label=label if x == 0 else None)
        pair.axhline(0, color="grey", lw=0.8)
        pair.set_xticks(range(len(keys)), [name for _, name in keys])
        pair.set_title(f"paired difference vs {baseline}: seeds (dots), mean ± 95% CI")
        pair.legend(fontsize=8)
        pair.grid(alpha=0.3, axis="y")
    else:
        pair.set_axis_off()
    task = cfg["task"]
    fig.suptitle(
        f"rlplugins demo: reverse 1-{task['max_len']} base-{task['base']} digits, GRU policy; "
        f"{cfg['prompts_per_step']} prompts x G={cfg['group_size']}, {cfg['minibatches']} mini-batches"
        f"{'' if cfg['epochs'] == 1 else ' x %d epochs' % cfg['epochs']}, Adam lr {cfg['lr']:g}, {cfg['steps']} steps",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
