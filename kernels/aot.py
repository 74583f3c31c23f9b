"""Ahead-of-time compilation of every shipped kernel specialisation for real GPU targets, on a machine without one.

``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))`` runs Triton's full pipeline (TTIR, TTGIR,
LLVM, PTX) and the bundled ``ptxas`` with no driver, which the CPU interpreter never does: it catches pointer-type
and dtype-cast errors, constexpr-function arguments that do not lower, register spills and shared-memory use.
For each specialisation this module records

- ``regs``, ``spill_stores``/``spill_loads`` (bytes), ``stack`` (bytes): ``ptxas -v`` on the PTX, with the flags
  Triton itself passes;
- ``smem``: the shared memory the launch requests (Triton's metadata: reductions' scratch);
- the global memory traffic on the logits, counted in the PTX: a register taint analysis from the logits
  pointer parameter marks every ``ld.global``/``st.global``/``cp.async`` whose address derives from it; the bytes
  per thread of those accesses times the threads of a program, divided by the block of logits the program
  covers, gives the number of passes over a row. The shipped claim is 1 pass in the forward kernels (the
  online-softmax loop; plus the label's single element) and 1 read + 1 write in the gradient kernel: 2 reads +
  1 write of the logits per row in total.

Run ``python -m rlplugins.kernels.aot [--full] [--targets 80,90,100]`` (prints JSON); it needs
``TRITON_INTERPRET`` unset or 0 (the interpreter replaces ``@triton.jit`` functions). ``benchmarks/kernels_aot.py``
writes the table; ``tests/kernels/test_aot.py`` compiles the default configurations in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

#: Logits storage dtypes -> (Triton pointer type, bytes per element).
LOGIT_TYPES = {"float32": ("fp32", 4), "bfloat16": ("bf16", 2), "float16": ("fp16", 2)}
#: GPU targets: compute capability -> name. sm_100 needs ptxas >= 12.8 (the triton 3.9 wheel bundles 12.9).
TARGETS = {80: "sm_80 (A100)", 90: "sm_90a (H100/H200)", 100: "sm_100a (B200)"}
#: A vocabulary size for the default launch configuration: any V >= 4096 gives the same one (block 4096).
DEFAULT_VOCAB = 151936
#: Launch configurations swept by ``benchmarks/kernels.py --tune`` (kept equal to it: test_aot checks).
TUNE_FWD = {"blocks": (1024, 2048, 4096, 8192), "warps": (1, 2, 4, 8, 16)}
TUNE_BWD = {"blocks": (1024, 2048, 4096, 8192), "warps": (4, 8, 16)}


@dataclass
class Spec:
    """One specialisation: a kernel, its argument types/constexprs and launch options."""

    kernel: str  # "logprobs_fwd" | "fused_fwd" | "logits_grad" | "gated_token"
    label: str  # human-readable variant
    dtype: str  # logits dtype (or per-token input dtype for gated_token)
    block: int
    num_warps: int
    num_stages: int
    constexprs: dict[str, Any] = field(default_factory=dict)
    gate: str | None = None
    config: str = "default"  # "default" | "tune"


@dataclass
class Result:
    spec: dict
    target: int
    ok: bool
    error: str = ""
    regs: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    smem: int | None = None
    logits_read_passes: float | None = None  # passes over the row of logits (per program-covered block)
    logits_write_passes: float | None = None
    logits_extra_elements: int | None = None  # single-element logits reads (the label's logit)
    logits_load_instrs: int | None = None
    logits_store_instrs: int | None = None
    compile_s: float | None = None


# ------------------------------------------------------------------------------------------ specialisations


def _kernels():
    from .fused_loss import _fused_gated_loss_fwd_kernel
    from .gated_loss import _gated_token_loss_kernel
    from .logprobs import _logprobs_fwd_kernel
    from .rows import logits_grad_kernel

    return {
        "logprobs_fwd": _logprobs_fwd_kernel,
        "fused_fwd": _fused_gated_loss_fwd_kernel,
        "logits_grad": logits_grad_kernel,
        "gated_token": _gated_token_loss_kernel,
    }


def distinct_gates() -> dict[str, list[str]]:
    """Registered gate functions -> the registered names that share each (ppo_clip/clip_higher/dual_clip: one)."""
    from .gates import get_gate, list_gates

    out: dict[str, list[str]] = {}
    for name in list_gates():
        out.setdefault(get_gate(name).fn.__name__, []).append(name)
    return out


def _default_cfg(kind: str):
    from ._utils import vocab_launch_config

    # the defaults, whatever tuning variables (RLPLUGINS_* or the deprecated RLP_*) the environment holds
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith(("RLPLUGINS_FWD_", "RLPLUGINS_BWD_",
                                                                              "RLP_FWD_", "RLP_BWD_"))}
    try:
        return vocab_launch_config(DEFAULT_VOCAB, kind)
    finally:
        os.environ.update(saved)


def specialisations(full: bool = False) -> list[Spec]:
    """Default configurations: every gate x logits dtype x entropy x on/off-policy for the fused forward, every
    dtype x entropy for log-probs and gradient, every gate x mask for the elementwise loss. ``full`` adds the
    ``--tune`` launch candidates (bf16, MASPO fused forward / gradient / log-prob forward)."""
    fwd, bwd = _default_cfg("fwd"), _default_cfg("bwd")
    gates = distinct_gates()
    specs: list[Spec] = []
    for dt in LOGIT_TYPES:
        for ent in (False, True):
            specs.append(Spec("logprobs_fwd", f"entropy={int(ent)}", dt, fwd.block, fwd.num_warps, fwd.num_stages,
                              {"ENTROPY": ent}))
            # In-place and out-of-place gradients are the same specialisation (DLOGITS may alias LOGITS: the
            # kernel reads its block before writing it); one compile covers both.
            specs.append(Spec("logits_grad", f"entropy={int(ent)} (in-place and out-of-place)", dt, bwd.block,
                              bwd.num_warps, bwd.num_stages, {"ENTROPY": ent, "BF16_RTNE_BY_HAND": False}))
            for fn_name, names in gates.items():
                for has_old in (True, False):
                    specs.append(Spec("fused_fwd", f"{'/'.join(names)} entropy={int(ent)} old={int(has_old)}", dt,
                                      fwd.block, fwd.num_warps, fwd.num_stages,
                                      {"ENTROPY": ent, "HAS_OLD": has_old}, gate=names[0]))
    for fn_name, names in gates.items():
        for has_mask in (True, False):
            specs.append(Spec("gated_token", f"{'/'.join(names)} mask={int(has_mask)}", "float32", 1024, 4, 3,
                              {"HAS_MASK": has_mask}, gate=names[0]))
    if full:
        for block in TUNE_FWD["blocks"]:
            for warps in TUNE_FWD["warps"]:
                specs.append(Spec("fused_fwd", "maspo entropy=0 old=1", "bfloat16", block, warps, fwd.num_stages,
                                  {"ENTROPY": False, "HAS_OLD": True}, gate="maspo", config="tune"))
                specs.append(Spec("logprobs_fwd", "entropy=0", "bfloat16", block, warps, fwd.num_stages,
                                  {"ENTROPY": False}, config="tune"))
        for block in TUNE_BWD["blocks"]:
            for warps in TUNE_BWD["warps"]:
                specs.append(Spec("logits_grad", "entropy=0", "bfloat16", block, warps, bwd.num_stages,
                                  {"ENTROPY": False, "BF16_RTNE_BY_HAND": False}, config="tune"))
    return specs


def _signature(kernel, spec: Spec) -> tuple[dict[str, str], dict[str, Any], dict]:
    """Argument types as the runtime JIT specialises them for a typical launch (int arguments < 2**31 are i32;
    pointers from torch allocations and V, strides of a V % 16 == 0 vocabulary are 16-divisible)."""
    from .gates import get_gate

    ptr = LOGIT_TYPES[spec.dtype][0]
    constexprs = dict(spec.constexprs, BLOCK=spec.block)
    if spec.gate is not None:
        constexprs["GATE"] = get_gate(spec.gate).fn
    sig: dict[str, str] = {}
    divisible: list[int] = []
    for i, name in enumerate(kernel.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
            continue
        if name in ("LOGITS", "DLOGITS"):
            sig[name] = f"*{ptr}"
        elif name in ("LABELS",):
            sig[name] = "*i64"
        elif name == "MASK":
            sig[name] = "*i1"
        elif name.isupper() and name not in ("V", "INNER") and not name.startswith(("STRIDE", "D_STRIDE")) \
                and not re.fullmatch(r"P\d+", name):
            sig[name] = "*fp32"
        elif name in ("inv_temp",) or re.fullmatch(r"P\d+", name):
            sig[name] = "fp32"
        else:  # V, INNER, strides, ignore_index, n
            sig[name] = "i32"
        if sig[name].startswith("*") or name in ("V", "STRIDE_OUTER", "STRIDE_INNER", "D_STRIDE_OUTER",
                                                    "D_STRIDE_INNER"):
            divisible.append(i)
    attrs = {(i,): [["tt.divisibility", 16]] for i in divisible}
    return sig, constexprs, attrs


# ------------------------------------------------------------------------------------------------ analysis

_PARAM = re.compile(r"ld\.param\.\S+\s+(%\w+),\s*\[(\w+)_param_(\d+)\]")
_REG = re.compile(r"%\w+")
_ACCESS = re.compile(r"^(?:@!?%\w+\s+)?(ld|st)\.global\S*\s")
_CP_ASYNC = re.compile(r"^(?:@!?%\w+\s+)?cp\.async\S*\s+\[[^\]]*\],\s*\[\s*(%\w+)[^\]]*\],\s*(\d+)")


def _access_bytes(op: str) -> int:
    width = int(re.search(r"\.[bsuf](\d+)\b", op).group(1)) // 8
    vec = re.search(r"\.v(\d+)\.", op)
    return width * (int(vec.group(1)) if vec else 1)


def analyse_ptx(ptx: str, param_index: int) -> dict[str, Any]:
    """Global accesses whose address derives from kernel parameter ``param_index`` (a pointer).

    Taint propagates through every non-memory instruction (dest = first operand) to a fixed point (so loop-carried
    address registers are covered) and stops at loads (loaded data is not an address). Returns the accesses as
    (kind, bytes per thread, in_loop) with loops found as backward branches."""
    lines = [ln.split("//")[0].strip() for ln in ptx.splitlines()]
    tainted: set[str] = set()
    instrs: list[tuple[list[str], list[str]]] = []
    for ln in lines:
        m = _PARAM.search(ln)
        if m and int(m.group(3)) == param_index:
            tainted.add(m.group(1))
            continue
        if not ln or ln.endswith(":") or ln.startswith("."):
            continue
        body = re.sub(r"^@!?%\w+\s+", "", ln).rstrip(";")
        parts = body.split(None, 1)
        if len(parts) < 2 or parts[0].startswith(("ld.", "st.", "bra", "ret", "cp.", "bar", "call")):
            continue
        ops = parts[1]
        if ops.startswith("{"):
            dst_txt, _, src_txt = ops.partition("}")
            dsts = _REG.findall(dst_txt)
        else:
            dst_txt, _, src_txt = ops.partition(",")
            dsts = _REG.findall(dst_txt)
        instrs.append((dsts, _REG.findall(src_txt)))
    changed = True
    while changed:
        changed = False
        for dsts, srcs in instrs:
            if any(s in tainted for s in srcs):
                for d in dsts:
                    if d not in tainted:
                        tainted.add(d)
                        changed = True
    # Loops: a branch to a label defined earlier.
    label_at = {ln[:-1]: i for i, ln in enumerate(lines) if re.fullmatch(r"\$\w+:", ln)}
    loops = []
    for i, ln in enumerate(lines):
        m = re.search(r"\bbra(?:\.uni)?\s+(\$\w+)", ln)
        if m and m.group(1) in label_at and label_at[m.group(1)] < i:
            loops.append((label_at[m.group(1)], i))
    accesses = []
    for i, ln in enumerate(lines):
        in_loop = any(a <= i <= b for a, b in loops)
        m = _ACCESS.match(ln)
        if m:
            addr = re.search(r"\[\s*(%\w+)", ln)
            if addr and addr.group(1) in tainted:
                op = re.sub(r"^@!?%\w+\s+", "", ln).split()[0]
                accesses.append(("load" if m.group(1) == "ld" else "store", _access_bytes(op), in_loop))
            continue
        m = _CP_ASYNC.match(ln)
        if m and m.group(1) in tainted:
            accesses.append(("load", int(m.group(2)), in_loop))
    return {"accesses": accesses, "loops": len(loops)}


def traffic(spec: Spec, ptx: str, param_index: int, threads: int) -> dict[str, Any]:
    """Passes over the logits per row from the PTX accesses (see the module docstring)."""
    itemsize = LOGIT_TYPES[spec.dtype][1]
    info = analyse_ptx(ptx, param_index)
    block_bytes = spec.block * itemsize
    streamed = [a for a in info["accesses"] if a[0] == "load" and (a[2] or spec.kernel == "logits_grad")]
    single = [a for a in info["accesses"] if a[0] == "load" and not a[2] and spec.kernel != "logits_grad"]
    stores = [a for a in info["accesses"] if a[0] == "store"]
    read = sum(a[1] for a in streamed) * threads / block_bytes
    write = sum(a[1] for a in stores) * threads / block_bytes
    return {
        "logits_read_passes": round(read, 4),
        "logits_write_passes": round(write, 4),
        "logits_extra_elements": sum(a[1] for a in single) // itemsize,
        "logits_load_instrs": len(streamed) + len(single),
        "logits_store_instrs": len(stores),
    }


_PTXAS_REGS = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_report(ptx: str, target: int) -> dict[str, int]:
    """Registers, stack and spills from ``ptxas -v`` with the options Triton's own make_cubin passes."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [get_ptxas(target).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(target)}", src, "-o", os.path.join(tmp, "k.cubin")]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode:
        raise RuntimeError(f"ptxas failed: {log[-2000:]}")
    regs, spill = _PTXAS_REGS.search(log), _PTXAS_SPILL.search(log)
    return {"regs": int(regs.group(1)), "stack": int(spill.group(1)), "spill_stores": int(spill.group(2)),
            "spill_loads": int(spill.group(3))}


