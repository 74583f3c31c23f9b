"""Two ranks, same update: `rlplugins verl-smoke --nproc-per-node 2` (veRL's real ActorRolloutRefWorker, FSDP2
over gloo, torchrun) against the same update on one rank.

In `make test`: two cases plus a negative control (a loss that ignores veRL's global batch counts, which the
check must reject) in one pair of launches, about 80 s on 2 cores. The full matrix (maspo and rlp_ppo_clip x the
five aggregation modes, about 2.5 min) is `make test-verl-dp`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlplugins.integrations.verl import smoke_dp

SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
WRONG = "rlp_test_local_norm"
# token-mean needs the global token count, seq-mean-token-mean the global sequence count
CI_CASES = ["maspo:token-mean", "rlp_ppo_clip:seq-mean-token-mean", f"{WRONG}:token-mean"]


def run_dp(cases: str, tmp_path, timeout: int = 1500) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "dp.json"
    env = {**os.environ, "VERL_USE_EXTERNAL_MODULES": "rlp_dp_wrong_loss",
           "PYTHONPATH": os.pathsep.join(p for p in (SUPPORT, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(
        [sys.executable, "-m", "rlplugins.cli", "verl-smoke", "--nproc-per-node", "2", "--dp-cases", cases,
         "--json", str(out)],
        capture_output=True, text=True, timeout=timeout, cwd=tmp_path, env=env,
    )
    return proc, (json.loads(out.read_text()) if out.exists() else {})


def assert_same_update(name: str, case: dict) -> None:
    assert case["max_initial_diff"] == 0.0, name  # both runs start from the same weights
    assert case["max_update"] > 1e-2, name  # the update is far above float noise ...
    assert case["max_param_diff"] <= 1e-6 + 1e-4 * case["max_update"], (name, case["max_param_diff"])  # ... and equal
    assert case["params_ok"], name
    assert not case["metrics_disagreeing"], (name, case["metrics_disagreeing"])
    for key in ("actor/pg_loss", "loss", "grad_norm", "actor/ppo_kl", "actor/pg_clipfrac", "actor/gate_mean"):
        assert key in case["metrics_compared"], (name, key)
    assert case["tokens_per_rank"] == [14, 13], name  # the ranks hold different token counts


def test_two_ranks_match_one_rank_and_a_locally_normalised_loss_does_not(tmp_path):
    proc, result = run_dp(",".join(CI_CASES), tmp_path)
    assert result and "cases" in result, proc.stdout[-3000:] + proc.stderr[-5000:]
    cases = result["cases"]
    assert sorted(cases) == sorted(CI_CASES)
    for name in CI_CASES[:-1]:
        assert_same_update(name, cases[name])
    # the gates and clips were active, so the agreement is not the trivial on-policy one
    maspo = cases["maspo:token-mean"]["metrics_1"]
    assert maspo["actor/gate_mean"] < 0.999 and maspo["actor/pg_clipfrac"] > 0.05
    # pg_loss and loss are the global mini-batch means on both (veRL sums micro-batches, averages ranks)
    for name in CI_CASES[:-1]:
        m1, m2 = cases[name]["metrics_1"], cases[name]["metrics_2"]
        assert m1["actor/pg_loss"] == pytest.approx(m2["actor/pg_loss"], rel=1e-5, abs=1e-6)
        assert m1["loss"] == pytest.approx(m1["actor/pg_loss"], rel=1e-5, abs=1e-6)  # no KL, entropy coeff 0

    # Negative control: the check fails, and only for the wrong loss, by a margin far above float noise.
    wrong = cases[f"{WRONG}:token-mean"]
    assert not wrong["params_ok"] and wrong["max_param_diff"] > 0.1 * wrong["max_update"]
    assert proc.returncode == 1
    assert result["failed_checks"] and all(line.startswith(WRONG) for line in result["failed_checks"])
    assert "checks: FAILED" in proc.stdout
    assert next(line for line in proc.stdout.splitlines() if line.startswith(f"{WRONG}:")).endswith(
        "DISAGREE: actor/pg_loss, grad_norm, loss")  # the 1-rank values are twice the 2-rank ones
    assert wrong["metrics_1"]["grad_norm"] == pytest.approx(2 * wrong["metrics_2"]["grad_norm"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("RLPLUGINS_VERL_SLOW", os.environ.get("RLP_VERL_SLOW")) != "1", reason="full DP matrix: make test-verl-dp")
def test_every_loss_and_aggregation_mode_gives_the_one_rank_update_on_two_ranks(tmp_path):
    proc, result = run_dp("all", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    cases = result["cases"]
    assert len(cases) == len(smoke_dp.LOSSES) * len(smoke_dp.AGG_MODES) == 10
    for name, case in cases.items():
        assert_same_update(name, case)


@pytest.mark.parametrize("text, expected", [
    (None, [None]),
    ("maspo:token-sum", [("maspo", "token-sum")]),
    ("all", [(loss, mode) for loss in smoke_dp.LOSSES for mode in smoke_dp.AGG_MODES]),
])
def test_parse_cases(text, expected):
    assert smoke_dp.parse_cases(text) == expected


@pytest.mark.parametrize("text", ["maspo", "maspo:token_mean", ":token-mean"])
def test_parse_cases_rejects(text):
    with pytest.raises(ValueError, match="LOSS:AGG_MODE"):
        smoke_dp.parse_cases(text)


def test_one_rank_is_refused(tmp_path):
    with pytest.raises(ValueError, match="--nproc-per-node must be >= 2"):
        smoke_dp.run_dp_check([], [None], nproc=1)
