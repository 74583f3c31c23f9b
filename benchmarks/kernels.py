"""Benchmark of gated token losses from logits: time, peak memory, effective bandwidth, accuracy.

    .venv/bin/python benchmarks/kernels.py                 # GPU if present, else the CPU mode
    make bench BENCH_ARGS="--tokens 4096 --vocab 151936"   # any subset (compiled Triton even with
                                                           # TRITON_INTERPRET=1 in the environment: the script resets it)

Providers (one loss = per-token gate + token-mean / seq-mean-token-mean aggregation, forward and backward
down to the logits, bfloat16 logits):

    torch-eager            log_softmax(z.float() / T) + gather + the core's per-token loss (TRL/veRL style)
    torch-compile          the same function through torch.compile(dynamic=False)
    torch-chunked          rlplugins' chunked torch path (rlplugins.losses.chunked_token_logprobs) + core loss
    torch-chunked-inplace  the same, gradient written into the logits buffer
    ours-composed          rlplugins.kernels.token_logprobs (Triton) + the core's torch loss on [N]   (approach A)
    ours-fused             rlplugins.kernels.fused_policy_loss (gate in the kernel epilogue)          (approach B)
    ours-fused-inplace     the same with inplace_backward=True
    liger                  Liger-Kernel's triton_grpo_loss (in-place, its default) for the loss types it has:
                           sapo -> loss_type "sapo", ppo_clip -> "dapo" (clip eps 0.2 / 0.2); needs liger-kernel

GPU mode (CUDA): every provider at tokens x vocab x loss, median / p20 / p80 of forward, backward and total
(CUDA events, L2 flushed before each repetition), peak extra memory (``max_memory_allocated`` minus the
memory held before the forward, i.e. beyond the logits tensor and inputs), effective bandwidth against the
minimal traffic (forward 1 read, backward 1 read + 1 write, total 2 reads + 1 write of the logits), as a share
of the GPU's HBM peak, and the total time over the 2R+1W floor at that peak. The gradient is handed to a sink
(as to lm_head's backward in a model), so no provider pays for a copy into ``.grad``.

CPU mode (no GPU): the torch providers at a reduced token count, and a peak-memory comparison naive vs
chunked at V = 151,936. CPU peak memory is measured in a fresh subprocess per configuration as the growth of
the resident set's high-water mark (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` after the inputs
are built) during forward + backward. torch's CPU allocator returns large blocks to the OS (glibc mmap), so
the resident set follows the live tensors; the figure is exact to a page and includes allocator slack.

Outputs: a table on stdout, ``benchmarks/results/kernels_<device>.json`` and ``.png``.
"""

from __future__ import annotations

import os
import sys

# The test targets run with TRITON_INTERPRET=1 (and a shell may have it exported); timing the interpreter on a GPU
# would be meaningless.
# Compiled kernels unless --interpret (a CPU smoke test of this script) is asked for; set before Triton loads.
if "--interpret" not in sys.argv:
    os.environ["TRITON_INTERPRET"] = "0"

import argparse
import importlib.util
import json
import math
import platform
import re
import statistics
import subprocess
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from rlplugins.losses import agg_loss, make_config, token_policy_loss
from rlplugins.losses.chunked_logprobs import chunked_token_logprobs

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
TEMPERATURE = 0.9
SEQ_LEN = 1024  # tokens are laid out as [tokens / SEQ_LEN, SEQ_LEN] sequences

# Nominal HBM bandwidth, TB/s (vendor figures; docs/kernels.md#measured).
HBM_PEAK_TBS = [
    ("H200", 4.8), ("H100 PCIe", 2.0), ("H100", 3.35), ("H800", 3.35), ("B200", 8.0), ("GB200", 8.0),
    ("A100-SXM4-80GB", 2.039), ("A100 80GB PCIe", 1.935), ("A100", 1.555), ("L40S", 0.864), ("4090", 1.008),
]
LIGER_LOSS_TYPE = {"sapo": "sapo", "ppo_clip": "dapo"}
GPU_PROVIDERS = ["torch-eager", "torch-compile", "torch-chunked", "torch-chunked-inplace", "ours-composed",
                 "ours-fused", "ours-fused-inplace", "liger"]
CPU_PROVIDERS = ["torch-eager", "torch-compile", "torch-chunked", "torch-chunked-inplace"]
INPLACE = {"torch-chunked-inplace", "ours-fused-inplace", "liger"}


