"""``--tune``: sweep the launch configuration (block, warps) of the fused MASPO kernel on a GPU, forward and backward
separately, over the candidates ``benchmarks/kernels_aot.py`` compiles ahead of time; candidates that spill
registers on this GPU's architecture in that report (``benchmarks/results/kernels_aot.json``) are skipped."""

from __future__ import annotations

import json
import os
import statistics

import torch

from .cuda import time_cuda
from .harness import RESULTS_DIR
from .providers import build_provider, make_inputs

AOT_REPORT = os.path.join(RESULTS_DIR, "kernels_aot.json")
AOT_KERNEL = {"FWD": "fused_fwd", "BWD": "logits_grad"}


def spilling(report_path: str, target: int | None) -> set[tuple[str, int, int]]:
    """(FWD|BWD, block, warps) of the --tune candidates that spill on ``target`` (sm number; None: any target)."""
    if not os.path.exists(report_path):
        return set()
    with open(report_path) as f:
        rows = json.load(f)["rows"]
    out = set()
    for kind, kernel in AOT_KERNEL.items():
        for row in rows:
            spec = row["spec"]
            if (spec["config"] == "tune" and spec["kernel"] == kernel and (target is None or row["target"] == target)
                    and (row.get("spill_stores", 0) or row.get("spill_loads", 0))):
                out.add((kind, spec["block"], spec["num_warps"]))
    return out


def tune(tokens: int, vocab: int, reps: int, report_path: str = AOT_REPORT) -> list[dict]:
    """Time every non-spilling candidate; rows of {kind, block, warps, fwd_ms, bwd_ms, total_ms} (or skipped)."""
    from rlplugins.kernels import aot  # the candidates benchmarks/kernels_aot.py compiles ahead of time

    major, minor = torch.cuda.get_device_capability()
    skip = spilling(report_path, major * 10 + minor)
    inp = make_inputs(tokens, vocab, torch.device("cuda"))
    fn = build_provider("ours-fused-inplace", "maspo")
    rows = []
    for kind, cand in (("FWD", aot.TUNE_FWD), ("BWD", aot.TUNE_BWD)):
        for block in cand["blocks"]:
            for warps in cand["warps"]:
                if (kind, block, warps) in skip:
                    rows.append({"kind": kind, "block": block, "warps": warps, "skipped": "spills (kernels_aot)"})
                    print(f"{kind} block={block:5d} warps={warps:2d}: skipped, spills registers (kernels_aot.json)")
                    continue
                os.environ[f"RLPLUGINS_{kind}_BLOCK"], os.environ[f"RLPLUGINS_{kind}_WARPS"] = str(block), str(warps)
                try:
                    f, b, t = time_cuda(fn, inp, reps, 2)
                    rows.append({"kind": kind, "block": block, "warps": warps, "fwd_ms": statistics.median(f),
                                 "bwd_ms": statistics.median(b), "total_ms": statistics.median(t)})
                    print(f"{kind} block={block:5d} warps={warps:2d}: fwd {rows[-1]['fwd_ms']:.3f} ms  "
                          f"bwd {rows[-1]['bwd_ms']:.3f} ms", flush=True)
                except Exception as exc:  # noqa: BLE001 - a config that fails to compile is reported, not fatal
                    rows.append({"kind": kind, "block": block, "warps": warps, "error": f"{type(exc).__name__}"})
                    print(f"{kind} block={block} warps={warps}: {type(exc).__name__}: {exc}")
            os.environ.pop(f"RLPLUGINS_{kind}_BLOCK", None)
            os.environ.pop(f"RLPLUGINS_{kind}_WARPS", None)
    return rows
