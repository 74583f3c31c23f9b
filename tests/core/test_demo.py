"""Smoke tests of `rlplugins demo` and the toy RLVR loop, through the real code path (CPU, a few seconds)."""

from __future__ import annotations

import json

import pytest
import torch

from rlplugins import cli
from rlplugins.demo import SCHEMA, _run_parallel, auc, format_table, mean_std, steps_to, summarise_loss
from rlplugins.toy_rlvr import ReverseTask, TinyPolicy, TrainConfig, train

# A few steps of a small setting: enough for the ratio to move off 1 after the first mini-batch.
TINY = dict(epochs=1, steps=4, prompts_per_step=8, group_size=4, eval_every=2, eval_prompts=32, hidden=16, embed=8)


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _params(policy: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in policy.parameters()])


def test_task_reward_is_exact_match_on_the_answer_positions():
    task = ReverseTask(base=6, max_len=4)
    pad = task.pad
    prompts = torch.tensor([[pad, pad, 1, 2], [3, 4, 5, 0], [pad, pad, pad, 5]])
    lengths = torch.tensor([2, 4, 1])
    good = torch.tensor([[2, 1, 3, 3], [0, 5, 4, 3], [5, 0, 0, 0]])  # positions >= length are ignored
    assert task.reward(prompts, lengths, good).tolist() == [1.0, 1.0, 1.0]
    bad = good.clone()
    bad[0, 1], bad[1, 3] = 0, 4  # one wrong answer digit each
    assert task.reward(prompts, lengths, bad).tolist() == [0.0, 0.0, 1.0]
    sampled, lens = task.sample_prompts(64, torch.Generator().manual_seed(0))
    assert lens.min() >= 1 and lens.max() <= 4
    assert ((sampled == pad).sum(1) == 4 - lens).all()  # left padding, exactly max_len - length PADs


def test_old_log_prob_recompute_matches_generation_distribution():
    """Teacher-forced log-probs equal the step-by-step generation's (both paths share the same GRU)."""
    task = ReverseTask(base=5, max_len=3)
    torch.manual_seed(0)
    policy = TinyPolicy(task, hidden=16, embed=8)
    prompts, _ = task.sample_prompts(16, torch.Generator().manual_seed(1))
    greedy = policy.generate(prompts, None, greedy=True)
    lp = policy.log_probs(prompts, greedy)
    # Greedy tokens are the arg-max of the teacher-forced distribution at every position.
    tokens = torch.cat([policy._context(prompts), greedy[:, :-1]], dim=1)
    out, _ = policy.gru(policy.embed(tokens))
    logits = policy.head(out[:, prompts.shape[1]:])
    assert torch.equal(logits.argmax(-1), greedy)
    assert torch.allclose(lp, torch.log_softmax(logits, -1).max(-1).values, atol=1e-6)


def test_same_seed_same_run_different_seed_different_run():
    cfg = TrainConfig(minibatches=2, **TINY)
    a, b, c = train("maspo", 0, cfg), train("maspo", 0, cfg), train("maspo", 1, cfg)
    assert a["train_reward"] == b["train_reward"] and a["eval_reward"] == b["eval_reward"]
    assert a["metrics"] == b["metrics"]
    assert torch.equal(_params(a["policy"]), _params(b["policy"]))
    assert not torch.equal(_params(a["policy"]), _params(c["policy"]))


def test_first_minibatch_is_on_policy_and_later_ones_are_not():
    run = train("maspo", 0, TrainConfig(minibatches=4, **TINY))
    # old_log_prob is recomputed with the updates' mini-batch shapes, so the first ratio is exactly 1.
    assert run["first_minibatch_ppo_kl"] == [0.0] * TINY["steps"]
    assert all(kl != 0.0 for kl in run["offpolicy_metrics"]["ppo_kl"])
    assert max(run["offpolicy_metrics"]["ratio_max"]) > 1.0


def test_maspo_equals_pg_with_one_on_policy_update_and_differs_off_policy():
    on = TrainConfig(minibatches=1, **TINY)
    maspo, pg = train("maspo", 0, on), train("pg", 0, on)
    # rho == 1 and w == 1 exactly (1.0 * x is exact in IEEE arithmetic): both losses give the gradient
    # -A * grad log pi bit for bit, so the two runs coincide exactly.
    assert maspo["metrics"]["gate_mean"] == [1.0] * on.steps
    assert maspo["train_reward"] == pg["train_reward"] and maspo["eval_reward"] == pg["eval_reward"]
    assert torch.equal(_params(maspo["policy"]), _params(pg["policy"]))

    for off in (TrainConfig(minibatches=4, **TINY), TrainConfig(minibatches=1, **{**TINY, "epochs": 2})):
        maspo, pg = train("maspo", 0, off), train("pg", 0, off)
        diff = (_params(maspo["policy"]) - _params(pg["policy"])).abs().max()
        assert diff > 1e-4, f"maspo and pg coincide off-policy ({off.minibatches} mb x {off.epochs} epochs)"


