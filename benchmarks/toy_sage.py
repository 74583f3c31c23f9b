"""SAGE toy in the paper's setting: offline DPO on self-sampled, verified responses of an autoregressive policy.

The task is the demo's family (`rlplugins.toy_rlvr.ReverseTask`): the prompt is 1..max_len digits, the answer the
same digits reversed, verified exactly. The policy is the demo's one-layer GRU language model. One seed builds:

1. a reference model: the GRU after a short supervised warm-up on correct reversals, with a length mix that leaves
   short prompts easy and long ones hard (an SFT model of uneven competence);
2. a candidate pool: ``samples_per_prompt`` responses per training prompt sampled from the reference at temperature 1
   and verified; a prompt with pass rate 0 or 1 gives no pair; up to ``pairs_per_prompt`` (correct, wrong) pairs per
   prompt. The correct answer is unique, so the chosen response is the reference's correct sample and the rejected one
   a wrong sample of the same prompt: they share every digit the model got right (most of them). Difficulty is
   ``1 - pass_rate``. ``noise`` flips a share of the labels (a verifier error), recorded as ground truth;
3. held-out prompts: the solve rate is the exact pass@1 of a sampled answer, the mean over prompts of
   ``pi(reversed digits | prompt)`` (teacher forcing, no sampling noise).

Every method trains DPO (sigmoid loss, ``beta``) from the reference for the same number of steps and batch size: the
budget is ``steps * batch_size`` backward pairs, at most about one epoch of the pool (``pool_epochs`` reports it).
Reference log-probs are cached once for every method (free for all of them); before the first update the policy is
the reference, so a step-0 request is answered from that cache at no cost. Every other scoring forward costs 1 unit
per pair, a training pair 3 units (forward + backward).

Run ``python benchmarks/toy_sage.py`` (default: clean labels + 10% / 20% noise rows, dev seeds 0-15);
``--seed-offset 100`` gives the report seeds, ``--config other`` the second configuration; ``--quick`` is a smoke.
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
from dataclasses import asdict, dataclass, field, replace

import torch

from rlplugins.losses.dpo import DPOConfig, dpo_loss
from rlplugins.selection import SELECTOR_NAMES, SageConfig, make_selector
from rlplugins.toy_rlvr import ReverseTask, TinyPolicy

DEFAULT_METHODS = ("sage", "dpo_full", "random_subset")


@dataclass(frozen=True)
class ToyConfig:
    name: str = "default"
    base: int = 6
    min_len: int = 2
    max_len: int = 7
    hidden: int = 64
    embed: int = 32
    sft_steps: int = 600
    sft_batch: int = 64
    sft_lr: float = 3e-3
    train_prompts: int = 5000
    heldout_prompts: int = 1000
    samples_per_prompt: int = 8
    pairs_per_prompt: int = 2
    noise: float = 0.0
    steps: int = 100
    batch_size: int = 32
    beta: float = 2.0
    lr: float = 3e-4
    eval_every: int = 5
    seeds: int = 16
    seed_offset: int = 0
    methods: tuple[str, ...] = field(default=DEFAULT_METHODS)


# The second configuration of the report: other lengths, vocabulary and difficulty mix (never used for tuning).
OTHER = dict(name="other", base=9, min_len=1, max_len=6, sft_steps=450, train_prompts=4500)


@dataclass
class Pool:
    prompts: torch.Tensor  # [P, max_len]
    lengths: torch.Tensor  # [P]
    chosen: torch.Tensor  # [P, max_len] (as labelled; a flipped pair has the wrong answer here)
    rejected: torch.Tensor  # [P, max_len]
    flipped: torch.Tensor  # [P] bool
    difficulty: torch.Tensor  # [P] float64, 1 - pass rate of the pair's prompt
    shared: torch.Tensor  # [P] share of answer digits equal in chosen and rejected


def _seq_logps(policy: TinyPolicy, task: ReverseTask, prompts, lengths, responses, chunk: int = 4096):
    """Sum of token log-probs over the answer digits (positions >= length are not part of the response)."""
    mask = task.answer_mask(lengths)
    out = []
    for i in range(0, prompts.shape[0], chunk):
        s = slice(i, i + chunk)
        out.append((policy.log_probs(prompts[s], responses[s]) * mask[s]).sum(-1))
    return torch.cat(out) if out else torch.zeros(0)


def build_world(cfg: ToyConfig, seed: int):
    task = ReverseTask(base=cfg.base, max_len=cfg.max_len, min_len=cfg.min_len)
    g = torch.Generator().manual_seed(7919 + seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7919 + seed)
        ref = TinyPolicy(task, hidden=cfg.hidden, embed=cfg.embed)
    opt = torch.optim.Adam(ref.parameters(), lr=cfg.sft_lr)
    for _ in range(cfg.sft_steps):  # supervised warm-up on correct reversals
        p, n = task.sample_prompts(cfg.sft_batch, g)
        t = task.targets(p, n)
        loss = -(ref.log_probs(p, t) * task.answer_mask(n)).sum() / task.answer_mask(n).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    ref.eval()
    for q in ref.parameters():
        q.requires_grad_(False)
    p, n = task.sample_prompts(cfg.train_prompts, g)
    k = cfg.samples_per_prompt
    mask = task.answer_mask(n)
    with torch.no_grad():
        samples = ref.generate(p.repeat_interleave(k, 0), g).view(-1, k, cfg.max_len)
    target = task.targets(p, n)
    samples = torch.where(mask[:, None, :], samples, torch.zeros_like(samples))
    ok = (samples == target[:, None, :]).all(-1)  # [P, k]
    pass_rate = ok.double().mean(1)
    rows, rej = [], []
    for i in range(p.shape[0]):
        if not 0 < int(ok[i].sum()) < k:
            continue
        wrong = torch.unique(samples[i][~ok[i]], dim=0)
        wrong = wrong[torch.randperm(wrong.shape[0], generator=g)[: cfg.pairs_per_prompt]]
        for w in wrong:
            rows.append(i)
            rej.append(w)
    idx = torch.tensor(rows, dtype=torch.int64)
    yl = torch.stack(rej)
    yw = target[idx]
    # One uniform draw per pair: the pairs flipped at 10% noise are also flipped at 20% (paired noise rows).
    flip_draw = torch.rand(idx.numel(), generator=g)
    m = mask[idx]
    shared = ((yw == yl) & m).sum(1).double() / m.sum(1).double()
    clean = Pool(p[idx], n[idx], yw, yl, torch.zeros(idx.numel(), dtype=torch.bool), 1.0 - pass_rate[idx], shared)
    hp, hn = task.sample_prompts(cfg.heldout_prompts, g)
    return task, ref, clean, (hp, hn, task.targets(hp, hn)), flip_draw


def with_noise(world, noise: float):
    """The world with a share ``noise`` of its pairs' labels flipped (verifier errors)."""
    task, ref, clean, held, flip_draw = world
    flipped = flip_draw < noise
    chosen = torch.where(flipped[:, None], clean.rejected, clean.chosen)
    rejected = torch.where(flipped[:, None], clean.chosen, clean.rejected)
    return task, ref, replace(clean, chosen=chosen, rejected=rejected, flipped=flipped), held


