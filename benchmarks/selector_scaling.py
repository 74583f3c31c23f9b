"""How the selectors' bookkeeping scales with the number of pairs (no model: margins are synthetic).

    .venv/bin/python benchmarks/selector_scaling.py                         # pool sizes 1e4, 1e5, 1e6
    .venv/bin/python benchmarks/selector_scaling.py --sizes 10000 --steps 50
    .venv/bin/python benchmarks/selector_scaling.py --ref /path/to/older/checkout     # also time that rlplugins, same run

Every case runs in its own fresh process (peak memory is that process's peak RSS minus its RSS after importing torch
and building the inputs). Cases, per pool size N (batch 128, selection ratio 0.5, three difficulty tiers):

    pool         SageSelector, default config (pool rounds every 10 steps, cached rescoring, observe_batch on)
    online       SageSelector, granularity="online" (ceil(B / rho) = 256 candidates scored per step)
    dpo_full     UniformSelector over the shard (the cheapest baseline)
    prompts      PromptGroupSelector with N prompts in its history (veRL's replay buffer)

Reported per case: ms per step (``indices_to_score`` + ``update_scores`` + ``next_batch`` + ``observe_batch`` +
``metrics``, the synthetic log-probs excluded), over ``--steps`` steps after the first round: the mean and the median
in process CPU time (one thread: on an idle machine the wall time; on a shared one, less inflated by other processes
than the wall time, which is recorded too) and the slowest step (wall); in pool mode the mean includes the rounds
(every 10 steps, O(pool)) and the median is a step between rounds; for the pool case also one scoring round (the whole first level, about N/3 pairs with 10% of the next tier)
fed at once vs in chunks of 64 (CPU time; both include finalising the round, an O(pool) selection); save = ``state_dict`` + ``torch.save`` to memory, load = ``torch.load`` +
``load_state_dict`` into a fresh selector (for ``prompts``: ``state_dict`` + ``json.dumps`` and ``json.loads`` +
``load_state_dict``, as veRL's buffer checkpoints it). Writes ``benchmarks/results/selector_scaling.{json,png,md}``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
CASES = ("pool", "online", "dpo_full", "prompts")
BATCH, CHUNK = 128, 64


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _logps(idx, t):
    import torch

    i = idx.to(torch.float64)
    u = torch.sin(i * 0.731 + 0.05 * t) * 2.0 + 0.1 * torch.cos(i * 0.117 + t)
    pc = -20.0 - 0.001 * i
    return pc, pc - u / 0.1, pc, pc


def _selector_case(case: str, n: int, steps: int) -> dict:
    import torch

    from rlplugins.selection import SageConfig, make_selector

    difficulty = torch.rand(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    cfg = SageConfig(granularity="online") if case == "online" else SageConfig()
    name = "dpo_full" if case == "dpo_full" else "sage"
    base = _rss_mb()

    def build():
        return make_selector(name, num_pairs=n, batch_size=BATCH, config=cfg, difficulty=difficulty)

    t0 = time.perf_counter()
    sel = build()
    build_s = time.perf_counter() - t0
    out: dict = {"build_s": build_s}
    # the first round (pool mode: the whole first level) is not a per-step cost: run it before timing
    t = 0
    t0 = time.perf_counter()
    while (idx := sel.indices_to_score()).numel() > 0:
        sel.update_scores(idx, *_logps(idx, t))
    sel.observe_batch(b := sel.next_batch(), *_logps(b, t))
    out["first_round_s"] = time.perf_counter() - t0
    times, cpu = [], []
    for t in range(1, steps + 1):
        cost, cost_cpu = 0.0, 0.0
        lps = [_logps(sel.indices_to_score(), t)]  # the request is the same until fed: log-probs made beforehand
        t0, c0 = time.perf_counter(), time.process_time()
        idx = sel.indices_to_score()
        while idx.numel() > 0:
            sel.update_scores(idx, *(lps.pop() if lps else _logps(idx, t)))
            idx = sel.indices_to_score()
        b = sel.next_batch()
        cost, cost_cpu = time.perf_counter() - t0, time.process_time() - c0
        lp = _logps(b, t)
        t0, c0 = time.perf_counter(), time.process_time()
        sel.observe_batch(b, *lp)
        sel.metrics()
        times.append(cost + time.perf_counter() - t0)
        cpu.append(cost_cpu + time.process_time() - c0)
    _step_stats(out, times, cpu)
    buf = io.BytesIO()
    t0 = time.perf_counter()
    torch.save(sel.state_dict(), buf)
    out["save_s"] = time.perf_counter() - t0
    out["state_mb"] = buf.tell() / 2**20
    fresh = build()
    buf.seek(0)
    t0 = time.perf_counter()
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    out["load_s"] = time.perf_counter() - t0
    if case == "pool":
        # one scoring round fed at once vs in chunks of 64 (rescore_scope="pool": the whole first level)
        for label, chunk in (("update_at_once_s", None), ("update_chunked_s", CHUNK)):
            s = make_selector(name, num_pairs=n, batch_size=BATCH, config=cfg, difficulty=difficulty)
            req = s.indices_to_score()
            parts = [req] if chunk is None else list(torch.split(req, chunk))
            lps = [_logps(p, 0) for p in parts]
            t0 = time.process_time()  # CPU time, as the per-step columns
            for p, lp in zip(parts, lps):
                s.update_scores(p, *lp)
            out[label] = time.process_time() - t0
            out["round_pairs"] = int(req.numel())
            assert s.indices_to_score().numel() == 0
    out["peak_mb"] = _peak_mb() - base
    return out


def _prompts_case(n: int, steps: int) -> dict:
    from rlplugins.selection.prompt_groups import PromptGroupSelector, PromptGroupSelectorConfig

    base = _rss_mb()
    sel = PromptGroupSelector(PromptGroupSelectorConfig(max_prompts=max(n, 1)))
    t0 = time.perf_counter()
    for i in range(n):
        sel.observe(f"g{i}", f"prompt-{i}", (1.0, 0.0, float(i % 3 == 0), 1.0))
        if i % 4 == 3:
            sel.observe(f"h{i}", f"prompt-{i}", (0.0, 0.0, 1.0, 1.0))
    fill_s = time.perf_counter() - t0
    sel.discard([f"g{i}" for i in range(n)] + [f"h{i}" for i in range(n)])
    times, cpu = [], []
    for t in range(steps):
        ids = [f"s{t}-{j}" for j in range(2 * BATCH)]
        t0, c0 = time.perf_counter(), time.process_time()
        for j, gid in enumerate(ids):
            sel.observe(gid, f"prompt-{(t * 7919 + j * 104729) % n}", (1.0, 0.0, float(j % 2), 0.0))
        s = sel.select(ids, BATCH)
        sel.discard(ids)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        assert len(s.selected) == BATCH
    t0 = time.perf_counter()
    text = json.dumps(sel.state_dict())
    save_s = time.perf_counter() - t0
    fresh = PromptGroupSelector(PromptGroupSelectorConfig(max_prompts=max(n, 1)))
    t0 = time.perf_counter()
    fresh.load_state_dict(json.loads(text))
    load_s = time.perf_counter() - t0
    assert fresh.history("prompt-3") == sel.history("prompt-3")
    out = {"fill_s": fill_s}
    _step_stats(out, times, cpu)
    return {
        **out,
        "save_s": save_s,
        "load_s": load_s,
        "state_mb": len(text) / 2**20,
        "peak_mb": _peak_mb() - base,
    }


def _step_stats(out: dict, wall: list[float], cpu: list[float]) -> None:
    out["ms_per_step"] = 1e3 * sum(cpu) / len(cpu)
    out["ms_per_step_median"] = 1e3 * sorted(cpu)[len(cpu) // 2]
    out["ms_per_step_wall"] = 1e3 * sum(wall) / len(wall)
    out["ms_step_max"] = 1e3 * max(wall)


def _child(case: str, n: int, steps: int) -> None:
    import torch

    torch.set_num_threads(1)
    out = _prompts_case(n, steps) if case == "prompts" else _selector_case(case, n, steps)
    print("RESULT " + json.dumps(out))


def _run_case(case: str, n: int, steps: int, ref: str | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", case, str(n), str(steps)]
    env = dict(os.environ)
    if ref:  # import rlplugins from another checkout (its source tree first on the path)
        env["PYTHONPATH"] = os.path.abspath(ref) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        raise RuntimeError(f"case {case} N={n} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(line[0][len("RESULT "):])


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _table(rows: list[dict]) -> str:
    head = ("case", "N", "ms/step (CPU)", "median ms (CPU)", "ms/step (wall)", "max ms", "round pairs", "at once s", "chunks of 64 s", "save s", "load s",
            "state MB", "peak MB")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join((
            r["case"] + (" (ref)" if r.get("ref") else ""), f"{r['n']:.0e}".replace("+0", ""), _fmt(r["ms_per_step"]), _fmt(r["ms_per_step_median"]),
            _fmt(r["ms_per_step_wall"]), _fmt(r["ms_step_max"], 2),
            _fmt(r.get("round_pairs")), _fmt(r.get("update_at_once_s")), _fmt(r.get("update_chunked_s")),
            _fmt(r["save_s"]), _fmt(r["load_s"]), _fmt(r["state_mb"], 1), _fmt(r["peak_mb"], 0),
        )) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for case in CASES:
        rs = sorted((r for r in rows if r["case"] == case and not r.get("ref")), key=lambda r: r["n"])
        if not rs:
            continue
        ns = [r["n"] for r in rs]
        axes[0].plot(ns, [r["ms_per_step"] for r in rs], "o-", label=case)
        axes[1].plot(ns, [r["save_s"] + r["load_s"] for r in rs], "o-", label=case)
        axes[2].plot(ns, [max(r["peak_mb"], 0.1) for r in rs], "o-", label=case)
    rs = sorted((r for r in rows if r["case"] == "pool" and not r.get("ref")), key=lambda r: r["n"])
    if rs:
        axes[1].plot([r["n"] for r in rs], [r["update_chunked_s"] for r in rs], "k--", label="pool: round in chunks of 64")
        axes[1].plot([r["n"] for r in rs], [r["update_at_once_s"] for r in rs], "k:", label="pool: round at once")
    for ax, title in zip(axes, ("ms per step", "seconds (save + load; scoring round)", "peak MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pairs / prompts")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[1].legend(fontsize=7)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default=os.path.join(RESULTS, "selector_scaling"))
    ap.add_argument("--ref", default=None, help="also run every case with rlplugins imported from this checkout")
    ap.add_argument("--note", default="", help="a line written above the table (e.g. the machine's load)")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "N", "STEPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    rows = []
    for n in args.sizes:
        for case in args.cases:
            for ref in ([None, args.ref] if args.ref else [None]):  # side by side: same machine state
                r = {"case": case, "n": n, "ref": ref, **_run_case(case, n, args.steps, ref)}
                rows.append(r)
                print(f"{case:9s} N={n:>8d}{' (ref)' if ref else ''}  {r['ms_per_step']:8.3f} ms/step  "
                      f"save {r['save_s']:.3f} s  load {r['load_s']:.3f} s  peak {r['peak_mb']:.0f} MB", flush=True)
    import torch

    meta = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpus": os.cpu_count(), "threads": 1, "batch_size": BATCH, "steps": args.steps}
    table = _table(rows)
    print()
    print(table)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(args.out + ".md", "w") as f:
        f.write("# Selector scaling (benchmarks/selector_scaling.py)\n\n")
        f.write(f"CPU, one thread, torch {meta['torch']}, batch {BATCH}, {args.steps} timed steps per case, each case "
                "in a fresh process. Command: `.venv/bin/python benchmarks/selector_scaling.py`. Columns: module docstring "
                "of `benchmarks/selector_scaling.py`.\n\n")
        if args.note:
            f.write(args.note + "\n\n")
        f.write(table + "\n")
    _plot(rows, args.out + ".png")
    print(f"\nwrote {args.out}.json, .md, .png")


if __name__ == "__main__":
    main()
