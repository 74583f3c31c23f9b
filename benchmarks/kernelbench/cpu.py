"""CPU mode: every measurement of every provider in a fresh process.

A process's heap remembers what ran before (glibc keeps or returns blocks depending on earlier frees), which on CPU
changes a provider's time by up to 3x, so nothing is measured in the parent. Timing: ``rounds`` interleaved rounds,
each starting one child per provider (the order rotated every round, so drift in the machine's load spreads over
all providers); a child builds the inputs, runs ``warmup`` untimed forward + backward passes (at least one for a
torch.compile provider, so compilation is neither timed nor counted in memory), then times ``reps`` of them. The
figures are the median and p20 / p80 over all rounds' repetitions. Peak memory: one more child per provider runs the
same warm-up, resets the resident high-water mark (Linux ``VmHWM`` through ``/proc/self/clear_refs``) and reports
its growth during one forward + backward. That child runs with glibc's mmap threshold fixed
(``MALLOC_MMAP_THRESHOLD_``), so blocks the warm-up freed are unmapped rather than kept for reuse and the figure
counts the live tensors (to a page, allocator slack included), not the heap's history.
"""

from __future__ import annotations

import gc
import os
import platform
from typing import Any

import torch

from . import harness
from .harness import Result, Timing
from .providers import (COMPILED, CPU_PROVIDERS, INPLACE, TEMPERATURE, SEQ_LEN, accuracy, build_provider,
                        logits_bytes_of, make_inputs, needs_gpu)

MMAP_THRESHOLD = 128 * 1024  # glibc's initial value, held fixed for the memory children
TARGET_VOCAB = 151936
TARGET_TIME = 0.6  # x naive eager time, fwd + bwd (issue 16)
TARGET_MEMORY = 0.2  # x logits, extra memory beyond a logits-sized gradient
TARGET_INPLACE_MIB = 20


def warmup_count(provider: str, warmup: int) -> int:
    return max(warmup, 1) if provider in COMPILED else warmup


