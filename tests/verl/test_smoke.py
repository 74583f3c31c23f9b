"""`rlplugins verl-smoke`: veRL's real ActorRolloutRefWorker on CPU (FSDP2 over gloo, tiny random Llama)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from rlplugins.integrations.verl import smoke

PL = "actor_rollout_ref.actor.policy_loss"
ISSUE_FLAGS = [
    f"{PL}._target_=rlplugins.integrations.verl.MaspoPolicyLossConfig",
    f"{PL}.loss_mode=maspo",
    f"+{PL}.alpha=0.5",
]


def run_cli(args: list[str], tmp_path, timeout: int = 420) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "rlplugins.cli", "verl-smoke", *args, "--json", str(out)],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else {})


def test_maspo_two_real_worker_updates(tmp_path):
    # the user's flags from the issue plus their (GPU) launch flags, which the CPU run reports and ignores
    proc, result = run_cli(
        [*ISSUE_FLAGS, "actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean",
         "actor_rollout_ref.model.path=Qwen/Qwen2.5-7B", "trainer.n_gpus_per_node=8", "--rollout-is-weights"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert result["loss_mode"] == "maspo"
    assert result["loss_fn"] == "rlplugins.integrations.verl.losses.maspo_policy_loss"
    assert result["policy_loss_config"] == "MaspoPolicyLossConfig"
    assert result["ignored_overrides"] == ["actor_rollout_ref.model.path=Qwen/Qwen2.5-7B", "trainer.n_gpus_per_node=8"]
    first, second = result["steps"]
    for metrics in (first, second):
        assert all(math.isfinite(v) for v in metrics.values()), metrics
        # our gate metrics travelled through veRL's ppo_loss and metric aggregation
        for key in ("actor/gate_mean", "actor/gate_min", "actor/damp_frac", "actor/eff_weight_mean",
                    "actor/quad_pos_frac", "actor/quad_neg_frac", "actor/ppo_kl", "actor/pg_loss", "grad_norm"):
            assert key in metrics, key
    assert first["actor/ppo_kl"] == 0.0 and first["actor/gate_mean"] == 1.0  # on-policy: r = 1, no gating
    assert second["actor/ppo_kl"] > 0.0  # the first update moved the policy
    assert second["actor/gate_mean"] < 1.0  # ... and the Gaussian gate now damps some tokens
    assert second["grad_norm"] > 0.0
    assert "checks: ok" in proc.stdout


def test_a_misspelt_flag_fails_before_the_worker_starts(tmp_path):
    proc, result = run_cli([*ISSUE_FLAGS[:2], f"+{PL}.alhpa=0.5"], tmp_path)
    assert proc.returncode == 1
    assert f"+{PL}.alpha" in proc.stderr and "'alhpa'" in result["error"]
    assert "init_model" not in proc.stdout


@pytest.mark.parametrize(
    "override, owned",
    [
        ("actor_rollout_ref.model.path=Qwen/Qwen2.5-7B", True),
        ("+actor_rollout_ref.actor.fsdp_config.param_offload=True", True),
        ("actor_rollout_ref.rollout.name=vllm", True),
        ("trainer.total_epochs=3", True),
        ("actor_rollout_ref.actor.ppo_mini_batch_size=256", True),
        (f"+{PL}.alpha=0.5", False),
        ("actor_rollout_ref.actor.loss_agg_mode=token-mean", False),
        ("actor_rollout_ref.actor.clip_ratio_high=0.28", False),
        ("actor_rollout_ref.actor.use_kl_loss=True", False),
        ("actor_rollout_ref.model.pathological=1", False),  # a prefix match must end at a dot
    ],
)
def test_split_overrides(override, owned):
    kept, ignored = smoke.split_overrides([override])
    assert (ignored if owned else kept) == [override]