def agg_mode_for(loss: str) -> str:
    # SAPO as its authors/veRL/Liger aggregate it (per-sequence mean); the others DAPO-style token mean.
    return "seq-mean-token-mean" if loss == "sapo" else "token-mean"


# --------------------------------------------------------------------------------------------------- inputs


class _GradSink(torch.autograd.Function):
    """Identity whose backward receives the logits gradient and drops it, as lm_head's backward would consume
    it: keeps autograd from copying an in-place gradient into ``.grad``."""

    @staticmethod
    def forward(ctx, logits, anchor):
        return logits.detach()

    @staticmethod
    def backward(ctx, grad):
        return None, None


@dataclass
class Inputs:
    """HF's layout: ``full`` is [B, T+1, V] and every provider but Liger reads the strided view ``full[:, :-1]``
    (no copy; Liger takes ``full`` and ignores the last position itself)."""

    full: torch.Tensor
    pristine: torch.Tensor | None  # copy restored before each repetition (in-place providers overwrite ``full``)
    labels: torch.Tensor
    old: torch.Tensor
    adv: torch.Tensor
    mask: torch.Tensor
    anchor: torch.Tensor

    @property
    def logits(self) -> torch.Tensor:
        return self.full[:, :-1]

    def restore(self) -> None:
        if self.pristine is not None:
            self.full.copy_(self.pristine)

    def leaf(self) -> torch.Tensor:
        return _GradSink.apply(self.logits, self.anchor)

    def leaf_full(self) -> torch.Tensor:
        return _GradSink.apply(self.full, self.anchor)


