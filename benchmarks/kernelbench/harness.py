"""Shared machinery of the kernel benchmark: statistics, a wall-clock timing loop, child processes, the resident
high-water mark, the printed table and the result files (JSON, PNG, markdown)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .providers import NAIVE, Inputs

RESULTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results")


@dataclass
class Timing:
    median: float
    p20: float
    p80: float

    @staticmethod
    def of(values: list[float]) -> "Timing":
        qs = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else [values[0]] * 9
        return Timing(statistics.median(values), qs[1], qs[7])


@dataclass
class Result:
    provider: str
    loss: str
    tokens: int
    vocab: int
    device: str
    fwd_ms: Timing | None = None
    bwd_ms: Timing | None = None
    total_ms: Timing | None = None
    cpu_total_ms: Timing | None = None  # CPU mode: process CPU time (user + system) of forward + backward
    peak_extra_bytes: int | None = None
    logits_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


# ------------------------------------------------------------------------------------------------------ timing


def time_wall(fn: Callable[[Inputs], Any], inp: Inputs, reps: int, warmup: int) -> dict[str, list[float]]:
    """Milliseconds of ``reps`` repetitions after ``warmup``: wall clock (``perf_counter``) of the forward, the
    backward and both (``fwd``, ``bwd``, ``total``), and the process's CPU time (user + system, page faults
    included) of both (``cpu_total``), which on a shared machine does not count the time spent waiting for a core."""
    out: dict[str, list[float]] = {"fwd": [], "bwd": [], "total": [], "cpu_total": []}
    for i in range(warmup + reps):
        inp.restore()
        c0 = time.process_time()
        t0 = time.perf_counter()
        loss = fn(inp)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        c2 = time.process_time()
        if i >= warmup:
            out["fwd"].append((t1 - t0) * 1e3)
            out["bwd"].append((t2 - t1) * 1e3)
            out["total"].append((t2 - t0) * 1e3)
            out["cpu_total"].append((c2 - c0) * 1e3)
    return out


# ------------------------------------------------------------------------------------------ child processes


def run_child(script: str, job: dict, env: dict[str, str] | None = None) -> dict:
    """Run ``script --_child JSON`` in a fresh interpreter; its last stdout line is a JSON object (or an error)."""
    cmd = [sys.executable, script, "--_child", json.dumps(job)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, **(env or {})))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()
        return {"error": f"child exited {proc.returncode}: {tail[-1] if tail else 'no output'}"}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------------------------- resident memory


def rss_kb(key: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in kB (Linux)."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def reset_high_water_mark() -> int:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0) and return that resident set in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_kb("VmRSS")


# --------------------------------------------------------------------------------------------------- describing


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            hit = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if hit:
            return hit.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version_of(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(__import__(module), "__version__", "?")
    except Exception:  # noqa: BLE001
        return "?"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def asdict_result(r: Result) -> dict:
    return jsonable(asdict(r))


def jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    return obj


# -------------------------------------------------------------------------------------------------------- table


def add_naive_ratios(results: list[Result]) -> None:
    """``x_naive_time`` / ``x_naive_memory``: each provider over ``torch-eager`` at the same loss and shape."""
    naive = {(r.loss, r.tokens, r.vocab): r for r in results if r.provider == NAIVE and not r.error}
    for r in results:
        ref = naive.get((r.loss, r.tokens, r.vocab))
        if ref is None or r.error:
            continue
        if r.total_ms and ref.total_ms:
            r.extra["x_naive_time"] = r.total_ms.median / ref.total_ms.median
        if r.cpu_total_ms and ref.cpu_total_ms:
            r.extra["x_naive_cpu_time"] = r.cpu_total_ms.median / ref.cpu_total_ms.median
        if r.peak_extra_bytes is not None and ref.peak_extra_bytes:
            r.extra["x_naive_memory"] = r.peak_extra_bytes / ref.peak_extra_bytes


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


COLUMNS = ["provider", "loss", "N", "V", "fwd ms", "bwd ms", "total ms", "p20-p80", "x naive", "cpu ms",
           "x naive cpu", "peak extra",
           "x logits", "GB/s", "%HBM", "/floor"]


def row_cells(r: Result) -> list[str]:
    head = [r.provider, r.loss, str(r.tokens), str(r.vocab)]
    if r.error:
        return head + [f"skipped: {r.error}"] + [""] * (len(COLUMNS) - 5)
    peak = r.peak_extra_bytes
    t = r.total_ms
    return head + [
        _f(r.fwd_ms and r.fwd_ms.median, ".1f"), _f(r.bwd_ms and r.bwd_ms.median, ".1f"), _f(t and t.median, ".1f"),
        "-" if t is None else f"{t.p20:.0f}-{t.p80:.0f}", _f(r.extra.get("x_naive_time"), ".2f"),
        _f(r.cpu_total_ms and r.cpu_total_ms.median, ".1f"), _f(r.extra.get("x_naive_cpu_time"), ".2f"),
        "-" if peak is None else f"{peak / 2**20:.0f} MiB", "-" if peak is None else f"{peak / r.logits_bytes:.2f}",
        _f(r.extra.get("total_GBps"), ".1f"), _f(r.extra.get("total_pct_hbm_peak"), ".1f"),
        _f(r.extra.get("total_over_floor"), ".2f"),
    ]


def _used_columns(rows: list[list[str]]) -> list[int]:
    """Columns with a value in some row (the GPU-only columns drop out of a CPU table)."""
    return [i for i in range(len(COLUMNS)) if i < 5 or any(row[i] not in ("-", "") for row in rows)]


def print_table(results: list[Result]) -> None:
    rows = [row_cells(r) for r in results]
    cols = _used_columns(rows)
    widths = {i: max(len(COLUMNS[i]), *(len(row[i]) for row in rows)) if rows else len(COLUMNS[i]) for i in cols}
    print("\n" + "  ".join(COLUMNS[i].rjust(widths[i]) for i in cols), flush=True)
    for row in rows:
        if row[4].startswith("skipped"):
            print("  ".join(row[i].rjust(widths[i]) for i in cols[:4]) + "  " + row[4], flush=True)
        else:
            print("  ".join(row[i].rjust(widths[i]) for i in cols), flush=True)


def markdown_table(results: list[Result]) -> list[str]:
    rows = [row_cells(r) for r in results]
    cols = _used_columns(rows)
    out = ["| " + " | ".join(COLUMNS[i] for i in cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(row[i] for i in cols) + " |" for row in rows]
    return out


# -------------------------------------------------------------------------------------------------- result files


def write_results(payload: dict, out_dir: str, stem: str, markdown: list[str] | None = None) -> str:
    """``<stem>.json`` and ``<stem>.png`` (and ``<stem>.md`` when given) under ``out_dir``; returns the path stem."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, stem)
    with open(path + ".json", "w") as f:
        json.dump(jsonable(payload), f, indent=1)
    plot(payload, path + ".png")
    written = [path + ".json", path + ".png"]
    if markdown is not None:
        with open(path + ".md", "w") as f:
            f.write("\n".join(markdown) + "\n")
        written.append(path + ".md")
    print("\nwrote " + ", ".join(written), flush=True)
    return path


