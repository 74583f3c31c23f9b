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

DRIVER = os.path.join(os.path.dirname(os.path.abspath(tiny.__file__)), "rlp_t2_dpo_driver.py")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.environ.get("RLP_OPENRLHF_SLOW") != "1", reason="T2 tier: set RLP_OPENRLHF_SLOW=1"),
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