@torch.no_grad()
def solve_rate(policy, task, held) -> float:
    hp, hn, ht = held
    return float(_seq_logps(policy, task, hp, hn, ht).exp().mean())


def parse_variant(spec: str) -> tuple[str, str, dict]:
    """``"sage:boundary_quantile=0.2"`` -> (label, selector name, SageConfig overrides)."""
    name, _, rest = spec.partition(":")
    if name not in SELECTOR_NAMES:
        raise ValueError(f"variant {spec!r}: unknown selector {name!r}")
    overrides: dict = {}
    for item in filter(None, rest.split(",")):
        key, _, raw = item.partition("=")
        if key not in SageConfig.__dataclass_fields__:
            raise ValueError(f"variant {spec!r}: SageConfig has no field {key!r}")
        try:
            overrides[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            overrides[key] = raw
    return (f"{name}[{rest}]" if rest else name), name, overrides


def run_method(cfg: ToyConfig, name: str, seed: int, world, overrides: dict | None = None) -> dict:
    task, ref, pool, held = world
    policy = copy.deepcopy(ref)
    for q in policy.parameters():
        q.requires_grad_(True)
    P = pool.prompts.shape[0]
    with torch.no_grad():
        ref_c = _seq_logps(ref, task, pool.prompts, pool.lengths, pool.chosen)
        ref_r = _seq_logps(ref, task, pool.prompts, pool.lengths, pool.rejected)
    sel = make_selector(
        name, num_pairs=P, batch_size=cfg.batch_size,
        config=SageConfig(**{**(overrides or {}), "beta": cfg.beta, "seed": seed}),
        difficulty=pool.difficulty, total_steps=cfg.steps,
    )
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    loss_cfg = DPOConfig(beta=cfg.beta)
    scored = noisy = 0
    curve = [{"step": 0, "backward_pairs": 0, "compute": 0, "solve_rate": solve_rate(policy, task, held)}]
    trained = torch.zeros(P, dtype=torch.int64)
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        while (idx := sel.indices_to_score()).numel() > 0:
            if step == 0:  # the policy is the reference: read the cache (no forward, no cost)
                pc, pr = ref_c[idx], ref_r[idx]
            else:
                with torch.no_grad():
                    pc = _seq_logps(policy, task, pool.prompts[idx], pool.lengths[idx], pool.chosen[idx])
                    pr = _seq_logps(policy, task, pool.prompts[idx], pool.lengths[idx], pool.rejected[idx])
                scored += idx.numel()
            sel.update_scores(idx, pc, pr, ref_c[idx], ref_r[idx])
        batch = sel.next_batch()
        pc = _seq_logps(policy, task, pool.prompts[batch], pool.lengths[batch], pool.chosen[batch])
        pr = _seq_logps(policy, task, pool.prompts[batch], pool.lengths[batch], pool.rejected[batch])
        out = dpo_loss(pc, pr, ref_c[batch], ref_r[batch], loss_cfg)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sel.observe_batch(batch, pc.detach(), pr.detach(), ref_c[batch], ref_r[batch])
        noisy += int(pool.flipped[batch].sum())
        trained[batch] += 1
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps:
            bwd = (step + 1) * cfg.batch_size
            curve.append({"step": step + 1, "backward_pairs": bwd, "compute": 3 * bwd + scored,
                          "solve_rate": solve_rate(policy, task, held)})
    m = sel.metrics()
    return {
        "curve": curve,
        "scored_pairs": scored,
        "noisy_share": noisy / (cfg.steps * cfg.batch_size),
        "distinct_pairs_trained": int((trained > 0).sum()),
        "max_repeats": int(trained.max()),
        "selector_metrics": {k: (v if math.isfinite(v) else None) for k, v in m.items()},
        "seconds": time.perf_counter() - t0,
    }


def world_stats(cfg: ToyConfig, world) -> dict:
    task, ref, pool, held = world
    return {
        "num_pairs": int(pool.prompts.shape[0]),
        "pool_epochs": cfg.steps * cfg.batch_size / pool.prompts.shape[0],
        "noise_share": float(pool.flipped.double().mean()),
        "mean_shared_digits": float(pool.shared.mean()),
        "mean_difficulty": float(pool.difficulty.mean()),
        "reference_solve_rate": solve_rate(ref, task, held),
    }


def _mean_std(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"mean": None, "std": None}
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0}