def test_summary_helpers():
    assert auc([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert auc([0], [0.4]) == 0.4
    assert steps_to([0, 10, 20], [0.1, 0.5, 0.9], 0.5) == 10
    assert steps_to([0, 10, 20], [0.1, 0.2, 0.3], 0.5) is None
    assert mean_std([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2**0.5)}
    assert mean_std([2.0]) == {"mean": 2.0, "std": 0.0}
    runs = [{"summary": {"final_reward": 0.5, "auc": 0.3, "steps_to_threshold": None, "gate_mean": 1.0,
                         "gate_mean_offpolicy": None, "damp_frac_offpolicy": None, "ppo_kl_offpolicy": None,
                         "final_reward_by_length": {"1": 0.5}}}]
    table = format_table({"pg": summarise_loss(runs)}, 0.5)
    assert "— (0/1)" in table and "0.500 ± 0.000" in table


def test_config_rejects_minibatches_that_split_a_group():
    with pytest.raises(ValueError, match="multiple of minibatches"):
        TrainConfig(prompts_per_step=10, minibatches=4)


def test_cli_quick_run_learns_and_writes_documented_outputs(tmp_path, capsys):
    # Through the real dispatcher; pytest captures stderr, so the progress bar runs off a TTY.
    # In-process (--workers 1): the worker-process path has its own test below.
    rc = cli.main(["demo", "--quick", "--losses", "maspo,pg", "--seeds", "1", "--workers", "1",
                   "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| maspo" in out and "| pg" in out and str(tmp_path) in out

    result = json.loads((tmp_path / "demo.json").read_text())
    assert result["schema"] == SCHEMA
    for key in ("config", "loss_configs", "losses", "seeds", "summary", "runs", "table", "random_policy_reward",
                "task", "eval", "threshold", "wall_s"):
        assert key in result, key
    assert result["losses"] == ["maspo", "pg"] and result["seeds"] == [0]
    assert result["loss_configs"]["maspo"]["sigma_base"] == 1.0  # published defaults
    assert len(result["runs"]) == 2
    steps = result["config"]["steps"]
    for run in result["runs"]:
        assert run["eval_steps"][0] == 0 and run["eval_steps"][-1] == steps
        assert len(run["eval_reward"]) == len(run["eval_steps"])
        assert len(run["train_reward"]) == steps
        assert len(run["metrics"]["gate_mean"]) == len(run["eval_steps"]) - 1
        assert run["summary"]["first_minibatch_max_abs_ppo_kl"] == 0.0
    for name in ("maspo", "pg"):
        s = result["summary"][name]
        for key in ("final_reward", "auc", "steps_to_threshold", "gate_mean_offpolicy", "damp_frac_offpolicy",
                    "ppo_kl_offpolicy"):
            assert key in s, key
        # Learning: well above the random initial policy on the held-out set.
        random = result["random_policy_reward"]["mean"]
        assert s["final_reward"]["mean"] > max(2 * random, random + 0.05), (name, s["final_reward"], random)
    assert result["summary"]["pg"]["gate_mean_offpolicy"]["mean"] == 1.0
    assert result["summary"]["maspo"]["gate_mean_offpolicy"]["mean"] < 1.0
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_worker_processes_give_the_in_process_numbers():
    """The default path trains in spawned worker processes; a run must not depend on where it ran."""
    from tqdm import tqdm

    cfg = TrainConfig(minibatches=2, **TINY)
    jobs = [("maspo", 0), ("pg", 1)]
    # One worker (one interpreter start-up, the slow part) running both jobs one after the other.
    with tqdm(total=len(jobs) * cfg.steps, disable=True) as bar:
        runs = _run_parallel(jobs, cfg, workers=1, threads=1, bar=bar, bar_tty=False)
    assert [(r["loss"], r["seed"]) for r in runs] == jobs
    for (name, seed), run in zip(jobs, runs):
        ref = train(name, seed, cfg)
        assert run["eval_reward"] == ref["eval_reward"] and run["train_reward"] == ref["train_reward"]
        assert run["metrics"] == ref["metrics"]


def test_cli_rejects_unknown_loss(tmp_path, capsys):
    rc = cli.main(["demo", "--quick", "--losses", "maspo,nope", "--out-dir", str(tmp_path)])
    assert rc == 2
    assert "nope" in capsys.readouterr().err
    assert not (tmp_path / "demo.json").exists()
