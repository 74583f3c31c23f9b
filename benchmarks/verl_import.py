"""What ``import verl`` costs with rlplugins' ``verl.plugins`` entry point: lazy registration vs eager.

Each measurement is a fresh interpreter (imports are cached per process), timed inside the process with
``time.perf_counter`` around the import statements only; the variants are interleaved round by round so that
machine load drifts hit them alike. Variants:

- ``verl alone``: ``VERL_USE_EXTERNAL_PLUGINS=none``, ``import verl``;
- ``lazy (ours)``: the entry point enabled (veRL's default), ``import verl``;
- ``eager (before)``: ``VERL_USE_EXTERNAL_PLUGINS=none``, ``import verl`` then what the entry point did before
  registration became lazy (``register_policy_losses()``, which imports ``verl.trainer.ppo.core_algos``);
- ``lazy + first lookup``: the entry point enabled, ``import verl`` then ``get_policy_loss_fn("maspo")``
  (what an actor process pays anyway: veRL imports core_algos itself there).

Run in the veRL environment: ``.venv-verl/bin/python benchmarks/verl_import.py [--rounds 15]``; writes
``benchmarks/results/verl_import.{json,md,png}``.
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
import sys, time, json
t0 = time.perf_counter()
{body}
dt = time.perf_counter() - t0
print(json.dumps({{"seconds": dt, "modules": len(sys.modules),
                  "core_algos": "verl.trainer.ppo.core_algos" in sys.modules}}))
"""

VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "verl alone": ({"VERL_USE_EXTERNAL_PLUGINS": "none"}, "import verl"),
    "lazy (ours)": ({"VERL_USE_EXTERNAL_PLUGINS": "auto"}, "import verl"),
    "eager (before)": (
        {"VERL_USE_EXTERNAL_PLUGINS": "none"},
        "import verl\nfrom rlplugins.integrations.verl.losses import register_policy_losses\nregister_policy_losses()",
    ),
    "lazy + first lookup": (
        {"VERL_USE_EXTERNAL_PLUGINS": "auto"},
        "import verl\nfrom verl.trainer.ppo.core_algos import get_policy_loss_fn\nget_policy_loss_fn('maspo')",
    ),
}


def measure(env: dict[str, str], body: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", _TIMED.format(body=body)], env={**os.environ, **env}, capture_output=True, text=True,
        check=True, cwd="/",
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    for env, body in VARIANTS.values():  # warm the file-system cache and the .pyc files once
        measure(env, body)
    samples: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for _ in range(args.rounds):
        for name, (env, body) in VARIANTS.items():
            samples[name].append(measure(env, body))
    rows = []
    for name, runs in samples.items():
        seconds = [r["seconds"] for r in runs]
        rows.append({"variant": name, "median_s": statistics.median(seconds), "min_s": min(seconds),
                     "modules": runs[-1]["modules"], "core_algos_imported": runs[-1]["core_algos"],
                     "samples_s": seconds})
    base = {r["variant"]: r for r in rows}
    saving = base["eager (before)"]["median_s"] - base["lazy (ours)"]["median_s"]
    lines = [
        f"`import verl`, fresh process each, median of {args.rounds} interleaved rounds "
        f"({os.cpu_count()} CPUs, shared machine)",
        "",
        "| variant | median (s) | min (s) | modules loaded | core_algos imported |",
        "|---|---|---|---|---|",
        *(f"| {r['variant']} | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['modules']} | {r['core_algos_imported']} |"
          for r in rows),
        "",
        f"Saving per process that never builds an actor (eager - lazy, medians): {saving:.3f} s, "
        f"{base['eager (before)']['modules'] - base['lazy (ours)']['modules']} modules.",
    ]
    print("\n".join(lines))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "verl_import.json").write_text(json.dumps({"rounds": args.rounds, "rows": rows,
                                                          "saving_s": saving}, indent=2))
    (RESULTS / "verl_import.md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.boxplot([r["samples_s"] for r in rows], vert=False, labels=[r["variant"] for r in rows])
    ax.set_xlabel("seconds (fresh process)")
    ax.set_title("import verl with rlplugins' entry point")
    fig.tight_layout()
    fig.savefig(RESULTS / "verl_import.png", dpi=120)


if __name__ == "__main__":
    main()