def _first_hit(curve, key, target):
    hit = next((p for p in curve if p["solve_rate"] >= target), None)
    return None if hit is None else hit[key]


def summarise(cfg: ToyConfig, runs: dict[str, list[dict]]) -> dict:
    """Paired per seed against dpo_full; target = dpo_full's final solve rate of the same seed."""
    base = runs["dpo_full"]
    full_bwd = cfg.steps * cfg.batch_size
    out = {}
    for label, rs in runs.items():
        finals = [r["curve"][-1]["solve_rate"] for r in rs]
        diffs = [r["curve"][-1]["solve_rate"] - b["curve"][-1]["solve_rate"] for r, b in zip(rs, base)]
        bwd_to, comp_to = [], []
        for r, b in zip(rs, base):
            target = b["curve"][-1]["solve_rate"]
            bwd_to.append(_first_hit(r["curve"], "backward_pairs", target))
            comp_to.append(_first_hit(r["curve"], "compute", target))
        reached = [x for x in bwd_to if x is not None]
        full_comp = 3 * full_bwd
        out[label] = {
            "final_solve_rate": _mean_std(finals),
            "diff_vs_dpo_full": _mean_std(diffs),
            "diff_per_seed": diffs,
            "wins_vs_dpo_full": sum(d > 0 for d in diffs),
            "auc_solve_rate": _mean_std([statistics.fmean(p["solve_rate"] for p in r["curve"]) for r in rs]),
            "reached_target": len(reached),
            # fraction of dpo_full's budget needed to reach dpo_full's final solve rate (not reached: counted as
            # 1.0 of the budget plus; the median is over seeds, None when fewer than half reach it)
            "backward_to_target_ratio_median": (
                statistics.median([x / full_bwd if x is not None else math.inf for x in bwd_to])
            ),
            "compute_to_target_ratio_median": (
                statistics.median([x / full_comp if x is not None else math.inf for x in comp_to])
            ),
            "scored_pairs": _mean_std([r["scored_pairs"] for r in rs]),
            "total_compute_ratio": _mean_std([r["curve"][-1]["compute"] / full_comp for r in rs]),
            "noisy_share": _mean_std([r["noisy_share"] for r in rs]),
            "distinct_pairs_trained": _mean_std([r["distinct_pairs_trained"] for r in rs]),
            "max_repeats": _mean_std([r["max_repeats"] for r in rs]),
        }
    return out