def compile_one(spec: Spec, target: int) -> Result:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = _kernels()[spec.kernel]
    res = Result(spec=asdict(spec), target=target, ok=False)
    t0 = time.perf_counter()
    try:
        sig, constexprs, attrs = _signature(kernel, spec)
        src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
        k = triton.compile(src, target=GPUTarget("cuda", target, 32),
                           options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
        ptx = k.asm["ptx"]
        res.smem = int(k.metadata.shared)
        for key, value in ptxas_report(ptx, target).items():
            setattr(res, key, value)
        if spec.kernel != "gated_token":
            name = "DLOGITS" if spec.kernel == "logits_grad" else "LOGITS"
            # PTX parameters are numbered over the non-constexpr arguments, in order.
            params = [a for a in kernel.arg_names if sig[a] != "constexpr"]
            tr = traffic(spec, ptx, params.index("LOGITS"), spec.num_warps * 32)
            if spec.kernel == "logits_grad":  # reads from LOGITS, writes to DLOGITS
                wr = traffic(spec, ptx, params.index(name), spec.num_warps * 32)
                tr["logits_write_passes"] = wr["logits_write_passes"]
                tr["logits_store_instrs"] = wr["logits_store_instrs"]
            for key, value in tr.items():
                setattr(res, key, value)
        res.ok = True
    except Exception as exc:  # noqa: BLE001 - reported per specialisation
        res.error = f"{type(exc).__name__}: {exc}"[:2000]
    res.compile_s = round(time.perf_counter() - t0, 2)
    return res


def available_targets() -> list[int]:
    """Targets the bundled ptxas accepts (sm_100 needs CUDA >= 12.8)."""
    from triton.backends.nvidia.compiler import get_ptxas

    out = [80, 90]
    try:
        version = subprocess.run([get_ptxas(100).path, "--version"], capture_output=True, text=True).stdout
        major, minor = map(int, re.search(r"release (\d+)\.(\d+)", version).groups())
        if (major, minor) >= (12, 8):
            out.append(100)
    except Exception:  # noqa: BLE001
        pass
    return out


def ci_subset() -> list[tuple[Spec, int]]:
    """What ``make test`` compiles (about a minute on 2 cores): every default-config specialisation in bf16 for
    sm_90a (each gate, entropy on/off, on/off-policy, every kernel), plus fp32/fp16 logits and sm_80 for the
    log-prob forward, the gradient and the fused MASPO forward. ``benchmarks/kernels_aot.py`` compiles the rest."""
    out = []
    for spec in specialisations(full=False):
        if spec.dtype == "bfloat16" or spec.kernel == "gated_token":
            if spec.kernel != "gated_token" or spec.constexprs["HAS_MASK"]:
                out.append((spec, 90))
        if spec.kernel in ("logprobs_fwd", "logits_grad") or (
                spec.kernel == "fused_fwd" and spec.gate == "maspo" and spec.constexprs["HAS_OLD"]):
            if spec.dtype != "bfloat16":
                out.append((spec, 90))
            if spec.constexprs["ENTROPY"]:
                out.append((spec, 80))
    return out


def run(full: bool = False, targets: list[int] | None = None, kernels: list[str] | None = None,
        dtypes: list[str] | None = None, ci: bool = False) -> list[Result]:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("AOT compilation needs TRITON_INTERPRET unset or 0 (the interpreter replaces @triton.jit)")
    if ci:
        return [compile_one(spec, target) for spec, target in ci_subset()]
    targets = targets or available_targets()
    out = []
    for spec in specialisations(full):
        if kernels and spec.kernel not in kernels:
            continue
        if dtypes and spec.dtype not in dtypes and spec.kernel != "gated_token":
            continue
        for target in targets:
            out.append(compile_one(spec, target))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="also the --tune launch candidates")
    parser.add_argument("--targets", default="", help="comma-separated compute capabilities (default: all available)")
    parser.add_argument("--kernels", default="", help="comma-separated subset of kernels")
    parser.add_argument("--dtypes", default="", help="comma-separated subset of logits dtypes")
    parser.add_argument("--ci", action="store_true", help="the subset tests/kernels/test_aot.py compiles")
    args = parser.parse_args(argv)
    targets = [int(t) for t in args.targets.split(",") if t] or None
    results = run(args.full, targets, [k for k in args.kernels.split(",") if k] or None,
                  [d for d in args.dtypes.split(",") if d] or None, ci=args.ci)
    json.dump([asdict(r) for r in results], sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
