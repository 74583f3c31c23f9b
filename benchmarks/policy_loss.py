"""CPU cost of the policy losses on [batch, resp_len] log-probs, side by side with the frameworks' built-ins.

    nice .venv-verl/bin/python benchmarks/policy_loss.py             # veRL's built-ins, our veRL entry points, core
    nice .venv-openrlhf/bin/python benchmarks/policy_loss.py         # OpenRLHF's PolicyLoss, CorePolicyLoss, core
    .venv/bin/python benchmarks/policy_loss.py --plot-only benchmarks/results/policy_loss.json   # the PNG

What is timed: forward + backward (``loss.backward()`` down to ``log_prob``) including the metrics each provider
returns as Python floats (veRL's built-ins call ``.item()`` on theirs, the core does one host sync for all of its
documented metrics), token-mean aggregation, random response lengths (about 3/4 of the positions valid).

Providers (those the running environment has):

    verl:<name>          veRL 0.9.1's registered policy loss ``<name>`` through ``get_policy_loss_fn`` with an
                         FSDPActorConfig (veRL's defaults): built-ins vanilla, sapo, cispo, gspo, and our entry
                         points registered by ``rlplugins.integrations.verl`` (maspo, rlp_ppo_clip, rlp_sapo, ...)
    openrlhf:ppo         OpenRLHF 0.11.2's own ``PolicyLoss`` (PPO clip), the reference in an OpenRLHF environment
    openrlhf:<name>      ``CorePolicyLoss(<name>)``, our OpenRLHF entry point (metrics in ``last_metrics``)
    core:<name>          ``rlplugins.losses.compute_policy_loss(<name>, ...)`` for every registered built-in
    token:<name>         ``token_policy_loss`` + ``agg_loss`` only (the bare math with autograd: no validation, no
                         metrics)

Timing: ``--rounds`` interleaved rounds; in each round every provider runs ``--inner`` times back to back in a
shuffled order and its mean is recorded. Reported: the median over rounds, and the median over rounds of the ratio
to the reference (``verl:vanilla``, else ``openrlhf:ppo``) measured in the same round, and for an entry point the
ratio to ``core:<its loss>`` (robust to a shared machine's load drifting between rounds). Writes
``benchmarks/results/<out-name>.json`` and ``.md`` (and ``.png`` where matplotlib is installed).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import statistics
import time
from typing import Any, Callable

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
VERL_BUILTINS = ("vanilla", "sapo", "cispo", "gspo")


def make_inputs(batch: int, length: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch, length, generator=g) * 3 - 0.05
    log_prob = old + 0.1 * torch.randn(batch, length, generator=g)
    adv = torch.randn(batch, 1, generator=g).expand(batch, length).contiguous()
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    return {"old_log_prob": old, "log_prob": log_prob, "advantages": adv, "response_mask": mask}


def providers(have_verl: bool, have_openrlhf: bool) -> tuple[dict[str, Callable], dict[str, str]]:
    """``{key: fn(inputs) -> (loss, metrics)}`` and ``{entry-point key: the core key of its loss}``."""
    from rlplugins.losses import agg_loss, compute_policy_loss, list_policy_losses, token_policy_loss
    from rlplugins.losses.registry import get_policy_loss

    builtins = [n for n in list_policy_losses() if get_policy_loss(n).analytic_grad]
    out: dict[str, Callable] = {}
    core_of: dict[str, str] = {}
    if have_verl:
        import rlplugins.integrations.verl  # noqa: F401  (registers our losses in veRL's registry)
        from rlplugins.integrations.verl.losses import VERL_POLICY_LOSSES
        from verl.trainer.ppo.core_algos import get_policy_loss_fn
        from verl.workers.config import FSDPActorConfig

        config = FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=2)
        for name in VERL_BUILTINS + tuple(VERL_POLICY_LOSSES):
            fn = get_policy_loss_fn(name)
            out[f"verl:{name}"] = (lambda fn: lambda x: fn(loss_agg_mode="token-mean", config=config,
                                                           rollout_is_weights=None, **x))(fn)
            if name in VERL_POLICY_LOSSES:
                core_of[f"verl:{name}"] = f"core:{VERL_POLICY_LOSSES[name][1]}"
    if have_openrlhf:
        import sys

        # OpenRLHF's package imports flash_attn (CUDA only); the tests' stub module (imports nothing else) stands in.
        sys.path.insert(0, os.path.join(HERE, os.pardir, "tests", "openrlhf", "support"))
        import rlp_openrlhf_stubs

        rlp_openrlhf_stubs.install()
        from openrlhf.models.loss import PolicyLoss
        from rlplugins.integrations.openrlhf.policy_loss import CorePolicyLoss

        def openrlhf_call(module):
            def call(x):
                loss, clip_ratio, ppo_kl, _, _ = module(x["log_prob"], x["old_log_prob"], x["advantages"],
                                                        action_mask=x["response_mask"])
                # OpenRLHF's trainer logs these two with .item(); CorePolicyLoss's metrics are floats already.
                metrics = {"clip_ratio": clip_ratio.item(), "ppo_kl": ppo_kl.item()}
                metrics.update(getattr(module, "last_metrics", {}))
                return loss, metrics
            return call

        out["openrlhf:ppo"] = openrlhf_call(PolicyLoss(policy_loss_type="ppo"))
        for name in builtins:
            out[f"openrlhf:{name}"] = openrlhf_call(CorePolicyLoss(name))
            core_of[f"openrlhf:{name}"] = f"core:{name}"
    for name in builtins:
        out[f"core:{name}"] = (lambda name: lambda x: compute_policy_loss(name, loss_agg_mode="token-mean", **x))(name)
    for name in ("maspo", "ppo_clip"):
        def bare(x, name=name):
            tok = token_policy_loss(name, log_prob=x["log_prob"], old_log_prob=x["old_log_prob"],
                                    advantages=x["advantages"], response_mask=x["response_mask"])
            return agg_loss(tok.loss, x["response_mask"], "token-mean"), {}
        out[f"token:{name}"] = bare
    return out, core_of


def run_once(fn: Callable, inputs: dict) -> None:
    x = dict(inputs, log_prob=inputs["log_prob"].detach().requires_grad_(True))
    loss, metrics = fn(x)
    loss.backward()
    assert x["log_prob"].grad is not None
    for value in metrics.values():  # every metric as a Python float, as a trainer logs it (a no-op for floats)
        float(value)


def bench(shape: tuple[int, int], rounds: int, inner: int, names: dict[str, Callable], core_of: dict[str, str],
          seed: int) -> dict[str, Any]:
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
    ref = reference(times)
    rows = {}
    for key, ts in times.items():
        row = {"median_ms": statistics.median(ts), "p20_ms": _q(ts, 0.2), "p80_ms": _q(ts, 0.8), "rounds_ms": ts}
        if ref:
            row["ratio_vs_ref"] = statistics.median(t / r for t, r in zip(ts, times[ref]))
        if key in core_of:
            row["ratio_vs_core"] = statistics.median(t / r for t, r in zip(ts, times[core_of[key]]))
        rows[key] = row
    return rows


def reference(rows: dict) -> str | None:
    return next((k for k in ("verl:vanilla", "openrlhf:ppo") if k in rows), None)


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
        colors = ["#999999" if k in ("openrlhf:ppo",) or (k.startswith("verl:") and k[5:] in VERL_BUILTINS) else
                  "#1f77b4" if k.startswith("core:") else "#2ca02c" if k.startswith(("verl:", "openrlhf:")) else
                  "#ff7f0e" for k in keys]
        ax.barh(keys, vals, color=colors)
        ref = reference(rows)
        if ref:
            ax.axvline(rows[ref]["median_ms"], color="k", ls="--", lw=1, label=ref)
            ax.axvline(0.9 * rows[ref]["median_ms"], color="r", ls=":", lw=1, label=f"0.9 x {ref}")
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
    parser.add_argument("--out-name", default="", help="file name stem (default: by the environment)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", metavar="JSON", help="only draw the PNG of an earlier run's JSON")
    args = parser.parse_args()
    if args.plot_only:
        with open(args.plot_only) as f:
            plot(json.load(f)["results"], os.path.splitext(args.plot_only)[0] + ".png")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    have_verl = importlib.util.find_spec("verl") is not None
    have_openrlhf = importlib.util.find_spec("openrlhf") is not None
    names, core_of = providers(have_verl, have_openrlhf)
    results: dict[str, dict] = {}
    for spec in args.shapes.split(","):
        b, t = map(int, spec.lower().split("x"))
        inner = args.inner or (3 if b * t >= 100_000 else 20)
        results[spec] = bench((b, t), args.rounds, inner, names, core_of, args.seed)
    load = os.getloadavg()
    ref = reference(next(iter(results.values())))
    title = (f"CPU, torch {torch.__version__}, {torch.get_num_threads()} threads, run with nice on a shared machine "
             f"(load average {load[0]:.1f} at the end), {args.rounds} interleaved rounds, median over rounds; "
             f"fwd+bwd of token-mean losses with every metric as a float")
    lines = [title, "", "| provider | " + " | ".join(f"{s} ms | x {ref} | x core" for s in results) + " |",
             "|---|" + "---:|---:|---:|" * len(results)]
    for key in names:
        cells = []
        for spec in results:
            r = results[spec][key]
            ratio, vs_core = r.get("ratio_vs_ref"), r.get("ratio_vs_core")
            cells.append(f"{r['median_ms']:.2f} | {'-' if ratio is None else f'{ratio:.2f}'} | "
                         f"{'-' if vs_core is None else f'{vs_core:.2f}'}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    print("\n" + "\n".join(lines))
    os.makedirs(args.out, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "loadavg": load, "host": platform.node(),
            "rounds": args.rounds, "reference": ref, "have_verl": have_verl, "have_openrlhf": have_openrlhf,
            "niceness": os.nice(0)}
    for module in ("verl", "openrlhf"):
        if meta[f"have_{module}"]:
            meta[module] = importlib.metadata.version(module)
    name = args.out_name or ("policy_loss" if have_verl else "policy_loss_openrlhf" if have_openrlhf else
                             "policy_loss_core")
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    with open(os.path.join(args.out, f"{name}.md"), "w") as f:
        f.write(f"# {name}\n\nWritten by `benchmarks/policy_loss.py` ({__doc__.splitlines()[0]})\n\n"
                + "\n".join(lines) + "\n")
    plot(results, os.path.join(args.out, f"{name}.png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