def format_table(cfg: ToyConfig, noise: float, summary: dict, stats: list[dict]) -> str:
    n_pairs = statistics.fmean(s["num_pairs"] for s in stats)
    ep = statistics.fmean(s["pool_epochs"] for s in stats)
    ref = statistics.fmean(s["reference_solve_rate"] for s in stats) * 100
    lines = [
        f"config {cfg.name}, noise {noise:.0%}, seeds {cfg.seed_offset}-{cfg.seed_offset + cfg.seeds - 1}: "
        f"pool {n_pairs:.0f} pairs, budget {cfg.steps} x {cfg.batch_size} = {ep:.2f} epochs; reference solve rate "
        f"{ref:.1f}%",
        "",
        "| method | held-out solve rate % | Δ vs dpo_full (pts) | wins/" + str(cfg.seeds)
        + " | backward pairs to dpo_full's final (median ×) | compute to it (median ×) | total compute × "
        "| noisy pairs trained % |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(x):
        return "not reached" if not math.isfinite(x) else f"{x:.2f}"

    for label, s in summary.items():
        f, d = s["final_solve_rate"], s["diff_vs_dpo_full"]
        lines.append(
            f"| {label} | {f['mean'] * 100:.2f} ± {f['std'] * 100:.2f} | {d['mean'] * 100:+.2f} ± {d['std'] * 100:.2f}"
            f" | {s['wins_vs_dpo_full']} | {ratio(s['backward_to_target_ratio_median'])} "
            f"| {ratio(s['compute_to_target_ratio_median'])} | {s['total_compute_ratio']['mean']:.2f} "
            f"| {s['noisy_share']['mean'] * 100:.1f} |"
        )
    return "\n".join(lines)


def combined_table(result: dict) -> str:
    """One markdown table over every noise row of a result (the form of docs/sage.md#development-run)."""
    seeds = result["config"]["seeds"]
    lines = [
        f"| labels | method | held-out solve rate % | Δ vs dpo_full, paired (pts) | wins/{seeds} "
        "| backward pairs to dpo_full's final (median ×) | compute to it (median ×) | noisy pairs trained % |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ratio(x):
        return "not reached" if x is None or not math.isfinite(x) else f"{x:.2f}"

    for key, row in result["rows"].items():
        labels = "clean" if row["noise"] == 0 else f"{key} flipped"
        for label, s in row["summary"].items():
            f, d = s["final_solve_rate"], s["diff_vs_dpo_full"]
            diff = "—" if label == "dpo_full" else f"{d['mean'] * 100:+.2f} ± {d['std'] * 100:.2f}"
            wins = "—" if label == "dpo_full" else str(s["wins_vs_dpo_full"])
            lines.append(
                f"| {labels} | {label} | {f['mean'] * 100:.2f} ± {f['std'] * 100:.2f} | {diff} | {wins} "
                f"| {ratio(s['backward_to_target_ratio_median'])} | {ratio(s['compute_to_target_ratio_median'])} "
                f"| {s['noisy_share']['mean'] * 100:.1f} |"
            )
    return "\n".join(lines)


def plot(cfg: ToyConfig, result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, axes = plt.subplots(3, len(rows), figsize=(6.5 * len(rows), 14), squeeze=False)
    for j, (noise_key, row) in enumerate(rows.items()):
        base = row["runs"]["dpo_full"]
        for i, xkey in enumerate(("backward_pairs", "compute")):
            ax = axes[i, j]
            for label, rs in row["runs"].items():
                m = min(len(r["curve"]) for r in rs)
                xs = [statistics.fmean(r["curve"][t][xkey] for r in rs) for t in range(m)]
                ys = [statistics.fmean(r["curve"][t]["solve_rate"] for r in rs) * 100 for t in range(m)]
                lw = 2.6 if label in ("sage", "dpo_full") else 1.2
                ax.plot(xs, ys, label=label, lw=lw, color="black" if label == "dpo_full" else None)
            ax.set_title(f"{cfg.name}, noise {noise_key}: held-out solve rate vs "
                         + ("backward pairs" if i == 0 else "compute (score fwd = 1, train pair = 3)"), fontsize=10)
            ax.set_xlabel("backward pairs" if i == 0 else "compute units")
            ax.set_ylabel("solve rate % (mean over seeds)")
            ax.grid(alpha=0.3)
        ax = axes[2, j]
        for label, rs in row["runs"].items():
            if label == "dpo_full":
                continue
            m = min(len(r["curve"]) for r in rs + base)
            xs = [r0["backward_pairs"] for r0 in base[0]["curve"][:m]]
            d = torch.tensor([[(r["curve"][t]["solve_rate"] - b["curve"][t]["solve_rate"]) * 100 for t in range(m)]
                              for r, b in zip(rs, base)])
            mu, sd = d.mean(0), d.std(0) if d.shape[0] > 1 else torch.zeros(m)
            line = ax.plot(xs, mu.tolist(), label=label, lw=2.0)[0]
            ax.fill_between(xs, (mu - sd).tolist(), (mu + sd).tolist(), color=line.get_color(), alpha=0.12)
        ax.axhline(0, color="black", lw=1)
        ax.set_title(f"{cfg.name}, noise {noise_key}: paired difference to dpo_full (mean ± 1 sd over seeds)",
                     fontsize=10)
        ax.set_xlabel("backward pairs")
        ax.set_ylabel("solve rate difference, points")
        ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=9, frameon=False)
    fig.suptitle(f"SAGE toy (GRU, self-sampled verified pairs), config {cfg.name}, seeds "
                 f"{cfg.seed_offset}-{cfg.seed_offset + cfg.seeds - 1}", fontsize=13)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _rounded(obj, digits: int = 5):
    if isinstance(obj, float):
        return round(obj, digits) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v, digits) for v in obj]
    return obj


