"""Toy DPO benchmark: SAGE against its baselines and ablations at equal backward-pair budgets (CPU, nothing downloaded).

The task imitates offline preference alignment of a reasoning model (docs/sage.md B7, C.6):

* a *problem* is a vector x in R^d; its correct answer is ``a*(x) = argmax W* x`` for a hidden teacher W*;
* a *response* is ``L`` trace tokens followed by one answer token (vocabulary V); the policy is a small MLP that
  outputs independent per-position logits, and ``log pi(y|x)`` sums over the L + 1 positions, as DPO sums over tokens;
* the reference is the MLP after a short, noisy supervised warm-start (so pass rates vary between problems); the
  policy starts from the reference;
* pairs are self-sampled: N = 8 responses per problem from the reference, verified by the answer token; a problem
  with pass rate 0 or 1 yields no pair; up to ``pairs_per_problem`` (correct, wrong) pairs per problem; difficulty
  ``d = 1 - pass_rate`` gives the tiers; a share ``noise`` of pairs is flipped (a verifier error), and the flip is
  recorded as ground truth.

Every method trains DPO (sigmoid, beta = 0.1) for the same number of steps on batches of the same size, so the
backward-pair budget is equal. Forward-only scoring is counted separately (compute units: a scoring forward of a
pair = 1, a training forward+backward = 3, reference log-probs cached for all methods).

Reported per method (mean ± std over seeds; data, reference, initialisation and selector seeds differ per seed and
are shared by all methods within a seed): held-out ground-truth accuracy = pass@1 of a sampled answer, computed exactly
as the mean of ``pi(a*|x)`` over held-out problems (the quantity whose complement defines difficulty); held-out
preference accuracy (implicit-reward margin > 0 on held-out pairs with the same label noise; the clean-label version
and the greedy-answer accuracy are in the JSON: on this toy DPO lowers greedy accuracy for every method, including
dpo_full, while pass@1 rises); steps and compute to a target accuracy; and the share of flipped pairs among the pairs
trained on.

Run: ``python benchmarks/toy_dpo.py`` (defaults below; ~minutes on 2 CPU cores). ``--quick`` is a smoke run.
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from rlplugins.losses.dpo import DPOConfig, dpo_loss
from rlplugins.selection import SELECTOR_NAMES, SageConfig, make_selector

# Display order: SAGE first, then its ablations, then the baselines.
DEFAULT_METHODS = SELECTOR_NAMES


@dataclass(frozen=True)
class ToyConfig:
    seeds: int = 8
    steps: int = 240
    batch_size: int = 32
    eval_every: int = 10
    dim: int = 16
    hidden: int = 64
    answers: int = 8
    trace_len: int = 12
    train_problems: int = 1500
    heldout_problems: int = 600
    samples_per_problem: int = 8
    pairs_per_problem: int = 2
    noise: float = 0.2
    ref_sft_steps: int = 60
    ref_label_noise: float = 0.3
    beta: float = 0.1
    lr: float = 1e-3
    target_fraction: float = 0.8
    methods: tuple[str, ...] = field(default=DEFAULT_METHODS)


class SeqPolicy(torch.nn.Module):
    """Per-position logits from the problem vector; sequence log-prob = sum of token log-probs."""

    def __init__(self, dim: int, hidden: int, positions: int, vocab: int) -> None:
        super().__init__()
        self.positions, self.vocab = positions, vocab
        self.net = torch.nn.Sequential(
            torch.nn.Linear(dim, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, positions * vocab)
        )

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self.net(x).view(-1, self.positions, self.vocab), dim=-1)

    def seq_logps(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.log_probs(x).gather(-1, y.unsqueeze(-1)).squeeze(-1).sum(-1)


@dataclass
class PairData:
    x: torch.Tensor  # [P, d] problem of each pair
    yw: torch.Tensor  # [P, L+1] chosen response (as labelled, possibly flipped)
    yl: torch.Tensor  # [P, L+1] rejected response
    flipped: torch.Tensor  # [P] bool: the label is wrong
    difficulty: torch.Tensor  # [P] 1 - pass rate of the pair's problem


def _sample_pairs(cfg: ToyConfig, ref: SeqPolicy, x: torch.Tensor, answer: torch.Tensor, g: torch.Generator):
    """Self-sampled, verified pairs from the reference (C.6) with a share of flipped labels."""
    n, k, pos = x.shape[0], cfg.samples_per_problem, cfg.trace_len + 1
    with torch.no_grad():
        probs = ref.log_probs(x).exp()  # [n, pos, V]
    flat = probs.repeat_interleave(k, dim=0).view(-1, cfg.answers)
    samples = torch.multinomial(flat, 1, generator=g).view(n, k, pos)
    correct = samples[:, :, -1] == answer.unsqueeze(1)  # [n, k]
    pass_rate = correct.double().mean(1)
    xs, yws, yls, diffs = [], [], [], []
    for i in range(n):
        ci = correct[i].nonzero().flatten()
        wi = (~correct[i]).nonzero().flatten()
        if ci.numel() == 0 or wi.numel() == 0:
            continue  # pass rate 0 or 1: no valid pair (B7 step 2)
        m = min(cfg.pairs_per_problem, ci.numel(), wi.numel())
        cs = ci[torch.randperm(ci.numel(), generator=g)[:m]]
        ws = wi[torch.randperm(wi.numel(), generator=g)[:m]]
        for c, w in zip(cs.tolist(), ws.tolist()):
            xs.append(x[i])
            yws.append(samples[i, c])
            yls.append(samples[i, w])
            diffs.append(1.0 - pass_rate[i].item())
    x_p = torch.stack(xs)
    yw, yl = torch.stack(yws), torch.stack(yls)
    flipped = torch.rand(x_p.shape[0], generator=g) < cfg.noise
    yw2 = torch.where(flipped.unsqueeze(1), yl, yw)
    yl2 = torch.where(flipped.unsqueeze(1), yw, yl)
    return PairData(x_p, yw2, yl2, flipped, torch.tensor(diffs, dtype=torch.float64))


def build_world(cfg: ToyConfig, seed: int):
    """Teacher, reference model, training pairs, held-out pairs and held-out problems for one seed."""
    g = torch.Generator().manual_seed(1000 + seed)
    torch.manual_seed(1000 + seed)
    teacher = torch.randn(cfg.answers, cfg.dim, generator=g)
    ref = SeqPolicy(cfg.dim, cfg.hidden, cfg.trace_len + 1, cfg.answers)
    # Noisy supervised warm-start of the answer position only: a partly competent reference, as an SFT model.
    opt = torch.optim.Adam(ref.parameters(), lr=3e-3)
    for _ in range(cfg.ref_sft_steps):
        xb = torch.randn(128, cfg.dim, generator=g)
        yb = (xb @ teacher.T).argmax(1)
        noisy = torch.rand(128, generator=g) < cfg.ref_label_noise
        yb = torch.where(noisy, torch.randint(0, cfg.answers, (128,), generator=g), yb)
        loss = F.nll_loss(ref.log_probs(xb)[:, -1], yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    x_tr = torch.randn(cfg.train_problems, cfg.dim, generator=g)
    x_ho = torch.randn(cfg.heldout_problems, cfg.dim, generator=g)
    train = _sample_pairs(cfg, ref, x_tr, (x_tr @ teacher.T).argmax(1), g)
    held = _sample_pairs(cfg, ref, x_ho, (x_ho @ teacher.T).argmax(1), g)
    return teacher, ref, train, held, x_ho, (x_ho @ teacher.T).argmax(1)


def _pair_logps(model: SeqPolicy, data: PairData, idx: torch.Tensor | None = None):
    x, yw, yl = (data.x, data.yw, data.yl) if idx is None else (data.x[idx], data.yw[idx], data.yl[idx])
    lp = model.log_probs(x)
    pc = lp.gather(-1, yw.unsqueeze(-1)).squeeze(-1).sum(-1)
    pr = lp.gather(-1, yl.unsqueeze(-1)).squeeze(-1).sum(-1)
    return pc, pr


def _evaluate(policy, ref_held, held, x_ho, a_ho, beta):
    with torch.no_grad():
        pc, pr = _pair_logps(policy, held)
        margin = beta * ((pc - ref_held[0]) - (pr - ref_held[1]))
        pref = float((margin > 0).double().mean())
        clean = float(((margin > 0) != held.flipped).double().mean())
        answer_lp = policy.log_probs(x_ho)[:, -1]
        # pass@1 of a sampled answer, exactly: mean over problems of pi(a* | x)
        gt = float(answer_lp.gather(1, a_ho.unsqueeze(1)).exp().mean())
        greedy = float((answer_lp.argmax(-1) == a_ho).double().mean())
    return gt, pref, clean, greedy


def parse_variant(spec: str) -> tuple[str, str, dict]:
    """``"sage:boundary_band=0.1,rescore_interval=20"`` -> (label, selector name, SageConfig overrides)."""
    name, _, rest = spec.partition(":")
    if name not in SELECTOR_NAMES:
        raise ValueError(f"variant {spec!r}: unknown selector {name!r}")
    overrides: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        if key not in SageConfig.__dataclass_fields__:
            raise ValueError(f"variant {spec!r}: SageConfig has no field {key!r}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        overrides[key] = value
    label = f"{name}[{rest}]" if rest else name
    return label, name, overrides


def run_method(cfg: ToyConfig, name: str, seed: int, world, overrides: dict | None = None) -> dict:
    _, ref, train, held, x_ho, a_ho = world
    torch.manual_seed(seed)
    policy = copy.deepcopy(ref)
    for p in policy.parameters():
        p.requires_grad_(True)
    with torch.no_grad():
        ref_c, ref_r = _pair_logps(ref, train)
        ref_held = _pair_logps(ref, held)
    n_pairs = train.x.shape[0]
    sage_cfg = SageConfig(**{**(overrides or {}), "beta": cfg.beta, "seed": seed})
    sel = make_selector(
        name, num_pairs=n_pairs, batch_size=cfg.batch_size, config=sage_cfg, difficulty=train.difficulty,
        total_steps=cfg.steps,
    )
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    loss_cfg = DPOConfig(beta=cfg.beta)
    scored = noisy = 0
    curve = []
    gt, pref, clean, greedy = _evaluate(policy, ref_held, held, x_ho, a_ho, cfg.beta)
    curve.append({"step": 0, "backward_pairs": 0, "compute": 0, "gt_acc": gt, "pref_acc": pref,
                  "clean_pref_acc": clean, "greedy_acc": greedy})
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        while (idx := sel.indices_to_score()).numel() > 0:
            with torch.no_grad():
                pc, pr = _pair_logps(policy, train, idx)
            sel.update_scores(idx, pc, pr, ref_c[idx], ref_r[idx])
            scored += idx.numel()
        batch = sel.next_batch()
        pc, pr = _pair_logps(policy, train, batch)
        out = dpo_loss(pc, pr, ref_c[batch], ref_r[batch], loss_cfg)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sel.observe_batch(batch, pc.detach(), pr.detach(), ref_c[batch], ref_r[batch])
        noisy += int(train.flipped[batch].sum())
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            gt, pref, clean, greedy = _evaluate(policy, ref_held, held, x_ho, a_ho, cfg.beta)
            bwd = (step + 1) * cfg.batch_size
            curve.append({"step": step + 1, "backward_pairs": bwd, "compute": 3 * bwd + scored, "gt_acc": gt,
                          "pref_acc": pref, "clean_pref_acc": clean, "greedy_acc": greedy})
    m = sel.metrics()
    return {
        "curve": curve,
        "scored_pairs": scored,
        "noisy_share": noisy / (cfg.steps * cfg.batch_size),
        "dataset_noise_share": float(train.flipped.double().mean()),
        "num_pairs": n_pairs,
        "selector_metrics": {k: (v if math.isfinite(v) else None) for k, v in m.items()},
        "seconds": time.perf_counter() - t0,
    }


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def summarise(cfg: ToyConfig, runs: dict[str, list[dict]], ref_gt: list[float]) -> dict:
    """Per-method summary; the target is a fixed share of dpo_full's mean gain over the reference (same for all)."""
    base = runs.get("dpo_full") or next(iter(runs.values()))
    ref_acc = statistics.fmean(ref_gt)
    full_final = statistics.fmean(r["curve"][-1]["gt_acc"] for r in base)
    target = ref_acc + cfg.target_fraction * (full_final - ref_acc)
    out = {"target_gt_acc": target, "reference_gt_acc": ref_acc, "methods": {}}
    for name, rs in runs.items():
        steps_to, compute_to = [], []
        for r in rs:
            hit = next((p for p in r["curve"] if p["gt_acc"] >= target), None)
            steps_to.append(hit["step"] if hit else None)
            compute_to.append(hit["compute"] if hit else None)
        reached = sum(s is not None for s in steps_to)
        # the area under the accuracy-vs-step curve summarises speed without a threshold
        auc = [statistics.fmean(p["gt_acc"] for p in r["curve"]) for r in rs]
        fields = {
            "final_gt_acc": [r["curve"][-1]["gt_acc"] for r in rs],
            "final_pref_acc": [r["curve"][-1]["pref_acc"] for r in rs],
            "final_clean_pref_acc": [r["curve"][-1]["clean_pref_acc"] for r in rs],
            "final_greedy_acc": [r["curve"][-1]["greedy_acc"] for r in rs],
            "best_gt_acc": [max(p["gt_acc"] for p in r["curve"]) for r in rs],
            "mean_gt_acc_over_training": auc,
            "noisy_share": [r["noisy_share"] for r in rs],
            "scored_pairs": [r["scored_pairs"] for r in rs],
            "total_compute": [r["curve"][-1]["compute"] for r in rs],
        }
        summary = {k: dict(zip(("mean", "std"), _mean_std(v))) for k, v in fields.items()}
        summary["steps_to_target"] = {
            "reached": reached,
            "of": len(rs),
            "median": statistics.median(steps_to) if reached == len(rs) else None,
            "per_seed": steps_to,
        }
        summary["compute_to_target"] = {
            "median": statistics.median(compute_to) if reached == len(rs) else None,
            "per_seed": compute_to,
        }
        paired = [r["curve"][-1]["gt_acc"] - b["curve"][-1]["gt_acc"] for r, b in zip(rs, base)]
        summary["final_gt_acc_minus_dpo_full"] = dict(zip(("mean", "std"), _mean_std(paired)))
        summary["wins_vs_dpo_full"] = sum(d > 0 for d in paired)
        out["methods"][name] = summary
    return out


