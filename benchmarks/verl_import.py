"""What rlplugins' ``verl.plugins`` entry point costs a veRL process: lazy registration (now) vs eager (before).

Each measurement is a fresh interpreter (imports are cached per process) with veRL's entry points disabled
(``VERL_USE_EXTERNAL_PLUGINS=none``) so that ``import verl`` runs first, untimed; then only the statements of the
variant are timed with ``time.perf_counter``. Variants are interleaved round by round so that machine load drifts
hit them alike.

- ``entry point, lazy (now)``: ``import rlplugins.integrations.verl.plugin``, what veRL's entry-point loader runs;
- ``entry point, eager (before)``: what that entry point ran before registration became lazy:
  ``register_policy_losses()`` (which imports ``verl.trainer.ppo.core_algos``) and ``install_from_env()``;
- ``core_algos, veRL alone``: ``import verl.trainer.ppo.core_algos`` without our plugin (what an actor process
  pays anyway);
- ``core_algos after lazy entry point``: the plugin imported untimed, then ``get_policy_loss_fn("maspo")`` timed:
  veRL's own core_algos import plus our deferred registration.

The first two rows are what a process that never builds an actor pays (rollout servers, reward workers); their
difference is the saving. Run in the veRL environment: ``.venv-verl/bin/python benchmarks/verl_import.py
[--rounds 15]``; writes ``benchmarks/results/verl_import.{json,md}``, and the plot ``verl_import.png`` when
matplotlib is installed (veRL's venv has none: ``.venv/bin/python benchmarks/verl_import.py --plot-only`` draws it
from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

_TIMED = """
import os, sys, time, json
import verl
{setup}
before = len(sys.modules)
t0 = time.perf_counter()
{body}
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "modules": len(sys.modules) - before,
                  "core_algos": "verl.trainer.ppo.core_algos" in sys.modules}}))
"""

# name -> (untimed setup after import verl, timed statements)
VARIANTS: dict[str, tuple[str, str]] = {
    "entry point, lazy (now)": ("", "import rlplugins.integrations.verl.plugin"),
    "entry point, eager (before)": (
        "",
        "from rlplugins.integrations.verl.losses import register_policy_losses\n"
        "from rlplugins.integrations.verl.token_logprobs import install_from_env\n"
        "register_policy_losses()\ninstall_from_env()",
    ),
    "core_algos, veRL alone": ("", "import verl.trainer.ppo.core_algos"),
    "core_algos after lazy entry point": (
        "import rlplugins.integrations.verl.plugin",
        "from verl.trainer.ppo.core_algos import get_policy_loss_fn\nget_policy_loss_fn('maspo')",
    ),
}


def measure(setup: str, body: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _TIMED.format(setup=setup, body=body)],
        env={**os.environ, "VERL_USE_EXTERNAL_PLUGINS": "none"}, capture_output=True, text=True, check=True, cwd="/",
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--plot-only", action="store_true", help="draw the PNG from the saved JSON, measure nothing")
    args = parser.parse_args()
    if args.plot_only:
        plot(json.loads((RESULTS / "verl_import.json").read_text())["rows"])
        return
    for setup, body in VARIANTS.values():  # warm the file-system cache and the .pyc files once
        measure(setup, body)
    samples: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (setup, body) in VARIANTS.items():
            samples[name].append(measure(setup, body))
    rows = []
    for name, runs in samples.items():
        seconds = [r["seconds"] for r in runs]
        rows.append({"variant": name, "median_s": statistics.median(seconds), "min_s": min(seconds),
                     "modules": runs[-1]["modules"], "core_algos_imported": runs[-1]["core_algos"],
                     "samples_s": seconds})
    base = {r["variant"]: r for r in rows}
    lazy, eager = base["entry point, lazy (now)"], base["entry point, eager (before)"]
    saving = eager["median_s"] - lazy["median_s"]
    lines = [
        f"Cost after `import verl`, fresh process each, median of {args.rounds} interleaved rounds "
        f"({os.cpu_count()} CPUs, shared machine)",
        "",
        "| variant | median (s) | min (s) | modules added | core_algos imported |",
        "|---|---|---|---|---|",
        *(f"| {r['variant']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['modules']} | {r['core_algos_imported']} |"
          for r in rows),
        "",
        f"Saving per veRL process that never builds an actor (eager - lazy, medians): {saving:.3f} s, "
        f"{eager['modules'] - lazy['modules']} modules.",
    ]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verl_import.json").write_text(json.dumps({"rounds": args.rounds, "rows": rows,
                                                          "saving_s": saving}, indent=2))
    (RESULTS / "verl_import.md").write_text("\n".join(lines) + "\n")
    plot(rows)


def plot(rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 3))
    for i, row in enumerate(rows):
        ax.scatter(row["samples_s"], [i] * len(row["samples_s"]), s=12, alpha=0.5, color="C0")
        ax.plot([row["median_s"]] * 2, [i - 0.3, i + 0.3], color="C3", linewidth=2)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r["variant"] for r in rows])
    ax.set_xlabel("seconds per fresh process (dots: rounds, bar: median)")
    ax.set_title("rlplugins' veRL entry point, cost after import verl")
    fig.tight_layout()
    fig.savefig(RESULTS / "verl_import.png", dpi=120)


if __name__ == "__main__":
    main()