def plot(payload: dict, path: str) -> None:
    """Left: forward + backward time per provider and shape (p20-p80 whiskers); right: peak extra memory over the
    logits tensor's bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [r for r in payload["results"] if not r.get("error") and r.get("total_ms")]
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    ax = axes[0]
    loss = "maspo" if any(r["loss"] == "maspo" for r in res) else (res[0]["loss"] if res else "maspo")
    shapes = sorted({(r["tokens"], r["vocab"]) for r in res if r["loss"] == loss})
    providers = [p for p in payload["providers"] if any(r["provider"] == p and r["loss"] == loss for r in res)]
    width = 0.8 / max(1, len(providers))
    for i, p in enumerate(providers):
        ys, lo, hi = [], [], []
        for s in shapes:
            hit = [r for r in res if r["provider"] == p and r["loss"] == loss and (r["tokens"], r["vocab"]) == s]
            t = hit[0]["total_ms"] if hit else None
            ys.append(t["median"] if t else float("nan"))
            lo.append(t["median"] - t["p20"] if t else 0.0)
            hi.append(t["p80"] - t["median"] if t else 0.0)
        ax.bar([j + i * width for j in range(len(shapes))], ys, width, yerr=[lo, hi], capsize=2, label=p)
    floors = [next((r["extra"].get("floor_2R1W_ms") for r in res if (r["tokens"], r["vocab"]) == s
                    and r["extra"].get("floor_2R1W_ms")), None) for s in shapes]
    for j, fl in enumerate(floors):
        if fl:
            ax.hlines(fl, j - 0.1, j + 0.9, colors="k", linestyles="--", label="2R+1W floor" if j == 0 else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels([f"N={n}\nV={v}" for n, v in shapes])
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward, ms (median, p20-p80; log scale)")
    threads = f", {payload['cpu_threads']} thread(s)" if payload.get("cpu_threads") else ""
    ax.set_title(f"{loss} loss, forward + backward: {payload['device']}{threads}", fontsize=9)
    ax.legend(fontsize=8)
    ax = axes[1]
    mres = [r for r in payload["results"] if not r.get("error") and r.get("peak_extra_bytes") is not None
            and r["loss"] == loss]
    if mres:
        bars = ax.bar(range(len(mres)), [r["peak_extra_bytes"] / r["logits_bytes"] for r in mres],
                      color=["tab:red" if r["provider"] in ("torch-eager", "torch-compile") else "tab:green"
                             for r in mres])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(mres)))
        ax.set_xticklabels([f"{r['provider']}\nN={r['tokens']} V={r['vocab']}" for r in mres], fontsize=7,
                           rotation=30, ha="right")
    ax.set_title(f"peak extra memory during fwd+bwd / logits bytes (bf16), {payload['device']}", fontsize=9)
    for y, style, text in ((1.0, ":", "1x logits"), (1.5, "--", "1.5x"), (3.0, "-.", "3x")):
        ax.axhline(y, color="gray", linestyle=style, linewidth=1)
        ax.text(ax.get_xlim()[1], y, f" {text}", va="center", fontsize=8)
    ax.set_ylabel("x logits tensor")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
