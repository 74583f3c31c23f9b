"""T2 (slow, opt-in): the DPO wrapper CLI end to end, through OpenRLHF's real train_dpo main and real
DeepSpeed ZeRO-2 on CPU (one rank, gloo). The first run JIT-compiles DeepSpeed's CPU ops (minutes); keep
TORCH_EXTENSIONS_DIR between runs. Run with ``make test-openrlhf-slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import datasets
import pytest
import rlp_openrlhf_tiny as tiny

from rlplugins._env import env_flag

DRIVER = os.path.join(os.path.dirname(os.path.abspath(tiny.__file__)), "rlp_t2_dpo_driver.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not env_flag("OPENRLHF_SLOW"), reason="T2 tier: set RLPLUGINS_OPENRLHF_SLOW=1"),
    pytest.mark.skipif(shutil.which("g++") is None, reason="DeepSpeed's CPU ops need a C++ compiler"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_train_dpo_wrapper_with_real_deepspeed(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(tiny.dpo_rows(32)).to_json(str(data))
    result = tmp_path / "result.json"
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "RANK": "0",
           "WORLD_SIZE": "1", "LOCAL_RANK": "-1",
           "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/rlp-torch-ext"))}
    argv = [sys.executable, DRIVER, str(result),
            "--model.model_name_or_path", tiny_model_dir, "--data.dataset", str(data),
            "--data.prompt_key", "prompt", "--data.chosen_key", "chosen", "--data.rejected_key", "rejected",
            "--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "eager",
            "--train.batch_size", "4", "--train.micro_batch_size", "2", "--train.max_epochs", "1",
            "--data.max_len", "64", "--lr_scheduler", "constant", "--adam.lr", "3e-3",
            "--ckpt.output_dir", str(tmp_path / "out"), "--ckpt.path", str(tmp_path / "ckpt"),
            "--selector", "sage", "--sage.rescore_interval", "2", "--sage.selection_ratio", "0.5",
            "--selector.pass_rate_key", "pass_rate"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(result.read_text())
    assert out["pending"] == 0 and len(out["batches"]) == out["loader_len"] == 16
    assert out["metrics"]["selector/rounds"] >= 1 and out["metrics"]["selector/pairs_scored"] > 0
    assert os.path.exists(tmp_path / "out" / "config.json")  # OpenRLHF saved the trained model


# ------------------------------------------------------------------------------------------- two DeepSpeed ranks

DP_FLAGS = ["--data.prompt_key", "prompt", "--data.chosen_key", "chosen", "--data.rejected_key", "rejected",
            "--ds.zero_stage", "2", "--ds.param_dtype", "bf16", "--ds.attn_implementation", "eager",
            "--train.batch_size", "4", "--train.micro_batch_size", "2", "--train.max_epochs", "2",
            "--data.max_len", "64", "--lr_scheduler", "constant", "--adam.lr", "3e-3",
            "--selector", "sage", "--sage.rescore_interval", "2", "--sage.selection_ratio", "0.5",
            "--selector.pass_rate_key", "pass_rate"]


def run_two_ranks(tmp_path, name: str, flags: list[str], env_extra: dict[str, str] | None = None) -> list[dict]:
    """Our DPO wrapper on 2 DeepSpeed ranks (one process each, gloo); returns each rank's driver result."""
    port = str(free_port())
    result = tmp_path / f"{name}.rank{{rank}}.json"
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank), "WORLD_SIZE": "2",
               "LOCAL_RANK": "-1", "OMP_NUM_THREADS": "1", **(env_extra or {}),
               "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR",
                                                      os.path.expanduser("~/.cache/rlp-torch-ext"))}
        log = open(tmp_path / f"{name}.rank{rank}.log", "w")
        procs.append((subprocess.Popen([sys.executable, DRIVER, str(result), *flags], env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log))
    for proc, log in procs:
        proc.wait(timeout=1800)
        log.close()
    for rank, (proc, _) in enumerate(procs):
        assert proc.returncode == 0, (tmp_path / f"{name}.rank{rank}.log").read_text()[-5000:]
    return [json.loads((tmp_path / f"{name}.rank{rank}.json").read_text()) for rank in range(2)]


def test_two_ranks_disjoint_shards_and_exact_resume_per_rank(tiny_model_dir, tmp_path):
    data = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(tiny.dpo_rows(32)).to_json(str(data))
    common = ["--model.model_name_or_path", tiny_model_dir, "--data.dataset", str(data), *DP_FLAGS]

    straight = run_two_ranks(tmp_path, "straight", [*common, "--ckpt.output_dir", str(tmp_path / "out_a"),
                                                    "--ckpt.path", str(tmp_path / "ckpt_a")])
    # the shards: disjoint, together the whole training set, each rank trains only on its own
    shards = [set(r["shard"]) for r in straight]
    assert [r["rank"] for r in straight] == [0, 1] and all(r["num_replicas"] == 2 for r in straight)
    assert not shards[0] & shards[1] and shards[0] | shards[1] == set(range(32))
    for r, shard in zip(straight, shards):
        trained = [i for batch in r["batches"] for i in batch]
        assert set(trained) <= shard and len(r["batches"]) == r["loader_len"] * r["epochs"] == 16
        assert r["pending"] == 0 and r["metrics"]["selector/pairs_scored"] > 0

    # preempted after the checkpoint of step 4, then resumed from it by a new pair of processes
    ckpt = ["--ckpt.output_dir", str(tmp_path / "out_b"), "--ckpt.path", str(tmp_path / "ckpt_b"),
            "--ckpt.save_steps", "4"]
    first = run_two_ranks(tmp_path, "first", [*common, *ckpt], {"RLPLUGINS_T2_STOP_AFTER_STEP": "4"})
    assert all(r["stopped"] for r in first)
    assert all(os.path.exists(tmp_path / "ckpt_b" / f"rlplugins_selector_rank{rank}.pt") for rank in range(2))
    resumed = run_two_ranks(tmp_path, "resumed", [*common, *ckpt, "--ckpt.load_enable"])
    for rank in range(2):
        assert first[rank]["batches"] == straight[rank]["batches"][:4]
        assert first[rank]["batches"] + resumed[rank]["batches"] == straight[rank]["batches"], rank
        assert resumed[rank]["state"] == straight[rank]["state"], rank  # the selector ends in the same state
        assert resumed[rank]["metrics"] == straight[rank]["metrics"], rank
