"""SageDPOTrainer under real data parallelism: 2 CPU processes (torchrun, gloo DDP), one selector per process.

Marked slow (about a minute on 2 cores): `make test-trl-slow`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support", "ddp_sage_dpo.py")


@pytest.mark.slow
@pytest.mark.parametrize("selector", ["sage"])
def test_two_processes_train_disjoint_shards_in_lockstep(selector, tmp_path):
    env = {**os.environ, "PYTHONSAFEPATH": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533", SCRIPT,
           str(tmp_path), selector]
    proc = subprocess.run(cmd, env=env, cwd=str(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    trained = [set(r["trained"]) for r in ranks]
    assert all(len(r["trained"]) == 3 * 4 for r in ranks)  # 3 optimizer steps x (2 pairs x 2 accumulation)
    assert not trained[0] & trained[1]  # each process only ever trains on its own shard
    assert all(r["metrics"]["selector/pairs_scored"] > 0 for r in ranks)  # each scored its own pairs, no deadlock
    assert ranks[0]["params"] == pytest.approx(ranks[1]["params"], rel=1e-6)  # DDP kept the replicas identical