def format_table(cfg: ToyConfig, summary: dict) -> str:
    def pm(d, scale=100.0, digits=1):
        return f"{d['mean'] * scale:.{digits}f} ± {d['std'] * scale:.{digits}f}"

    lines = [
        f"target GT accuracy = {summary['target_gt_acc'] * 100:.1f}% (reference {summary['reference_gt_acc'] * 100:.1f}%"
        f" + {cfg.target_fraction:.0%} of dpo_full's mean gain); {cfg.seeds} seeds; {cfg.steps} steps x "
        f"{cfg.batch_size} pairs = {cfg.steps * cfg.batch_size} backward pairs for every method",
        "",
        "| method | final GT acc % | Δ vs dpo_full (wins) | mean GT acc over training % | held-out pref acc % "
        "| steps to target (median) | compute to target (median) | scored fwd pairs | total compute | noisy share % |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary["methods"].items():
        st = s["steps_to_target"]
        steps = f"{st['median']:.0f}" if st["median"] is not None else f"not reached ({st['reached']}/{st['of']})"
        ct = s["compute_to_target"]["median"]
        comp = f"{ct:.0f}" if ct is not None else "—"
        d = s["final_gt_acc_minus_dpo_full"]
        lines.append(
            f"| {name} | {pm(s['final_gt_acc'])} | {d['mean'] * 100:+.1f} ± {d['std'] * 100:.1f} "
            f"({s['wins_vs_dpo_full']}/{cfg.seeds}) | {pm(s['mean_gt_acc_over_training'])} | "
            f"{pm(s['final_pref_acc'])} | {steps} | {comp} | {s['scored_pairs']['mean']:.0f} | "
            f"{s['total_compute']['mean']:.0f} | {pm(s['noisy_share'])} |"
        )
    return "\n".join(lines)


def plot(cfg: ToyConfig, runs: dict[str, list[dict]], summary: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(runs)
    palette = {
        "sage": ("tab:red", "-", 2.8), "sage_no_curriculum": ("salmon", "--", 1.4),
        "sage_no_filter": ("tab:orange", "-", 1.4), "signal_only": ("gold", ":", 2.0),
        "dynamic_loss": ("tab:green", "-", 1.4), "dpo_full": ("black", "-", 2.2),
        "random_subset": ("tab:gray", "--", 1.4), "static_curriculum": ("tab:cyan", "-", 1.4),
        "selective_dpo": ("tab:purple", "--", 1.4), "static_low_gap": ("tab:brown", "-", 1.4),
        "static_high_margin": ("tab:blue", "--", 1.4),
    }
    extra = iter(["tab:pink", "tab:olive", "darkred", "teal", "navy", "peru", "lime", "indigo"])
    style = {}
    for n in names:
        color, ls, lw = palette.get(n) or (next(extra, "grey"), "-.", 1.8)
        style[n] = dict(color=color, ls=ls, lw=lw)

    fig, axes = plt.subplots(2, 2, figsize=(15, 11))

    def curves(ax, xkey, ykey, title, xlabel, first=0):
        for n in names:
            rs = runs[n]
            m = min(len(r["curve"]) for r in rs)
            xs = [statistics.fmean(r["curve"][i][xkey] for r in rs) for i in range(first, m)]
            ys = torch.tensor([[r["curve"][i][ykey] for i in range(first, m)] for r in rs]) * 100
            mu = ys.mean(0)
            ax.plot(xs, mu.tolist(), label=n, **style[n])
            if n in ("sage", "dpo_full") and ys.shape[0] > 1:
                sd = ys.std(0)
                ax.fill_between(xs, (mu - sd).tolist(), (mu + sd).tolist(), color=style[n]["color"], alpha=0.12)
        ax.set_title(title, fontsize=12)
        ax.set_xlabel(xlabel, fontsize=11)
        ax.grid(alpha=0.3)

    curves(axes[0, 0], "backward_pairs", "gt_acc",
           "Held-out ground-truth accuracy vs backward pairs (band: ±1 sd, sage and dpo_full)",
           "backward (trained) pairs")
    axes[0, 0].axhline(summary["target_gt_acc"] * 100, color="grey", ls=":", lw=1)
    axes[0, 0].set_ylabel("GT accuracy (pass@1) %, mean over seeds", fontsize=10)
    curves(axes[0, 1], "compute", "gt_acc", "Held-out ground-truth accuracy vs total compute (log scale)",
           "compute units (scoring forward = 1 / pair, training fwd+bwd = 3 / pair)", first=1)
    axes[0, 1].axhline(summary["target_gt_acc"] * 100, color="grey", ls=":", lw=1)
    axes[0, 1].set_xscale("log")
    # from the first evaluation after step 0: at step 0 every margin is exactly 0 and the (strict) accuracy is 0
    curves(axes[1, 0], "backward_pairs", "pref_acc",
           f"Held-out preference accuracy ({cfg.noise:.0%} flipped labels) vs backward pairs",
           "backward (trained) pairs", first=1)
    axes[1, 0].set_ylabel("preference accuracy %", fontsize=10)

    ax = axes[1, 1]
    means = [summary["methods"][n]["noisy_share"]["mean"] * 100 for n in names]
    sds = [summary["methods"][n]["noisy_share"]["std"] * 100 for n in names]
    ax.barh(range(len(names)), means, xerr=sds, color=[style[n]["color"] for n in names], alpha=0.8)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=10)
    ax.invert_yaxis()
    noise = statistics.fmean(r["dataset_noise_share"] for rs in runs.values() for r in rs) * 100
    ax.axvline(noise, color="grey", ls=":", lw=1.5, label=f"share in the data ({noise:.1f}%)")
    ax.set_xlabel("share of flipped (noisy) pairs among the pairs trained on, %", fontsize=11)
    ax.set_title("Noisy pairs trained on", fontsize=12)
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3, axis="x")

    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=6, fontsize=10, frameon=False)
    what = "SAGE settings (post-hoc sensitivity)" if any("[" in n for n in names) else "SAGE vs baselines"
    fig.suptitle(
        f"Toy DPO: {what} — {cfg.seeds} seeds, {cfg.steps} steps × {cfg.batch_size} pairs, "
        f"{cfg.noise:.0%} flipped labels, beta={cfg.beta}; GT accuracy = held-out pass@1 of a sampled answer",
        fontsize=14,
    )
    fig.tight_layout(rect=(0, 0.06, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rounded(obj, digits: int = 5):
    """Floats rounded for a compact JSON (the table is computed from the unrounded values)."""
    if isinstance(obj, float):
        return round(obj, digits)
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=ToyConfig.seeds)
    p.add_argument("--steps", type=int, default=ToyConfig.steps)
    p.add_argument("--batch-size", type=int, default=ToyConfig.batch_size)
    p.add_argument("--noise", type=float, default=ToyConfig.noise)
    p.add_argument("--train-problems", type=int, default=ToyConfig.train_problems)
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=list(SELECTOR_NAMES))
    p.add_argument("--variants", nargs="*", default=[],
                   help='extra rows, e.g. "sage:boundary_band=0.1,rescore_interval=20" (SageConfig overrides)')
    p.add_argument("--out", default="benchmarks/results/toy_dpo", help="path prefix for .json and .png")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (2 seeds, few steps)")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny ops: 1 is fastest)")
    p.add_argument("--replot", metavar="JSON", help="redraw the PNG of an existing result JSON and exit")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        cfg = ToyConfig(**{**saved["config"], "methods": tuple(saved["config"]["methods"])})
        out = args.replot[: -len(".json")] if args.replot.endswith(".json") else args.replot
        plot(cfg, saved["runs"], saved["summary"], out + ".png")
        print(f"wrote {out}.png")
        return saved
    torch.set_num_threads(args.threads)
    cfg = ToyConfig(seeds=args.seeds, steps=args.steps, batch_size=args.batch_size, noise=args.noise,
                    train_problems=args.train_problems, methods=tuple(args.methods))
    if args.quick:
        cfg = ToyConfig(seeds=2, steps=30, batch_size=16, eval_every=10, train_problems=200, heldout_problems=100,
                        noise=args.noise, methods=tuple(args.methods))
    rows = [(n, n, {}) for n in cfg.methods] + [parse_variant(v) for v in args.variants]
    t0 = time.perf_counter()
    runs: dict[str, list[dict]] = {label: [] for label, _, _ in rows}
    ref_gt = []
    for seed in range(cfg.seeds):
        world = build_world(cfg, seed)
        for label, name, overrides in rows:
            r = run_method(cfg, name, seed, world, overrides)
            runs[label].append(r)
            print(f"seed {seed} {label:20s} final GT {r['curve'][-1]['gt_acc']:.3f} "
                  f"noisy {r['noisy_share']:.3f} scored {r['scored_pairs']} ({r['seconds']:.1f}s)", flush=True)
        ref_gt.append(runs[rows[0][0]][-1]["curve"][0]["gt_acc"])
    summary = summarise(cfg, runs, ref_gt)
    table = format_table(cfg, summary)
    print()
    print(table)
    elapsed = time.perf_counter() - t0
    result = {
        "benchmark": "toy_dpo",
        "config": asdict(cfg),
        "variants": {label: {"selector": name, "overrides": ov} for label, name, ov in rows if ov},
        "command": "python benchmarks/toy_dpo.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sage_config": asdict(SageConfig(beta=cfg.beta)),
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                        "wall_seconds": round(elapsed, 1)},
        "summary": summary,
        "table_markdown": table,
        "runs": {n: [{k: v for k, v in r.items()} for r in rs] for n, rs in runs.items()},
    }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(_rounded(result), f, indent=1)
    if not args.no_plot:
        plot(cfg, runs, summary, args.out + ".png")
    print(f"\nwrote {args.out}.json" + ("" if args.no_plot else f" and {args.out}.png") + f" in {elapsed:.0f}s")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
