"""Ahead-of-time compile report of every shipped kernel specialisation for sm_80 / sm_90a / sm_100a, no GPU needed.

    .venv/bin/python benchmarks/kernels_aot.py            # default launch configs + the --tune candidates
    .venv/bin/python benchmarks/kernels_aot.py --default  # default configs only (what tests/kernels/test_aot.py checks)

For each specialisation (kernel x gate x logits dtype x entropy x on/off-policy x launch config x target) it runs
``triton.compile`` with a ``GPUTarget`` and ``ptxas -v`` (``rlplugins.kernels.aot``), and records registers per
thread, spill bytes, stack, shared memory, and the passes over the logits counted in the PTX. Prints a summary
table (markdown, also ``benchmarks/results/kernels_aot.md``, shown in
docs/kernels.md#compiled-ahead-of-time-without-a-gpu) and writes every
row to ``benchmarks/results/kernels_aot.json``. Exits 1 if any specialisation fails to compile or a default
configuration spills.
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "0"  # set before Triton loads: the interpreter replaces @triton.jit

import argparse
import json
import platform
import re
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, TimeoutError, as_completed
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))

KERNEL_TITLES = {
    "logprobs_fwd": "token_logprobs forward (online softmax)",
    "logits_grad": "logits gradient (shared backward, in-place or not)",
    "fused_fwd": "fused policy loss forward (gate in epilogue)",
    "gated_token": "gated_token_loss (elementwise, [N])",
}


def _compile(args):
    from rlplugins.kernels import aot

    spec, target = args
    return asdict(aot.compile_one(aot.Spec(**spec), target))


def _rng(values):
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    lo, hi = min(values), max(values)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _passes(values):
    values = sorted({v for v in values if v is not None})
    return "/".join(f"{v:g}" for v in values) if values else "-"


def summary(rows: list[dict], config: str) -> list[str]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        s = r["spec"]
        if s["config"] == config:
            groups[(s["kernel"], s["dtype"], s["block"], s["num_warps"], r["target"])].append(r)
    lines = ["| kernel | logits | block/warps | target | variants | regs/thread | spills (B) | smem (B) | "
             "logits reads/row | writes/row |", "|---|---|---|---|---|---|---|---|---|---|"]
    order = list(KERNEL_TITLES)
    for key in sorted(groups, key=lambda k: (order.index(k[0]), k[1], k[2], k[3], k[4])):
        g = groups[key]
        kernel, dtype, block, warps, target = key
        ok = [r for r in g if r["ok"]]
        failed = len([r for r in g if not r["ok"] and "budget" not in r["error"]])
        late = len(g) - len(ok) - failed
        spills = max((r["spill_stores"] + r["spill_loads"] for r in ok), default=None)
        reads = _passes(r["logits_read_passes"] for r in ok)
        extra = {r["logits_extra_elements"] for r in ok if r["logits_extra_elements"]}
        if extra and reads != "-":
            reads += " + label"
        lines.append(
            f"| {kernel} | {dtype if kernel != 'gated_token' else '-'} | {block}/{warps} | sm_{target} | "
            f"{len(g)}{f' ({failed} FAILED)' if failed else ''}{f' ({late} not compiled in budget)' if late else ''} | "
            f"{_rng(r['regs'] for r in ok)} | "
            f"{'-' if spills is None else spills} | {_rng(r['smem'] for r in ok)} | {reads} | "
            f"{_passes(r['logits_write_passes'] for r in ok)} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--default", action="store_true", help="default launch configs only (no --tune candidates)")
    parser.add_argument("--targets", default="", help="comma-separated compute capabilities (default: all ptxas supports)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=1800.0,
                        help="wall-clock budget; specialisations not compiled by then are reported as such")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()

    import triton

    from rlplugins.kernels import aot

    targets = [int(t) for t in args.targets.split(",") if t] or aot.available_targets()
    work = [(asdict(s), t) for s in aot.specialisations(full=not args.default) for t in targets]
    print(f"compiling {len(work)} specialisations for {', '.join(f'sm_{t}' for t in targets)} "
          f"with {args.jobs} processes ...", flush=True)
    rows = []
    pool = ProcessPoolExecutor(args.jobs)
    futures = {pool.submit(_compile, w): w for w in work}
    try:
        for i, fut in enumerate(as_completed(futures, timeout=args.budget_s), 1):
            rows.append(fut.result())
            if i % 20 == 0 or i == len(work):
                print(f"  {i}/{len(work)}", flush=True)
    except TimeoutError:
        for fut, (spec, target) in futures.items():
            if not fut.done():
                rows.append({"spec": spec, "target": target, "ok": False,
                             "error": f"not compiled within the {args.budget_s:.0f} s budget of this run"})
        for proc in getattr(pool, "_processes", {}).values():  # a compile cannot be interrupted: stop its worker
            proc.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    order = {(json.dumps(s, sort_keys=True), t): i for i, (s, t) in enumerate(work)}
    rows.sort(key=lambda r: order[(json.dumps(r["spec"], sort_keys=True), r["target"])])
    timed_out = [r for r in rows if not r["ok"] and "budget" in r["error"]]
    failed = [r for r in rows if not r["ok"] and r not in timed_out]
    spilled = [r for r in rows if r["ok"] and r["spec"]["config"] == "default" and (r["spill_stores"] or r["spill_loads"])]
    from triton.backends.nvidia.compiler import get_ptxas

    import subprocess
    def _version(cc):
        out = subprocess.run([get_ptxas(cc).path, "--version"], capture_output=True, text=True).stdout
        return re.search(r"release ([\d.]+)", out).group(1)

    ptxas = ", ".join(f"sm_{t}: ptxas {_version(t)}" for t in targets)
    meta = {"triton": triton.__version__, "ptxas": ptxas, "host": platform.node(), "targets": targets,
            "gates": aot.distinct_gates(), "default_vocab": aot.DEFAULT_VOCAB,
            "tune_fwd": aot.TUNE_FWD, "tune_bwd": aot.TUNE_BWD}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "kernels_aot.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    md = [f"Default launch configurations (V >= 4096), triton {triton.__version__}, {ptxas}:", ""]
    md += summary(rows, "default")
    if any(r["spec"]["config"] == "tune" for r in rows):
        md += ["", "`--tune` candidates (bf16; fused: MASPO, on-policy off, no entropy):", ""]
        md += summary(rows, "tune")
    text = "\n".join(md)
    print(text)
    if not args.default:
        with open(os.path.join(args.out, "kernels_aot.md"), "w") as f:
            f.write(text + "\n")
    for r in failed:
        print(f"FAILED {r['spec']['kernel']} {r['spec']['label']} {r['spec']['dtype']} sm_{r['target']}: {r['error']}",
              file=sys.stderr)
    for r in spilled:
        print(f"SPILL {r['spec']['kernel']} {r['spec']['label']} {r['spec']['dtype']} sm_{r['target']}", file=sys.stderr)
    if timed_out:
        print(f"{len(timed_out)} specialisations not compiled within the budget: "
              + ", ".join(sorted({f"{r['spec']['kernel']} block {r['spec']['block']}/{r['spec']['num_warps']} warps"
                                  for r in timed_out})))
    print(f"{len(rows) - len(failed) - len(timed_out)}/{len(rows)} compiled; {len(spilled)} default configs spill; "
          f"wrote {os.path.join(args.out, 'kernels_aot.json')}")
    return 1 if failed or spilled else 0  # tune candidates over budget are reported, not failures


if __name__ == "__main__":
    raise SystemExit(main())
