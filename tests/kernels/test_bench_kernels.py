"""benchmarks/kernels.py and its kernelbench/ package: every mode imports without a GPU, --tune skips the candidates
that spill in the committed ahead-of-time report, and a tiny CPU-mode run (one child process per provider and
measurement) writes a table, JSON, PNG and markdown with time and memory for every provider. No timing is asserted."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

BENCH = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


def _kernelbench(load_file):
    before = os.environ.get("TRITON_INTERPRET")
    script = load_file("rlp_bench_kernels_script", BENCH / "kernels.py")
    assert os.environ.get("TRITON_INTERPRET") == before, "importing the script must not change the environment"
    return script.load_kernelbench()


def test_every_mode_imports_without_a_gpu(load_file):
    _kernelbench(load_file)
    import kernelbench.cpu
    import kernelbench.cuda
    import kernelbench.tune

    assert kernelbench.cuda.hbm_peak_tbs("NVIDIA H100 80GB HBM3", None) == 3.35
    assert kernelbench.cpu.warmup_count("torch-compile", 0) == 1 and kernelbench.cpu.warmup_count("torch-eager", 0) == 0


def test_tune_skips_candidates_that_spill_in_the_aot_report(load_file):
    _kernelbench(load_file)
    from kernelbench import tune

    sm90 = tune.spilling(tune.AOT_REPORT, 90)
    assert ("FWD", 8192, 1) in sm90 and ("FWD", 4096, 2) in sm90  # 620 and 8 spill bytes on sm_90
    assert ("FWD", 4096, 8) not in sm90 and not any(kind == "BWD" for kind, _, _ in sm90)
    assert ("FWD", 4096, 2) not in tune.spilling(tune.AOT_REPORT, 80)
    assert tune.spilling(str(BENCH / "results" / "missing.json"), 90) == set()


def test_cpu_mode_measures_each_provider_in_child_processes(tmp_path):
    env = dict(os.environ, PYTHONSAFEPATH="1")
    cmd = [sys.executable, str(BENCH / "kernels.py"), "--device", "cpu", "--tokens", "32", "--vocab", "600",
           "--providers", "torch-eager", "torch-chunked-inplace", "--rounds", "1", "--reps", "1",
           "--no-accuracy", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "torch-chunked-inplace" in proc.stdout and "x naive" in proc.stdout
    payload = json.loads((tmp_path / "kernels_cpu.json").read_text())
    assert payload["cpu"] and payload["cpu"] in payload["device"]
    rows = {r["provider"]: r for r in payload["results"]}
    assert set(rows) == {"torch-eager", "torch-chunked-inplace"}
    for r in rows.values():
        assert r["error"] is None and r["total_ms"]["median"] > 0 and r["peak_extra_bytes"] is not None
    assert rows["torch-eager"]["extra"]["x_naive_time"] == 1.0
    assert (tmp_path / "kernels_cpu.png").stat().st_size > 0
    assert "| provider |" in (tmp_path / "kernels_cpu.md").read_text()