def child(job: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this (fresh) process: ``job["kind"]`` is ``"time"`` or ``"memory"``."""
    torch.set_num_threads(job["threads"])
    provider = job["provider"]
    fn = build_provider(provider, job["loss"])
    if isinstance(fn, str):
        return {"error": fn}
    torch.manual_seed(0)
    inp = make_inputs(job["tokens"], job["vocab"], torch.device("cpu"), keep_pristine=provider in INPLACE)
    warm = warmup_count(provider, job["warmup"])
    out: dict[str, Any] = {"warmup_ms": harness.time_wall(fn, inp, warm, 0)["total"]}
    if job["kind"] == "time":
        out.update(harness.time_wall(fn, inp, job["reps"], 0))
        return out
    inp.restore()
    gc.collect()
    base = harness.reset_high_water_mark()
    fn(inp).backward()
    out["peak_extra_bytes"] = (harness.rss_kb("VmHWM") - base) * 1024
    out["baseline_rss_bytes"] = base * 1024
    return out


def run(args, script: str) -> tuple[dict, list[str]]:
    """The parent: children for every (shape, loss, provider), then accuracy in-process; returns the payload and
    the markdown report."""
    threads = args.threads or 1
    torch.set_num_threads(threads)
    device_name = f"CPU: {harness.cpu_name()} ({os.cpu_count()} cores)"
    tokens_list = args.tokens or [1024, 4096]
    vocabs = args.vocab or [TARGET_VOCAB]
    losses = args.losses or ["maspo"]
    providers = args.providers or CPU_PROVIDERS
    reps = args.reps or 2
    warmup = 1 if args.warmup is None else args.warmup
    rounds = args.rounds or 3
    load_before = os.getloadavg()
    print(f"device: {device_name}; {threads} thread(s); torch {torch.__version__}; load average {load_before}; "
          f"{rounds} rounds x {reps} reps per provider, {warmup} warm-up, one process each", flush=True)

    results: list[Result] = []
    for tokens in tokens_list:
        for vocab in vocabs:
            for name in losses:
                rows = {p: Result(p, name, tokens, vocab, device_name, logits_bytes=logits_bytes_of(tokens, vocab))
                        for p in providers}
                samples: dict[str, dict[str, list]] = {p: {} for p in providers}
                runnable = []
                for p in providers:
                    why = build_provider(p, name) if p not in COMPILED else None
                    if isinstance(why, str):
                        rows[p].error = why
                    elif needs_gpu(p, torch.device("cpu")):
                        rows[p].error = "Triton kernels need a GPU"
                    else:
                        runnable.append(p)
                job = {"loss": name, "tokens": tokens, "vocab": vocab, "reps": reps, "warmup": warmup,
                       "threads": threads}
                for rnd in range(rounds):
                    for p in runnable[rnd % max(1, len(runnable)):] + runnable[: rnd % max(1, len(runnable))]:
                        if rows[p].error:
                            continue
                        got = harness.run_child(script, dict(job, kind="time", provider=p),
                                                env={"OMP_NUM_THREADS": str(threads)})
                        if "error" in got:
                            rows[p].error = got["error"]
                            continue
                        for key in ("fwd", "bwd", "total", "cpu_total"):
                            samples[p].setdefault(key, []).extend(got[key])
                        rows[p].extra.setdefault("warmup_ms", []).append(got["warmup_ms"])
                        print(f"  round {rnd + 1}/{rounds} {p:22s} N={tokens} V={vocab} {name}: total "
                              + ", ".join(f"{t:.0f}" for t in got["total"]) + " ms, CPU "
                              + ", ".join(f"{t:.0f}" for t in got["cpu_total"]) + " ms"
                              + (f" (warm-up {', '.join(f'{t:.0f}' for t in got['warmup_ms'])} ms)"
                                 if got["warmup_ms"] else ""), flush=True)
                for p in runnable:
                    r = rows[p]
                    if r.error:
                        continue
                    got = samples[p]
                    r.fwd_ms, r.bwd_ms, r.total_ms = (Timing.of(got[k]) for k in ("fwd", "bwd", "total"))
                    r.cpu_total_ms = Timing.of(got["cpu_total"])
                    if not args.no_memory:
                        got = harness.run_child(script, dict(job, kind="memory", provider=p),
                                                env={"OMP_NUM_THREADS": str(threads),
                                                     "MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD)})
                        if "error" in got:
                            r.extra["memory_error"] = got["error"]
                        else:
                            r.peak_extra_bytes = got["peak_extra_bytes"]
                            if p not in INPLACE:
                                r.extra["extra_beyond_gradient_bytes"] = r.peak_extra_bytes - r.logits_bytes
                            print(f"  memory {p:22s} N={tokens} V={vocab}: peak extra "
                                  f"{r.peak_extra_bytes / 2**20:.0f} MiB = {r.peak_extra_bytes / r.logits_bytes:.2f}"
                                  f" x logits", flush=True)
                results += [rows[p] for p in providers]
    harness.add_naive_ratios(results)
    harness.print_table(results)
    verdicts = targets(results)
    for line in verdicts:
        print(line)

    acc: list[dict] = []
    if not args.no_accuracy:
        acc_tokens = min(tokens_list[0], 256)
        for name in losses:
            acc += accuracy(providers, name, acc_tokens, vocabs[0], torch.device("cpu"))
        for a in acc:
            print(f"accuracy {a['provider']:22s} {a['loss']:9s} N={a['tokens']} V={a['vocab']}: |loss err| "
                  f"{a['loss_abs_err']:.2e}, max |dlogits err| {a['dlogits_max_abs_err']:.2e}, rms-rel "
                  f"{a['dlogits_rms_rel_err']:.2e}")

    payload = {
        "device": device_name, "cpu": harness.cpu_name(), "cpu_count": os.cpu_count(), "cpu_threads": threads,
        "torch": torch.__version__, "python": platform.python_version(), "temperature": TEMPERATURE,
        "dtype": "bfloat16", "seq_len": SEQ_LEN, "providers": providers,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "method": __doc__.strip(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "results": [harness.asdict_result(r) for r in results], "targets": verdicts, "accuracy": acc,
    }
    md = report(payload, results, verdicts, acc)
    return payload, md


def targets(results: list[Result]) -> list[str]:
    """Issue 16's targets at V = 151,936: fwd + bwd time over naive eager, extra memory."""
    lines = []
    for r in results:
        if r.vocab != TARGET_VOCAB or r.error or not r.provider.startswith("torch-chunked"):
            continue
        for key, what in (("x_naive_time", "wall time"), ("x_naive_cpu_time", "CPU time")):
            ratio = r.extra.get(key)
            if ratio is not None:
                lines.append(f"target {r.provider} N={r.tokens}: {what} {ratio:.2f} x naive "
                             f"({'met' if ratio <= TARGET_TIME else 'MISSED'}, target <= {TARGET_TIME})")
        if r.peak_extra_bytes is None:
            continue
        if r.provider in INPLACE:
            mib = r.peak_extra_bytes / 2**20
            lines.append(f"target {r.provider} N={r.tokens}: extra memory {mib:.1f} MiB "
                         f"({'met' if mib <= TARGET_INPLACE_MIB else 'MISSED'}, target <= {TARGET_INPLACE_MIB} MiB)")
        else:
            beyond = r.extra["extra_beyond_gradient_bytes"] / r.logits_bytes
            lines.append(f"target {r.provider} N={r.tokens}: extra memory {r.peak_extra_bytes / r.logits_bytes:.2f}"
                         f" x logits = the logits-sized gradient + {beyond:.3f} x "
                         f"({'met' if beyond <= TARGET_MEMORY else 'MISSED'}, target <= {TARGET_MEMORY} beyond it)")
    return lines


def report(payload: dict, results: list[Result], verdicts: list[str], acc: list[dict]) -> list[str]:
    md = [f"CPU kernel benchmark (`benchmarks/kernels.py`, CPU mode): {payload['device']}, "
          f"{payload['cpu_threads']} thread(s), torch {payload['torch']}, bf16 logits, T = {payload['temperature']}, "
          f"load average {', '.join(f'{x:.1f}' for x in payload['load_average_before'])} before / "
          f"{', '.join(f'{x:.1f}' for x in payload['load_average_after'])} after.",
          "",
          "Each provider is timed in its own fresh process, over interleaved rounds (median and p20-p80 of all "
          "rounds' repetitions, warm-up excluded: torch.compile's compilation is neither timed nor counted in "
          "memory); `cpu ms` is the process's CPU time (user + system) of the same repetitions, which on a shared "
          "machine leaves out the time spent waiting for a core; peak extra memory is the growth of the resident set during one forward + backward, in "
          "another fresh process. `x naive` / `x naive cpu` are the wall / CPU time over `torch-eager` (log_softmax "
          "in float32 + gather).",
          ""]
    md += harness.markdown_table(results)
    if verdicts:
        md += ["", "Targets (issue 16):", ""] + [f"- {line[len('target '):]}" for line in verdicts]
    if acc:
        md += ["", "Accuracy against float64 (loss, and dlogits):", ""]
        md += [f"- {a['provider']} {a['loss']} N={a['tokens']} V={a['vocab']}: |loss err| {a['loss_abs_err']:.1e}, "
               f"max |dlogits err| {a['dlogits_max_abs_err']:.1e}" for a in acc]
    return md
