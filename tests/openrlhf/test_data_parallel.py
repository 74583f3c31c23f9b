"""Two ranks, same gradient: ``CorePolicyLoss`` under real DeepSpeed ZeRO-2 data parallelism (torchrun, gloo, CPU).

The driver (support/rlp_dp_policy_loss_driver.py) takes one optimizer step of a tiny OpenRLHF ``Actor`` on a fixed
global batch of 8 sequences, with the loss called as ``ActorPPOTrainer.training_step`` calls it (OpenRLHF's own
``iter_grad_accum_global_norm`` normalisers, micro-batches of 2, gradient accumulation), once on 1 rank (4
accumulation steps) and once on 2 ranks (2 each). Plain SGD, so ``(before - after) / lr`` is the gradient
DeepSpeed applied. About 60 s on 2 cores (DeepSpeed's CPU shared-memory kernel is not JIT-built; see the driver).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
DRIVER = os.path.join(SUPPORT, "rlp_dp_policy_loss_driver.py")
WRONG = "wrong:dp_size-forgotten"
GOOD = ["maspo:token-mean", "maspo:seq-mean-token-mean", "ppo_clip:token-mean", "openrlhf-ppo:token-mean"]


def run_driver(nproc: int, model_dir: str, out_dir) -> dict:
    out_dir.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(out_dir / "ext")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", DRIVER,
         str(out_dir), model_dir],
        capture_output=True, text=True, timeout=900, env=env, cwd=out_dir,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert not (out_dir / "ext").exists()  # nothing was JIT-compiled
    return json.loads((out_dir / "results.json").read_text())


def gradients(case: dict, lr: float) -> dict[str, torch.Tensor]:
    params = torch.load(case["params"])
    return {k: (params["before"][k] - params["after"][k]) / lr for k in params["after"]}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("dp")
    return run_driver(1, tiny_model_dir, base / "ranks1"), run_driver(2, tiny_model_dir, base / "ranks2")


def test_two_ranks_give_the_single_rank_gradient(runs):
    one, two = runs
    assert one["world_size"] == 1 and two["world_size"] == 2
    for name in GOOD:
        g1, g2 = gradients(one["cases"][name], one["lr"]), gradients(two["cases"][name], two["lr"])
        scale = max(float(g.abs().max()) for g in g1.values())
        assert scale > 1e-2, name  # a real gradient, not a no-op step
        assert max_diff(g1, g2) <= 1e-6 + 1e-5 * scale, (name, max_diff(g1, g2), scale)


def test_the_normalisers_are_global_and_prescaled_for_deepspeed(runs):
    one, two = runs
    # 29 response tokens and 8 sequences in the global batch, divided by the accumulation steps DeepSpeed divides out
    assert one["cases"]["maspo:token-mean"] == {**one["cases"]["maspo:token-mean"], "batch_num_tokens": 29 / 4,
                                                 "global_batch_size": 8 / 4, "dp_size": 1, "gas": 4}
    assert two["cases"]["maspo:token-mean"] == {**two["cases"]["maspo:token-mean"], "batch_num_tokens": 29 / 2,
                                                 "global_batch_size": 8 / 2, "dp_size": 2, "gas": 2}


def test_core_ppo_clip_matches_openrlhfs_policy_loss_on_two_ranks(runs):
    _, two = runs
    ours = gradients(two["cases"]["ppo_clip:token-mean"], two["lr"])
    theirs = gradients(two["cases"]["openrlhf-ppo:token-mean"], two["lr"])
    assert max_diff(ours, theirs) <= 1e-6


def test_the_comparison_catches_a_forgotten_dp_size(runs):
    one, two = runs
    good = gradients(one["cases"][WRONG], one["lr"])  # on one rank dp_size=1 is right
    wrong = gradients(two["cases"][WRONG], two["lr"])
    # DeepSpeed averages over the 2 ranks and nothing undoes it: exactly half the gradient
    assert max_diff(good, {k: 2 * v for k, v in wrong.items()}) <= 1e-5
    assert max_diff(good, wrong) > 0.4 * max(float(g.abs().max()) for g in good.values())
