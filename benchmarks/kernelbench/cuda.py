"""GPU mode: every provider at tokens x vocab x loss in one process, timed with CUDA events (L2 flushed before each
repetition): median / p20 / p80 of forward, backward and total; peak extra memory (``max_memory_allocated`` minus the
memory held before the forward, i.e. beyond the logits tensor and inputs); effective bandwidth against the minimal
traffic (forward 1 read, backward 1 read + 1 write, total 2 reads + 1 write of the logits), as a share of the GPU's
HBM peak, and the total time over the 2R+1W floor at that peak. The caching allocator makes a GPU process's history
irrelevant to these figures, so unlike the CPU mode nothing runs in a child process."""

from __future__ import annotations

import platform

import torch

from . import harness
from .harness import Result, Timing
from .providers import (GPU_PROVIDERS, SEQ_LEN, TEMPERATURE, Inputs, accuracy, build_provider, logits_bytes_of,
                        make_inputs, needs_gpu)

# Nominal HBM bandwidth, TB/s (vendor figures).
HBM_PEAK_TBS = [
    ("H200", 4.8), ("H100 PCIe", 2.0), ("H100", 3.35), ("H800", 3.35), ("B200", 8.0), ("GB200", 8.0),
    ("A100-SXM4-80GB", 2.039), ("A100 80GB PCIe", 1.935), ("A100", 1.555), ("L40S", 0.864), ("4090", 1.008),
]


def time_cuda(fn, inp: Inputs, reps: int, warmup: int) -> tuple[list, list, list]:
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


def peak_cuda(fn, inp: Inputs) -> int:
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


def run(args) -> tuple[dict, list[str]]:
    device = torch.device("cuda")
    device_name = torch.cuda.get_device_name(0)
    peak_tbs = hbm_peak_tbs(device_name, args.hbm_peak_tbs)
    tokens_list = args.tokens or [4096, 16384]
    vocabs = args.vocab or [32000, 128256, 151936]
    losses = args.losses or ["maspo", "sapo", "ppo_clip"]
    providers = args.providers or GPU_PROVIDERS
    reps = args.reps or 20
    warmup = 3 if args.warmup is None else args.warmup
    print(f"device: {device_name}; HBM peak: {peak_tbs or 'n/a'} TB/s; torch {torch.__version__}", flush=True)

    results: list[Result] = []
    for tokens in tokens_list:
        for vocab in vocabs:
            inp = make_inputs(tokens, vocab, device)
            for name in losses:
                for provider in providers:
                    r = Result(provider, name, tokens, vocab, device_name, logits_bytes=logits_bytes_of(tokens, vocab))
                    results.append(r)
                    fn = build_provider(provider, name)
                    if isinstance(fn, str):
                        r.error = fn
                    elif needs_gpu(provider, device):
                        r.error = "Triton kernels need a GPU"
                    else:
                        try:
                            f, b, t = time_cuda(fn, inp, reps, warmup)
                            r.fwd_ms, r.bwd_ms, r.total_ms = Timing.of(f), Timing.of(b), Timing.of(t)
                            r.peak_extra_bytes = peak_cuda(fn, inp)
                            add_bandwidth(r, 2, peak_tbs)
                        except Exception as exc:  # noqa: BLE001 - OOM or a missing compiler is reported, not fatal
                            r.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                            torch.cuda.empty_cache()
                    print(f"  {provider} {name} N={tokens} V={vocab}: "
                          + (r.error or f"{r.total_ms.median:.3f} ms"), flush=True)
            del inp
            torch.cuda.empty_cache()
    harness.add_naive_ratios(results)
    harness.print_table(results)

    acc: list[dict] = []
    if not args.no_accuracy:
        for name in losses:
            acc += accuracy(providers, name, min(tokens_list[0], 1024), vocabs[0], device)
        for a in acc:
            print(f"accuracy {a['provider']:22s} {a['loss']:9s} N={a['tokens']} V={a['vocab']}: |loss err| "
                  f"{a['loss_abs_err']:.2e}, max |dlogits err| {a['dlogits_max_abs_err']:.2e}, rms-rel "
                  f"{a['dlogits_rms_rel_err']:.2e}")
    payload = {
        "device": device_name, "hbm_peak_TBps": peak_tbs, "torch": torch.__version__,
        "triton": harness.version_of("triton"), "liger_kernel": harness.version_of("liger_kernel"),
        "python": platform.python_version(), "temperature": TEMPERATURE, "dtype": "bfloat16", "seq_len": SEQ_LEN,
        "providers": providers, "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
        "method": __doc__.strip(), "results": [harness.asdict_result(r) for r in results], "accuracy": acc,
    }
    md = [f"GPU kernel benchmark (`benchmarks/kernels.py`): {device_name}, torch {torch.__version__}, bf16 logits.",
          ""] + harness.markdown_table(results)
    return payload, md