def _run_seed(job) -> dict:
    """Every noise row and method of one seed (one world, built once; worker-process entry point)."""
    cfg, seed, noises, rows = job
    world = build_world(cfg, seed)
    out = {}
    for noise in noises:
        ncfg = replace(cfg, noise=noise)
        w = with_noise(world, noise)
        runs = {lab: run_method(ncfg, name, seed, w, ov) for lab, name, ov in rows}
        print(f"noise {noise:.2f} seed {seed}: " + ", ".join(
            f"{lab} {r['curve'][-1]['solve_rate'] * 100:.2f}" for lab, r in runs.items()), flush=True)
        out[f"{noise:.0%}"] = {"world": world_stats(ncfg, w), "runs": runs}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", choices=("default", "other"), default="default")
    p.add_argument("--seeds", type=int, default=ToyConfig.seeds)
    p.add_argument("--seed-offset", type=int, default=0, help="0: dev seeds 0-15; 100: report seeds 100-115")
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.1, 0.2])
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--methods", nargs="*", default=list(DEFAULT_METHODS), choices=list(SELECTOR_NAMES))
    p.add_argument("--variants", nargs="*", default=[], help='extra rows, e.g. "sage:boundary_quantile=0.2"')
    p.add_argument("--out", default=None, help="path prefix for .json and .png (default benchmarks/results/...)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--no-plot", action="store_true")
    p.add_argument("--workers", type=int, default=2, help="processes (one seed each at a time, 1 thread each)")
    p.add_argument("--replot", metavar="JSON", help="redraw the PNG of an existing result JSON and exit")
    p.add_argument("--finish-partial", metavar="JSON",
                   help="summarise the OUT.partial.json of a run cut short (same other arguments)")
    args = p.parse_args(argv)
    if args.replot:
        with open(args.replot) as f:
            saved = json.load(f)
        c = saved["config"]
        plot(ToyConfig(**{**c, "methods": tuple(c["methods"])}), saved, args.replot.removesuffix(".json") + ".png")
        return saved
    torch.set_num_threads(1)
    base = ToyConfig(**(OTHER if args.config == "other" else {}))
    cfg = replace(base, seeds=args.seeds, seed_offset=args.seed_offset, methods=tuple(args.methods),
                  **({"steps": args.steps} if args.steps else {}))
    if args.quick:
        cfg = replace(cfg, seeds=2, steps=8, train_prompts=120, heldout_prompts=64, sft_steps=20, eval_every=4,
                      max_len=5)
    if "dpo_full" not in cfg.methods:
        cfg = replace(cfg, methods=("dpo_full",) + cfg.methods)
    rows = [(n, n, {}) for n in cfg.methods] + [parse_variant(v) for v in args.variants]
    out = args.out or f"benchmarks/results/toy_sage_{cfg.name}_seeds{cfg.seed_offset}"
    t0 = time.perf_counter()
    partial = None
    if args.finish_partial:
        with open(args.finish_partial) as f:
            partial = json.load(f)
        cfg = replace(cfg, seeds=len(partial))
    result: dict = {"benchmark": "toy_sage", "config": asdict(cfg), "rows": {},
                    "variants": {lab: {"selector": n, "overrides": ov} for lab, n, ov in rows if ov},
                    "command": "python benchmarks/toy_sage.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "sage_config": asdict(SageConfig(beta=cfg.beta))}
    if partial is not None:
        result["config"] = asdict(cfg)
        result["note"] = f"summarised from {args.finish_partial}: the first {len(partial)} seeds of a run cut short"
        return _finish(args, argv, cfg, rows, out, t0, result, partial)
    jobs = [(cfg, cfg.seed_offset + s, tuple(args.noise), rows) for s in range(cfg.seeds)]
    if args.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.workers, initializer=torch.set_num_threads, initargs=(1,)) as ex:
            per_seed = _collect(ex.imap(_run_seed, jobs, chunksize=1), out)
    else:
        per_seed = _collect(map(_run_seed, jobs), out)
    os.remove(out + ".partial.json")
    return _finish(args, argv, cfg, rows, out, t0, result, per_seed)