def make_inputs(tokens: int, vocab: int, device: torch.device, dtype=torch.bfloat16, seed: int = 0,
                keep_pristine: bool = True) -> Inputs:
    """Random logits (std 2), labels, old log-probs within ~0.3 of the current ones (some clipped), per-sequence
    advantages, ~5% right padding."""
    b, t = max(1, tokens // SEQ_LEN), min(tokens, SEQ_LEN)
    g = torch.Generator(device=device).manual_seed(seed)
    full = torch.empty(b, t + 1, vocab, device=device, dtype=dtype)
    for i in range(b):  # one sequence at a time: no float32 [tokens, vocab] temporary
        full[i] = (torch.randn(t + 1, vocab, generator=g, device=device) * 2).to(dtype)
    labels = torch.randint(0, vocab, (b, t), generator=g, device=device)
    with torch.no_grad():
        logp = chunked_token_logprobs(full[:, :-1], labels, TEMPERATURE)
    old = (logp + 0.3 * torch.randn(b, t, generator=g, device=device)).contiguous()
    adv = torch.randn(b, 1, generator=g, device=device).expand(b, t).contiguous()
    mask = torch.ones(b, t, dtype=torch.bool, device=device)
    mask[:, t - max(1, t // 20):] = False
    pristine = full.clone() if keep_pristine else None
    anchor = torch.zeros((), device=device, requires_grad=True)
    return Inputs(full, pristine, labels, old, adv, mask, anchor)


def logits_bytes_of(tokens: int, vocab: int) -> int:
    return max(1, tokens // SEQ_LEN) * min(tokens, SEQ_LEN) * vocab * 2


# ------------------------------------------------------------------------------------------------ providers


def _core_loss(name: str, logp: torch.Tensor, inp: Inputs, cfg) -> torch.Tensor:
    tok = token_policy_loss(name, log_prob=logp, old_log_prob=inp.old, advantages=inp.adv, config=cfg)
    return agg_loss(tok.loss, inp.mask, agg_mode_for(name))


def _eager_fn(name: str, cfg, compute_dtype=torch.float32) -> Callable[..., torch.Tensor]:
    def run(logits, labels, old, adv, mask):
        x = logits.to(compute_dtype) / TEMPERATURE
        logp = torch.log_softmax(x, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        tok = token_policy_loss(name, log_prob=logp, old_log_prob=old, advantages=adv, config=cfg)
        return agg_loss(tok.loss, mask, agg_mode_for(name))

    return run


def build_provider(provider: str, name: str) -> Callable[[Inputs], torch.Tensor] | str:
    """A forward function ``inputs -> scalar loss`` or a string saying why the provider cannot run."""
    cfg = make_config(name)
    if provider == "torch-eager":
        fn = _eager_fn(name, cfg)
        return lambda inp: fn(inp.leaf(), inp.labels, inp.old, inp.adv, inp.mask)
    if provider == "torch-compile":
        compiled = torch.compile(_eager_fn(name, cfg), dynamic=False)
        return lambda inp: compiled(inp.leaf(), inp.labels, inp.old, inp.adv, inp.mask)
    if provider in ("torch-chunked", "torch-chunked-inplace"):
        inplace = provider.endswith("inplace")
        return lambda inp: _core_loss(name, chunked_token_logprobs(inp.leaf(), inp.labels, TEMPERATURE,
                                                                   inplace_backward=inplace), inp, cfg)
    if provider.startswith("ours"):
        if importlib.util.find_spec("triton") is None:
            return "triton not installed"
        from rlplugins import kernels

        if provider == "ours-composed":
            return lambda inp: _core_loss(name, kernels.token_logprobs(inp.leaf(), inp.labels, TEMPERATURE), inp, cfg)
        inplace = provider.endswith("inplace")
        return lambda inp: agg_loss(kernels.fused_policy_loss(
            inp.leaf(), inp.labels, inp.old, inp.adv, inp.mask, name, cfg, TEMPERATURE,
            inplace_backward=inplace).token_loss, inp.mask, agg_mode_for(name))
    if provider == "liger":
        if name not in LIGER_LOSS_TYPE:
            return f"Liger has no {name} loss"
        if importlib.util.find_spec("liger_kernel") is None:
            return "liger-kernel not installed (pip install liger-kernel)"
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss

        def run(inp: Inputs) -> torch.Tensor:
            loss, _ = triton_grpo_loss(inp.leaf_full(), inp.old, None, inp.labels, inp.adv[:, 0].contiguous(),
                                       inp.mask.float(), temperature=TEMPERATURE, beta=0.0, eps_low=0.2,
                                       eps_high=0.2, inplace=True, loss_type=LIGER_LOSS_TYPE[name], reduce=True)
            return loss

        return run
    raise ValueError(f"unknown provider {provider!r}")


# ------------------------------------------------------------------------------------------------- measuring


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
    peak_extra_bytes: int | None = None
    logits_bytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def time_cuda(fn: Callable[[Inputs], torch.Tensor], inp: Inputs, reps: int, warmup: int) -> tuple[list, list, list]:
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    fwd, bwd, tot = [], [], []
    for i in range(warmup + reps):
        inp.restore()
        flush.zero_()
        e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
        e0.record()
        loss = fn(inp)
        e1.record()
        loss.backward()
        e2.record()
        torch.cuda.synchronize()
        if i >= warmup:
            fwd.append(e0.elapsed_time(e1))
            bwd.append(e1.elapsed_time(e2))
            tot.append(e0.elapsed_time(e2))
    return fwd, bwd, tot


def time_cpu(fn: Callable[[Inputs], torch.Tensor], inp: Inputs, reps: int, warmup: int) -> tuple[list, list, list]:
    fwd, bwd, tot = [], [], []
    for i in range(warmup + reps):
        inp.restore()
        t0 = time.perf_counter()
        loss = fn(inp)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            tot.append((t2 - t0) * 1e3)
    return fwd, bwd, tot


def peak_cuda(fn: Callable[[Inputs], torch.Tensor], inp: Inputs) -> int:
    inp.restore()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn(inp).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def hbm_peak_tbs(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key, value in HBM_PEAK_TBS:
        if key.lower() in name.lower():
            return value
    return None


def add_bandwidth(r: Result, itemsize: int, peak_tbs: float | None) -> None:
    """Effective GB/s = minimal bytes / time: forward 1 read, backward 1 read + 1 write, total 2R + 1W."""
    one = r.tokens * r.vocab * itemsize
    for key, timing, passes in (("fwd", r.fwd_ms, 1), ("bwd", r.bwd_ms, 2), ("total", r.total_ms, 3)):
        if timing is None:
            continue
        gbs = passes * one / (timing.median * 1e-3) / 1e9
        r.extra[f"{key}_GBps"] = gbs
        if peak_tbs:
            r.extra[f"{key}_pct_hbm_peak"] = 100 * gbs / (peak_tbs * 1e3)
    if peak_tbs and r.total_ms is not None:
        floor_ms = 3 * one / (peak_tbs * 1e12) * 1e3
        r.extra["floor_2R1W_ms"] = floor_ms
        r.extra["total_over_floor"] = r.total_ms.median / floor_ms


def accuracy(providers: list[str], name: str, tokens: int, vocab: int, device: torch.device) -> list[dict]:
    """Errors of the loss and of dlogits against float64 (eager on the upcast logits), per provider."""
    inp = make_inputs(tokens, vocab, device, seed=1)
    z64 = inp.pristine[:, :-1].to(torch.float64).requires_grad_()
    cfg = make_config(name)
    ref = _eager_fn(name, cfg, torch.float64)(z64, inp.labels, inp.old.double(), inp.adv.double(), inp.mask)
    ref.backward()
    grads: list[torch.Tensor] = []

    class Capture(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, anchor):
            return logits.detach()

        @staticmethod
        def backward(ctx, grad):
            grads.append(grad.detach().to(torch.float64))
            return None, None

    out = []
    for provider in providers:
        fn = build_provider(provider, name)
        if isinstance(fn, str) or ((provider.startswith("ours") or provider == "liger") and device.type != "cuda"
                                   and not _interpreter()):
            continue
        inp.restore()
        grads.clear()
        inp.leaf = lambda: Capture.apply(inp.logits, inp.anchor)  # type: ignore[method-assign]
        inp.leaf_full = lambda: Capture.apply(inp.full, inp.anchor)  # type: ignore[method-assign]
        loss = fn(inp)
        loss.backward()
        dz = grads[0][:, : z64.shape[1]]
        err = (dz - z64.grad).abs()
        out.append({"provider": provider, "loss": name, "tokens": tokens, "vocab": vocab,
                    "loss_abs_err": abs(float(loss.detach()) - float(ref.detach())),
                    "dlogits_max_abs_err": float(err.max()),
                    "dlogits_rms_rel_err": float(err.pow(2).mean().sqrt() / z64.grad.pow(2).mean().sqrt())})
    return out


# ------------------------------------------------------------------------------------------- CPU peak memory


def _rss_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.M).group(1))


def measure_memory_child(provider: str, name: str, tokens: int, vocab: int) -> dict:
    """Runs in a fresh process: growth of the resident high-water mark during one forward + backward."""
    torch.manual_seed(0)
    inp = make_inputs(tokens, vocab, torch.device("cpu"), keep_pristine=False)
    fn = build_provider(provider, name)
    if isinstance(fn, str):
        return {"error": fn}
    import gc

    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    base = _rss_kb("VmRSS")
    t0 = time.perf_counter()
    fn(inp).backward()
    elapsed = time.perf_counter() - t0
    hwm = _rss_kb("VmHWM")
    return {"peak_extra_bytes": (hwm - base) * 1024, "baseline_rss_bytes": base * 1024, "seconds": elapsed}


def measure_memory_cpu(provider: str, name: str, tokens: int, vocab: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--_memory-child", provider, name, str(tokens), str(vocab)]
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1] if (proc.stderr or proc.stdout) else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------------ tuning


def tune(tokens: int, vocab: int, reps: int) -> list[dict]:
    """Sweep the launch configuration of the fused MASPO kernel (forward and backward separately)."""
    inp = make_inputs(tokens, vocab, torch.device("cuda"))
    fn = build_provider("ours-fused-inplace", "maspo")
    rows = []
    from rlplugins.kernels import aot  # the candidates benchmarks/kernels_aot.py compiles ahead of time

    for kind, cand in (("FWD", aot.TUNE_FWD), ("BWD", aot.TUNE_BWD)):
        blocks, warps_list = cand["blocks"], cand["warps"]
        for block in blocks:
            for warps in warps_list:
                os.environ[f"RLP_{kind}_BLOCK"], os.environ[f"RLP_{kind}_WARPS"] = str(block), str(warps)
                try:
                    f, b, t = time_cuda(fn, inp, reps, 2)
                    rows.append({"kind": kind, "block": block, "warps": warps, "fwd_ms": statistics.median(f),
                                 "bwd_ms": statistics.median(b), "total_ms": statistics.median(t)})
                    print(f"{kind} block={block:5d} warps={warps:2d}: fwd {rows[-1]['fwd_ms']:.3f} ms  "
                          f"bwd {rows[-1]['bwd_ms']:.3f} ms", flush=True)
                except Exception as exc:  # noqa: BLE001 - a config that fails to compile is reported, not fatal
                    print(f"{kind} block={block} warps={warps}: {type(exc).__name__}: {exc}")
            os.environ.pop(f"RLP_{kind}_BLOCK", None)
            os.environ.pop(f"RLP_{kind}_WARPS", None)
    return rows


# ------------------------------------------------------------------------------------------------------- main


def fmt_t(t: Timing | None) -> str:
    return "-" if t is None else f"{t.median:9.2f}"


def print_header() -> None:
    print(f"\n{'provider':22s} {'loss':9s} {'N':>6s} {'V':>7s} {'fwd ms':>9s} {'bwd ms':>9s} {'total ms':>9s} "
          f"{'peak extra':>11s} {'x logits':>8s} {'GB/s':>7s} {'%HBM':>5s} {'/floor':>6s}", flush=True)


def print_row(r: Result) -> None:
    if r.error:
        print(f"{r.provider:22s} {r.loss:9s} {r.tokens:6d} {r.vocab:7d}   skipped: {r.error}", flush=True)
        return
    peak = "-" if r.peak_extra_bytes is None else f"{r.peak_extra_bytes / 2**20:8.0f}MiB"
    ratio = "-" if r.peak_extra_bytes is None else f"{r.peak_extra_bytes / r.logits_bytes:8.2f}"
    gbs, pct, flo = (r.extra.get(k) for k in ("total_GBps", "total_pct_hbm_peak", "total_over_floor"))
    print(f"{r.provider:22s} {r.loss:9s} {r.tokens:6d} {r.vocab:7d} {fmt_t(r.fwd_ms)} {fmt_t(r.bwd_ms)} "
          f"{fmt_t(r.total_ms)} {peak:>11s} {ratio:>8s} {'-' if gbs is None else f'{gbs:7.1f}'} "
          f"{'-' if pct is None else f'{pct:5.1f}'} {'-' if flo is None else f'{flo:6.2f}'}", flush=True)


def plot(payload: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = [r for r in payload["results"] if not r.get("error") and r.get("total_ms")]
    mem = payload.get("memory", [])
    fig, axes = plt.subplots(1, 2, figsize=(15, 5.5))
    ax = axes[0]
    loss = "maspo" if any(r["loss"] == "maspo" for r in res) else (res[0]["loss"] if res else "maspo")
    shapes = sorted({(r["tokens"], r["vocab"]) for r in res if r["loss"] == loss})
    providers = [p for p in payload["providers"] if any(r["provider"] == p and r["loss"] == loss for r in res)]
    width = 0.8 / max(1, len(providers))
    for i, p in enumerate(providers):
        ys = []
        for s in shapes:
            hit = [r for r in res if r["provider"] == p and r["loss"] == loss and (r["tokens"], r["vocab"]) == s]
            ys.append(hit[0]["total_ms"]["median"] if hit else float("nan"))
        ax.bar([j + i * width for j in range(len(shapes))], ys, width, label=p)
    floors = [next((r["extra"].get("floor_2R1W_ms") for r in res if (r["tokens"], r["vocab"]) == s
                    and r["extra"].get("floor_2R1W_ms")), None) for s in shapes]
    for j, f in enumerate(floors):
        if f:
            ax.hlines(f, j - 0.1, j + 0.9, colors="k", linestyles="--", label="2R+1W floor" if j == 0 else None)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
    ax.set_xticklabels([f"N={n}\nV={v}" for n, v in shapes])
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward, ms (median, log scale)")
    threads = f", {payload['cpu_threads']} thread(s)" if payload.get("cpu_threads") else ""
    ax.set_title(f"{loss} loss, forward + backward: {payload['device']}{threads}")
    ax.legend(fontsize=8)
    ax = axes[1]
    if mem:
        labels = [f"{m['provider']}\nN={m['tokens']}" for m in mem if "peak_extra_bytes" in m]
        ratios = [m["peak_extra_bytes"] / m["logits_bytes"] for m in mem if "peak_extra_bytes" in m]
        colors = ["tab:red" if m["provider"] in ("torch-eager", "torch-compile") else "tab:green"
                  for m in mem if "peak_extra_bytes" in m]
        bars = ax.bar(range(len(ratios)), ratios, color=colors)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(ratios)))
        ax.set_xticklabels(labels, fontsize=7, rotation=30, ha="right")
        vocab = mem[0]["vocab"]
        ax.set_title(f"peak extra memory during fwd+bwd / logits bytes (V={vocab}, bf16), {payload['device']}")
    else:
        mres = [r for r in res if r.get("peak_extra_bytes") is not None and r["loss"] == loss]
        big = max(mres, key=lambda r: (r["tokens"], r["vocab"]), default=None)
        sel = [r for r in mres if big and (r["tokens"], r["vocab"]) == (big["tokens"], big["vocab"])]
        bars = ax.bar(range(len(sel)), [r["peak_extra_bytes"] / r["logits_bytes"] for r in sel])
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
        ax.set_xticks(range(len(sel)))
        ax.set_xticklabels([r["provider"] for r in sel], fontsize=7, rotation=30, ha="right")
        if big:
            ax.set_title(f"peak extra memory / logits bytes, N={big['tokens']} V={big['vocab']}, {payload['device']}")
    for y, style, text in ((1.0, ":", "1x logits"), (1.5, "--", "1.5x"), (3.0, "-.", "3x")):
        ax.axhline(y, color="gray", linestyle=style, linewidth=1)
        ax.text(ax.get_xlim()[1], y, f" {text}", va="center", fontsize=8)
    ax.set_ylabel("x logits tensor")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--tokens", type=int, nargs="+", help="token counts (GPU default 4096 16384; CPU 1024)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 128256, 151936])
    parser.add_argument("--losses", nargs="+", help="GPU default maspo sapo ppo_clip; CPU default maspo")
    parser.add_argument("--providers", nargs="+", help="subset of the providers (see the module docstring)")
    parser.add_argument("--reps", type=int, help="timed repetitions (GPU default 20, CPU 3)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--memory-tokens", type=int, nargs="+", default=[1024, 4096],
                        help="CPU mode: token counts of the naive-vs-chunked memory comparison at V=151,936")
    parser.add_argument("--memory-providers", nargs="+",
                        default=["torch-eager", "torch-compile", "torch-chunked", "torch-chunked-inplace"],
                        help="CPU mode: providers of the memory comparison")
    parser.add_argument("--no-memory", action="store_true", help="CPU mode: skip the memory comparison")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--hbm-peak-tbs", type=float, help="override the HBM peak (TB/s) used for %% of peak")
    parser.add_argument("--tune", action="store_true", help="GPU: sweep the fused kernel's block/warps instead")
    parser.add_argument("--threads", type=int, help="CPU mode: torch threads (default 1: on a shared machine "
                        "OpenMP threads that wait for busy cores make every op ~100x slower)")
    parser.add_argument("--tag", help="output file suffix (default: the device name)")
    parser.add_argument("--out", default=RESULTS_DIR)
    parser.add_argument("--interpret", action="store_true",
                        help="keep TRITON_INTERPRET=1: run the Triton providers in the CPU interpreter (a smoke test)")
    parser.add_argument("--replot", metavar="JSON", help="redraw the PNG of an existing result file and exit")
    parser.add_argument("--_memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.replot:
        with open(args.replot) as f:
            plot(json.load(f), os.path.splitext(args.replot)[0] + ".png")
        return 0

    if args._memory_child:
        provider, name, tokens, vocab = args._memory_child
        print(json.dumps(measure_memory_child(provider, name, int(tokens), int(vocab))))
        return 0

    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:
        device_name = torch.cuda.get_device_name(0)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    peak_tbs = hbm_peak_tbs(device_name, args.hbm_peak_tbs) if cuda else None
    if not cuda:
        torch.set_num_threads(args.threads or 1)
    if args.tune:
        if not cuda:
            parser.error("--tune needs a GPU")
        rows = tune((args.tokens or [16384])[0], args.vocab[-1], args.reps or 10)
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, f"kernels_tune_{_slug(args.tag or device_name)}.json"), "w") as f:
            json.dump({"device": device_name, "rows": rows}, f, indent=1)
        return 0

    tokens_list = args.tokens or ([4096, 16384] if cuda else [1024])
    losses = args.losses or (["maspo", "sapo", "ppo_clip"] if cuda else ["maspo"])
    providers = args.providers or (GPU_PROVIDERS if cuda else CPU_PROVIDERS)
    reps = args.reps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    print(f"device: {device_name}; HBM peak: {peak_tbs or 'n/a'} TB/s; torch {torch.__version__}", flush=True)

    results: list[Result] = []
    print_header()
    for tokens in tokens_list:
        for vocab in args.vocab:
            inp = make_inputs(tokens, vocab, device)
            for name in losses:
                for provider in providers:
                    r = Result(provider, name, tokens, vocab, device_name, logits_bytes=logits_bytes_of(tokens, vocab))
                    results.append(r)
                    fn = build_provider(provider, name)
                    if isinstance(fn, str):
                        r.error = fn
                    elif (provider.startswith("ours") or provider == "liger") and not cuda and not _interpreter():
                        r.error = "Triton kernels need a GPU"
                    else:
                        try:
                            f, b, t = (time_cuda if cuda else time_cpu)(fn, inp, reps, warmup)
                            r.fwd_ms, r.bwd_ms, r.total_ms = Timing.of(f), Timing.of(b), Timing.of(t)
                            if cuda:
                                r.peak_extra_bytes = peak_cuda(fn, inp)
                            add_bandwidth(r, 2, peak_tbs)
                        except Exception as exc:  # noqa: BLE001 - OOM or a missing compiler is reported, not fatal
                            r.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                            if cuda:
                                torch.cuda.empty_cache()
                    print_row(r)
            del inp
            if cuda:
                torch.cuda.empty_cache()

    memory: list[dict] = []
    if not cuda and not args.no_memory:
        vocab = 151936
        for tokens in args.memory_tokens:
            for provider in args.memory_providers:
                m = {"provider": provider, "loss": "maspo", "tokens": tokens, "vocab": vocab,
                     "logits_bytes": logits_bytes_of(tokens, vocab)}
                m.update(measure_memory_cpu(provider, "maspo", tokens, vocab))
                memory.append(m)
                if "peak_extra_bytes" in m:
                    m["peak_total_over_logits"] = 1.0 + m["peak_extra_bytes"] / m["logits_bytes"]
                    print(f"memory {provider:22s} N={tokens:5d} V={vocab}: peak extra {m['peak_extra_bytes'] / 2**20:8.0f} MiB"
                          f" = {m['peak_extra_bytes'] / m['logits_bytes']:.2f} x logits ({m['logits_bytes'] / 2**20:.0f} MiB;"
                          f" with the logits {m['peak_total_over_logits']:.2f} x)"
                          f", {m['seconds']:.1f} s", flush=True)
                else:
                    print(f"memory {provider} N={tokens}: {m.get('error')}", flush=True)

    acc: list[dict] = []
    if not args.no_accuracy:
        acc_tokens = min(tokens_list[0], 1024 if cuda else 256)
        for name in losses:
            acc += accuracy(providers, name, acc_tokens, args.vocab[0], device)
        for a in acc:
            print(f"accuracy {a['provider']:22s} {a['loss']:9s} N={a['tokens']} V={a['vocab']}: |loss err| "
                  f"{a['loss_abs_err']:.2e}, max |dlogits err| {a['dlogits_max_abs_err']:.2e}, rms-rel "
                  f"{a['dlogits_rms_rel_err']:.2e}")

    payload = {
        "device": device_name,
        "hbm_peak_TBps": peak_tbs,
        "torch": torch.__version__,
        "triton": _version("triton"),
        "liger_kernel": _version("liger_kernel"),
        "python": platform.python_version(),
        "temperature": TEMPERATURE,
        "dtype": "bfloat16",
        "seq_len": SEQ_LEN,
        "providers": providers,
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "memory_method": None if cuda else "VmHWM growth in a fresh subprocess per configuration (see docstring)",
        "cpu_threads": None if cuda else torch.get_num_threads(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "results": [_jsonable(asdict(r)) for r in results],
        "memory": memory,
        "accuracy": acc,
    }
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"kernels_{_slug(args.tag or ('cpu' if not cuda else device_name))}")
    with open(stem + ".json", "w") as f:
        json.dump(payload, f, indent=1)
    plot(payload, stem + ".png")
    print(f"\nwrote {stem}.json and {stem}.png")
    return 0


def _interpreter() -> bool:
    """With --interpret (TRITON_INTERPRET=1) the Triton providers run on CPU: a smoke test, not a timing."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    try:
        return getattr(__import__(module), "__version__", "?")
    except Exception:  # noqa: BLE001
        return "?"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


if __name__ == "__main__":
    sys.exit(main())
