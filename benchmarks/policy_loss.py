"""CPU cost of the policy losses on [batch, resp_len] log-probs, side by side with veRL's built-ins.

    .venv-verl/bin/python benchmarks/policy_loss.py                # veRL installed: its built-ins as reference
    .venv/bin/python benchmarks/policy_loss.py                     # no veRL: rlplugins rows only
    .venv-verl/bin/python benchmarks/policy_loss.py --shapes 64x4096 --rounds 31

What is timed: forward + backward (``loss.backward()`` down to ``log_prob``) including the metrics each provider
returns (veRL's built-ins return Python floats: their ``.item()`` calls are part of their cost, as our metrics'
one host sync is part of ours), token-mean aggregation, random response lengths (about 3/4 of the positions valid).

Providers:

    verl:<name>        veRL 0.9.1's registered policy loss ``<name>`` (vanilla, sapo, cispo, gspo) through
                       ``get_policy_loss_fn``, with an FSDPActorConfig (veRL's defaults)
    verl:maspo ...     our losses through veRL's registry (the adapter ``rlplugins.integrations.verl``)
    core:<name>        ``rlplugins.losses.compute_policy_loss(<name>, ...)``, every documented metric
    token:<name>       ``token_policy_loss`` + ``agg_loss`` only (the bare math: no validation, no metrics)

Timing: ``--rounds`` interleaved rounds; in each round every provider runs ``--inner`` times back to back in a
shuffled order and its mean is recorded. Reported: the median over rounds, and the median over rounds of the ratio
to ``verl:vanilla`` measured in the same round (robust to a shared machine's load drifting between rounds).
Writes ``benchmarks/results/policy_loss.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import time
from typing import Any, Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
CORE_LOSSES = ("maspo", "ppo_clip", "sapo", "cispo", "gspo")
VERL_BUILTINS = ("vanilla", "sapo", "cispo", "gspo")
VERL_OURS = ("maspo", "rlp_ppo_clip", "rlp_sapo")


def make_inputs(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g) * 3 - 0.05
    log_prob = old + 0.1 * torch.randn(batch, length, generator=g)
    adv = torch.randn(batch, 1, generator=g).expand(batch, length).contiguous()
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return {"old_log_prob": old, "log_prob": log_prob, "advantages": adv, "response_mask": mask}


def providers(have_verl: bool) -> dict[str, Callable[[dict], tuple[torch.Tensor, dict]]]:
    from rlplugins.losses import agg_loss, compute_policy_loss, token_policy_loss

    out: dict[str, Callable] = {}
    if have_verl:
        import rlplugins.integrations.verl  # noqa: F401  (registers our losses in veRL's registry)
        from verl.trainer.ppo.core_algos import get_policy_loss_fn
        from verl.workers.config import FSDPActorConfig

        config = FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=2)
        for name in VERL_BUILTINS + VERL_OURS:
            fn = get_policy_loss_fn(name)
            out[f"verl:{name}"] = (lambda fn: lambda x: fn(loss_agg_mode="token-mean", config=config,
                                                           rollout_is_weights=None, **x))(fn)
    for name in CORE_LOSSES:
        out[f"core:{name}"] = (lambda name: lambda x: compute_policy_loss(name, loss_agg_mode="token-mean", **x))(name)
    for name in ("maspo", "ppo_clip"):
        def bare(x, name=name):
            tok = token_policy_loss(name, log_prob=x["log_prob"], old_log_prob=x["old_log_prob"],
                                    advantages=x["advantages"], response_mask=x["response_mask"])
            return agg_loss(tok.loss, x["response_mask"], "token-mean"), {}
        out[f"token:{name}"] = bare
    return out


def run_once(fn: Callable, inputs: dict) -> None:
    x = dict(inputs, log_prob=inputs["log_prob"].detach().requires_grad_(True))
    loss, metrics = fn(x)
    loss.backward()
    assert x["log_prob"].grad is not None and metrics is not None


def bench(shape: tuple[int, int], rounds: int, inner: int, names: dict[str, Callable], seed: int) -> dict[str, Any]:
    inputs = make_inputs(*shape)
    for fn in names.values():  # warm-up (first-call costs: dispatch caches, lazy imports)
        for _ in range(2):
            run_once(fn, inputs)
    times: dict[str, list[float]] = {k: [] for k in names}
    rng = random.Random(seed)
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        for key in order:
            t0 = time.perf_counter()
            for _ in range(inner):
                run_once(names[key], inputs)
            times[key].append((time.perf_counter() - t0) / inner * 1e3)
    ref = "verl:vanilla" if "verl:vanilla" in times else None
    rows = {}
    for key, ts in times.items():
        row = {"median_ms": statistics.median(ts), "p20_ms": _q(ts, 0.2), "p80_ms": _q(ts, 0.8), "rounds_ms": ts}
        if ref:
            row["ratio_vs_verl_vanilla"] = statistics.median(t / r for t, r in zip(ts, times[ref]))
        rows[key] = row
    return rows


def _q(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def plot(results: dict, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib not installed here: draw the PNG with .venv/bin/python {os.path.relpath(__file__)} "
              f"--plot-only {os.path.splitext(path)[0]}.json")
        return
    shapes = list(results)
    fig, axes = plt.subplots(1, len(shapes), figsize=(6.5 * len(shapes), 5), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        rows = results[shape]
        keys = list(rows)
        vals = [rows[k]["median_ms"] for k in keys]
        colors = ["#999999" if k.startswith("verl:") and k.split(":")[1] in VERL_BUILTINS else
                  "#1f77b4" if k.startswith("core:") else "#2ca02c" if k.startswith("verl:") else "#ff7f0e" for k in keys]
        ax.barh(keys, vals, color=colors)
        if "verl:vanilla" in rows:
            ax.axvline(rows["verl:vanilla"]["median_ms"], color="k", ls="--", lw=1, label="veRL vanilla")
            ax.axvline(0.9 * rows["verl:vanilla"]["median_ms"], color="r", ls=":", lw=1, label="0.9 x vanilla")
            ax.legend(loc="lower right")
        ax.invert_yaxis()
        ax.set_xlabel("fwd + bwd, ms (median over interleaved rounds)")
        ax.set_title(f"policy losses on CPU, {shape} tokens")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="64x4096,8x1024")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--inner", type=int, default=0, help="calls per provider per round (0: by shape)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", metavar="JSON", help="only draw the PNG of an earlier run's JSON")
    args = parser.parse_args()
    if args.plot_only:
        with open(args.plot_only) as f:
            plot(json.load(f)["results"], os.path.splitext(args.plot_only)[0] + ".png")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    import importlib.util

    have_verl = importlib.util.find_spec("verl") is not None
    names = providers(have_verl)
    results: dict[str, dict] = {}
    for spec in args.shapes.split(","):
        b, t = map(int, spec.lower().split("x"))
        inner = args.inner or (3 if b * t >= 100_000 else 20)
        results[spec] = bench((b, t), args.rounds, inner, names, args.seed)
    load = os.getloadavg()
    print(f"\nCPU, torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load[0]:.1f} "
          f"(shared machine), {args.rounds} interleaved rounds")
    header = "| provider | " + " | ".join(f"{s} ms | x vanilla" for s in results) + " |"
    print(header)
    print("|---|" + "---|---|" * len(results))
    for key in names:
        cells = []
        for spec in results:
            r = results[spec][key]
            ratio = r.get("ratio_vs_verl_vanilla")
            cells.append(f"{r['median_ms']:.2f} | {'-' if ratio is None else f'{ratio:.2f}'}")
        print(f"| {key} | " + " | ".join(cells) + " |")
    os.makedirs(args.out, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg": load, "host": platform.node(),
            "rounds": args.rounds, "have_verl": have_verl}
    if have_verl:
        import verl

        meta["verl"] = verl.__version__
    with open(os.path.join(args.out, "policy_loss.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    plot(results, os.path.join(args.out, "policy_loss.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
