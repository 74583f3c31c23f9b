"""Ahead-of-time compilation for real GPUs, on CPU: what the interpreter cannot see.

The kernels are compiled with ``triton.compile(..., target=GPUTarget("cuda", cc, 32))`` and the bundled ptxas in
a subprocess with ``TRITON_INTERPRET=0`` (this test session runs under the interpreter, which replaces
``@triton.jit``). A compile error, a register spill at a default launch configuration, or a kernel that moves the
logits more than the claimed 2 reads + 1 write per row fails here. The full matrix (fp32/fp16 everywhere, sm_100,
the ``--tune`` candidates) is ``benchmarks/kernels_aot.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from rlplugins.kernels import aot  # noqa: E402  (no Triton import at module level)


@pytest.fixture(scope="module")
def ci_results() -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="0")
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated (silences its warning)
    proc = subprocess.run([sys.executable, "-m", "rlplugins.kernels.aot", "--ci"], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout)


def _name(r: dict) -> str:
    s = r["spec"]
    return f"{s['kernel']}[{s['label']}, {s['dtype']}, block {s['block']}/{s['num_warps']} warps, sm_{r['target']}]"


def test_every_default_specialisation_compiles_for_sm80_and_sm90(ci_results):
    assert len(ci_results) == len(aot.ci_subset())
    failed = [f"{_name(r)}: {r['error']}" for r in ci_results if not r["ok"]]
    assert not failed, "\n".join(failed)
    covered = {(r["spec"]["kernel"], r["spec"]["gate"]) for r in ci_results}
    for names in aot.distinct_gates().values():
        assert ("fused_fwd", names[0]) in covered and ("gated_token", names[0]) in covered
    assert {r["target"] for r in ci_results} == {80, 90}
    assert {r["spec"]["dtype"] for r in ci_results if r["spec"]["kernel"] == "logits_grad"} == set(aot.LOGIT_TYPES)


def test_no_register_spills_at_the_default_launch_configurations(ci_results):
    spilled = [f"{_name(r)}: {r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads, {r['regs']} regs"
               for r in ci_results if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, "\n".join(spilled)
    for r in ci_results:
        assert 0 < r["regs"] <= 255 and r["smem"] is not None


def test_the_logits_are_read_twice_and_written_once_per_row(ci_results):
    """Counted in the PTX: each forward streams the row once (plus the label's element), the gradient kernel reads
    and writes its block once; nothing else touches the logits."""
    for r in ci_results:
        kernel = r["spec"]["kernel"]
        if kernel in ("logprobs_fwd", "fused_fwd"):
            assert (r["logits_read_passes"], r["logits_write_passes"], r["logits_extra_elements"]) == (1.0, 0.0, 1), _name(r)
        elif kernel == "logits_grad":
            assert (r["logits_read_passes"], r["logits_write_passes"], r["logits_extra_elements"]) == (1.0, 1.0, 0), _name(r)
    fwd = next(r for r in ci_results if r["spec"]["kernel"] == "fused_fwd")
    bwd = next(r for r in ci_results if r["spec"]["kernel"] == "logits_grad")
    assert fwd["logits_read_passes"] + bwd["logits_read_passes"] == 2.0 and bwd["logits_write_passes"] == 1.0


_PTX = """
    ld.param.b64 %rd1, [k_param_0];
    ld.param.b64 %rd2, [k_param_1];
    mov.u32 %r1, %tid.x;
    mul.wide.u32 %rd3, %r1, 16;
    add.s64 %rd4, %rd1, %rd3;
    ld.global.b64 { %rd9 }, [ %rd2 + 0 ];
$L__BB0_1:
    @%p1 ld.global.v4.b32 { %r2, %r3, %r4, %r5 }, [ %rd4 + 0 ];
    add.s64 %rd4, %rd4, 4096;
    add.s64 %rd5, %rd1, %rd9;
    @%p2 bra $L__BB0_1;
    ld.global.b16 { %rs1 }, [ %rd5 + 0 ];
    st.global.b32 [ %rd2 + 0 ], { %r2 };
"""


def test_ptx_traffic_analysis_follows_addresses_from_the_pointer_parameter():
    """A loop load (16 B/thread) and a single element from param 0; the label load and the store use param 1."""
    info = aot.analyse_ptx(_PTX, 0)
    assert info["loops"] == 1
    assert sorted(info["accesses"]) == [("load", 2, False), ("load", 16, True)]
    assert aot.analyse_ptx(_PTX, 1)["accesses"] == [("load", 8, False), ("store", 4, False)]
    spec = aot.Spec("logprobs_fwd", "", "bfloat16", block=2048, num_warps=8, num_stages=2)
    assert aot.traffic(spec, _PTX, 0, threads=256) == {
        "logits_read_passes": 1.0, "logits_write_passes": 0.0, "logits_extra_elements": 1,
        "logits_load_instrs": 2, "logits_store_instrs": 0}
    spec = aot.Spec("logprobs_fwd", "", "bfloat16", block=1024, num_warps=8, num_stages=2)
    assert aot.traffic(spec, _PTX, 0, threads=256)["logits_read_passes"] == 2.0  # each element read twice