def _collect(results, out: str) -> list[dict]:
    """Per-seed results in seed order; after each seed the ones so far go to ``out.partial.json`` (a run cut short
    can still be summarised with ``--finish-partial``)."""
    per_seed = []
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    for r in results:
        per_seed.append(r)
        with open(out + ".partial.json", "w") as f:
            json.dump(per_seed, f)
    return per_seed


def _finish(args, argv, cfg, rows, out, t0, result, per_seed) -> dict:
    """Tables, JSON and PNG from the per-seed results (``per_seed[i]``: noise key -> world and runs)."""
    tables = []
    for noise in [n for n in args.noise if f"{n:.0%}" in per_seed[0]]:
        key = f"{noise:.0%}"
        ncfg = replace(cfg, noise=noise)
        runs = {lab: [ps[key]["runs"][lab] for ps in per_seed] for lab, _, _ in rows}
        stats = [ps[key]["world"] for ps in per_seed]
        summary = summarise(ncfg, runs)
        table = format_table(ncfg, noise, summary, stats)
        print("\n" + table + "\n", flush=True)
        tables.append(table)
        result["rows"][key] = {"noise": noise, "world": stats, "summary": summary, "table": table, "runs": runs}
    elapsed = time.perf_counter() - t0
    result["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                             "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                             "wall_seconds": round(elapsed, 1)}
    result["tables_markdown"] = "\n\n".join(tables)
    result["table_combined"] = combined_table(result)
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(_rounded(result), f, indent=1)
    if not args.no_plot:
        plot(cfg, result, out + ".png")
    print(f"wrote {out}.json" + ("" if args.no_plot else f" and {out}.png") + f" in {elapsed:.0f}s")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
