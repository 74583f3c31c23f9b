"""The demo's three Markdown tables: outcomes, what each loss's gate did, paired differences."""

from __future__ import annotations

from typing import Any, Sequence


def _fmt(ms: dict[str, float] | None, digits: int = 3) -> str:
    if ms is None:
        return "—"
    return f"{ms['mean']:.{digits}f} ± {ms['std']:.{digits}f}"


def _fmt_steps(st: dict[str, Any]) -> str:
    if not st["reached"]:
        return f"— (0/{st['seeds']})"
    return f"{st['mean']:.0f} ± {st['std']:.0f} ({st['reached']}/{st['seeds']})"


def _fmt_paired(p: dict[str, Any], digits: int = 3) -> str:
    ci = "" if p["ci95"] is None else f" ± {p['ci95']:.{digits}f}"
    return f"{p['mean']:+.{digits}f}{ci} ({p['wins']}/{p['n']})"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def outcome_table(summary: dict[str, dict[str, Any]], threshold: float, k: int) -> str:
    header = ["loss", "greedy acc", f"mean@{k}", f"pass@{k}", "AUC", f"steps to {threshold:g}", "entropy (end)"]
    rows = [[label, _fmt(s["final_greedy"]), _fmt(s["mean_at_k"]), _fmt(s["pass_at_k"]), _fmt(s["auc"]),
             _fmt_steps(s["steps_to_threshold"]), _fmt(s["final_entropy"])]
            for label, s in summary.items()]
    return markdown(header, rows)


def gate_table(summary: dict[str, dict[str, Any]]) -> str:
    header = ["loss", "gate mean", "gate min", "damped (gate<0.5)", "w·r mean", "ppo_kl", "ratio max"]
    rows = [[label, _fmt(s["gate_mean"], 4), _fmt(s["gate_min"], 3), _fmt(s["damp_frac"], 4),
             _fmt(s["eff_weight_mean"], 4), _fmt(s["ppo_kl"], 4), _fmt(s["ratio_max"], 2)]
            for label, s in summary.items()]
    return markdown(header, rows)


def paired_table(diffs: dict[str, dict[str, Any]], baseline: str, k: int) -> str:
    header = ["loss − " + baseline, "Δ greedy acc", f"Δ mean@{k}", f"Δ pass@{k}", "Δ AUC", "Δ entropy (end)"]
    keys = ("final_greedy", "mean_at_k", "pass_at_k", "auc", "final_entropy")
    rows = [[label, *(_fmt_paired(d[key]) for key in keys)] for label, d in diffs.items()]
    return markdown(header, rows)


def format_tables(summary, diffs, baseline: str, threshold: float, k: int) -> str:
    parts = [outcome_table(summary, threshold, k), "", gate_table(summary)]
    if diffs:
        parts += ["", paired_table(diffs, baseline, k)]
    return "\n".join(parts)
