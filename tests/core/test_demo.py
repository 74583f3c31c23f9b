"""Smoke tests of `rlplugins demo` and the toy RLVR loop, through the real code path (CPU, a few seconds)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlplugins import cli
from rlplugins.demo import SCHEMA, LossSpec, parse_losses
from rlplugins.demo.runner import run_parallel
from rlplugins.demo.stats import auc, mean_std, paired, paired_vs, steps_to, summarise_loss, t975
from rlplugins.demo.table import format_tables
from rlplugins.losses import MaspoConfig
from rlplugins.toy_rlvr import ReverseTask, TinyPolicy, TrainConfig, evaluate_sampled, train

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
    assert t975(4) == 2.776 and t975(1000) == 1.96


def test_paired_differences_are_per_seed():
    # A constant per-seed lead has zero spread, however noisy the two series are across seeds.
    p = paired([0.9, 0.2, 0.5], [0.8, 0.1, 0.4])
    assert p["mean"] == pytest.approx(0.1) and p["std"] == pytest.approx(0.0, abs=1e-12)
    assert p["wins"] == 3 and p["n"] == 3 and p["ci95"] == pytest.approx(0.0, abs=1e-12)
    p = paired([0.5, 0.1], [0.4, 0.3])  # diffs +0.1, -0.2: mean -0.05, std 0.3/sqrt(2)
    assert p["mean"] == pytest.approx(-0.05) and p["wins"] == 1 and p["ties"] == 0
    assert p["ci95"] == pytest.approx(12.706 * (0.3 / 2**0.5) / 2**0.5)
    assert paired([0.3], [0.1])["ci95"] is None
    with pytest.raises(ValueError, match="equally long"):
        paired([0.1, 0.2], [0.1])

    def run(label, seed, acc):
        keys = ("final_greedy", "mean_at_k", "pass_at_k", "auc", "final_entropy")
        return {"label": label, "seed": seed, "summary": dict.fromkeys(keys, acc)}

    by_label = {"a": [run("a", 0, 0.5), run("a", 1, 0.7)], "b": [run("b", 1, 0.6), run("b", 0, 0.2)]}
    d = paired_vs(by_label, "b")  # matched by seed, not by position
    assert set(d) == {"a"} and d["a"]["final_greedy"]["diffs"] == pytest.approx([0.3, 0.1])


def test_tables_show_every_loss_and_the_paired_block():
    ms = {"mean": 0.5, "std": 0.0}
    runs = [{"summary": {"final_greedy": 0.5, "mean_at_k": 0.4, "pass_at_k": 0.9, "auc": 0.3, "final_entropy": 1.0,
                         "mean_entropy": 1.2, "steps_to_threshold": None, "gate_mean": None, "gate_min": None,
                         "damp_frac": None, "eff_weight_mean": None, "pg_clipfrac": None, "ppo_kl": None,
                         "ratio_max": None, "final_greedy_by_length": {"1": 0.5}}}]
    summary = {"pg": summarise_loss(runs)}
    assert summary["pg"]["final_greedy"] == ms and summary["pg"]["gate_mean"] is None
    diffs = {"pg": {k: paired([0.6], [0.5]) for k in ("final_greedy", "mean_at_k", "pass_at_k", "auc", "final_entropy")}}
    table = format_tables(summary, diffs, "dual_clip", 0.5, 16)
    assert "— (0/1)" in table and "0.500 ± 0.000" in table and "mean@16" in table
    assert "loss − dual_clip" in table and "+0.100 (1/1)" in table


def test_losses_grammar_and_overrides():
    specs = parse_losses(["maspo:sigma_base=0.2", "maspo:alpha=0", "maspo:beta_pos=0,beta_neg=0,unclipped", "dual_clip"])
    assert [s.label for s in specs] == ["maspo:sigma_base=0.2", "maspo:alpha=0.0", "maspo:beta_pos=0.0,beta_neg=0.0",
                                        "unclipped", "dual_clip"]
    assert specs[0].config() == MaspoConfig(sigma_base=0.2)
    assert specs[1].config() == MaspoConfig(alpha=0.0)
    assert specs[2].config() == MaspoConfig(beta_pos=0.0, beta_neg=0.0)
    assert isinstance(specs[1].config().alpha, float)  # "0" for a float field is 0.0, not int 0
    assert parse_losses("maspo:dual_clip=3,bilateral=true")[0].config() == MaspoConfig(dual_clip=3.0, bilateral=True)
    assert parse_losses("maspo:dual_clip=null")[0].config() == MaspoConfig()
    assert parse_losses("maspo,pg") == [LossSpec("maspo"), LossSpec("pg")]
    for bad, match in [("maspo:sigma_bas=0.2", "sigma_base"), ("maspo:sigma_base=-1", "sigma_base"),
                       ("nope", "unknown loss 'nope'"), ("sigma_base=1,maspo", "before any loss"),
                       ("maspo,maspo", "more than once"), ("", "empty"), ("maspo:bilateral=maybe", "true or false")]:
        with pytest.raises(ValueError, match=match):
            parse_losses(bad)


def test_sampled_eval_counts_mean_and_pass_at_k():
    task = ReverseTask(base=2, max_len=1)  # one binary digit: a uniform policy is right half the time
    torch.manual_seed(0)
    policy = TinyPolicy(task, hidden=4, embed=2)
    with torch.no_grad():
        policy.head.weight.zero_()
        policy.head.bias.zero_()
    prompts, lengths = task.sample_prompts(400, torch.Generator().manual_seed(0))
    res = evaluate_sampled(policy, prompts, lengths, k=4, generator=torch.Generator().manual_seed(1))
    assert res["mean_at_k"] == pytest.approx(0.5, abs=0.04)
    assert res["pass_at_k"] == pytest.approx(1 - 0.5**4, abs=0.03)
    _, ent = policy.generate(prompts, torch.Generator().manual_seed(2), return_entropy=True)
    assert torch.allclose(ent, torch.full_like(ent, math.log(2)))


def test_config_rejects_minibatches_that_split_a_group():
    with pytest.raises(ValueError, match="multiple of minibatches"):
        TrainConfig(prompts_per_step=10, minibatches=4)


def test_cli_quick_run_learns_and_writes_documented_outputs(tmp_path, capsys):
    # Through the real dispatcher; pytest captures stderr, so the progress bar runs off a TTY.
    # In-process (--workers 1): the worker-process path has its own test below.
    losses = ["maspo:sigma_base=0.1", "dual_clip"]  # a narrow gate that visibly acts, and the baseline
    rc = cli.main(["demo", "--quick", "--losses", *losses, "--seeds", "2", "--workers", "1", "--eval-k", "4",
                   "--out-dir", str(tmp_path), "--name", "q"])
    out = capsys.readouterr().out
    assert rc == 0
    label = "maspo:sigma_base=0.1"
    assert f"| {label}" in out and "| dual_clip" in out and "loss − dual_clip" in out and str(tmp_path) in out

    result = json.loads((tmp_path / "q.json").read_text())
    assert result["schema"] == SCHEMA and result["mode"] == "quick"
    for key in ("config", "loss_configs", "losses", "seeds", "summary", "paired_vs_baseline", "runs", "table",
                "random_policy_reward", "task", "eval", "threshold", "wall_s", "machine"):
        assert key in result, key
    assert result["losses"] == [label, "dual_clip"] and result["seeds"] == [0, 1]
    assert result["baseline"] == "dual_clip" and set(result["paired_vs_baseline"]) == {label}
    assert result["loss_configs"][label] == {"name": "maspo", **MaspoConfig(sigma_base=0.1).to_dict()}
    assert result["loss_configs"]["dual_clip"]["dual_clip"] == 3.0  # published defaults otherwise
    assert len(result["runs"]) == 4
    cfg = result["config"]
    steps = cfg["steps"]
    for run in result["runs"]:
        assert run["eval_steps"][0] == 0 and run["eval_steps"][-1] == steps
        assert len(run["eval_reward"]) == len(run["eval_steps"])
        assert len(run["train_reward"]) == steps and len(run["entropy"]) == steps
        assert run["sampled_eval"]["steps"] == run["eval_steps"][-cfg["sampled_evals"]:]
        assert len(run["metrics"]["gate_mean"]) == len(run["eval_steps"]) - 1
        assert run["summary"]["first_minibatch_max_abs_ppo_kl"] == 0.0
        # pass@k >= mean@k for any set of samples; entropy of a 6-way distribution is in [0, log 6]
        assert run["summary"]["pass_at_k"] >= run["summary"]["mean_at_k"]
        assert 0 < min(run["entropy"]) and max(run["entropy"]) <= math.log(6) + 1e-6
    random = result["random_policy_reward"]["mean"]
    for name in result["losses"]:
        s = result["summary"][name]
        # Learning: well above the random initial policy on the held-out set.
        assert s["final_greedy"]["mean"] > max(2 * random, random + 0.05), (name, s["final_greedy"], random)
    for key, d in result["paired_vs_baseline"][label].items():  # the JSON's paired numbers are the per-seed ones
        mine = [r["summary"][key] for r in result["runs"] if r["label"] == label]
        base = [r["summary"][key] for r in result["runs"] if r["label"] == "dual_clip"]
        assert d["diffs"] == pytest.approx([x - y for x, y in zip(mine, base)])
    summ = result["summary"]
    assert summ[label]["gate_mean"]["mean"] < 1.0 and summ[label]["damp_frac"]["mean"] > 0.0
    assert (tmp_path / "q.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_comparison_and_paper_schedule():
    import argparse

    from rlplugins.demo import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([])
    assert [s.label for s in parse_losses(args.losses)] == ["maspo", "unclipped", "dual_clip", "sapo", "pg"]
    assert args.seeds >= 5
    cfg = config_from_args(args)
    assert cfg.minibatches * cfg.epochs == 16 and cfg.eval_k in (8, 16)
    paper = config_from_args(parser.parse_args(["--paper"]))
    assert (paper.minibatches, paper.epochs) == (16, 1)


def test_worker_processes_give_the_in_process_numbers():
    """The default path trains in spawned worker processes; a run must not depend on where it ran."""
    from tqdm import tqdm

    cfg = TrainConfig(minibatches=2, **TINY)
    jobs = [(LossSpec("maspo", {"sigma_base": 0.2}), 0), (LossSpec("pg"), 1)]
    # One worker (one interpreter start-up, the slow part) running both jobs one after the other.
    with tqdm(total=len(jobs) * cfg.steps, disable=True) as bar:
        runs = run_parallel(jobs, cfg, workers=1, threads=1, bar=bar, bar_tty=False)
    assert [(r["label"], r["seed"]) for r in runs] == [("maspo:sigma_base=0.2", 0), ("pg", 1)]
    for (spec, seed), run in zip(jobs, runs):
        ref = train(spec.name, seed, cfg, loss_config=spec.config())
        assert run["eval_reward"] == ref["eval_reward"] and run["train_reward"] == ref["train_reward"]
        assert run["metrics"] == ref["metrics"] and run["entropy"] == ref["entropy"]
        assert run["sampled_eval"] == ref["sampled_eval"]


def test_cli_rejects_unknown_loss(tmp_path, capsys):
    for losses, match in [("maspo,nope", "nope"), ("maspo:sigma_base=0", "sigma_base")]:
        rc = cli.main(["demo", "--quick", "--losses", losses, "--out-dir", str(tmp_path)])
        assert rc == 2
        assert match in capsys.readouterr().err
    rc = cli.main(["demo", "--quick", "--losses", "maspo,pg", "--baseline", "sapo", "--out-dir", str(tmp_path)])
    assert rc == 2 and "--baseline 'sapo'" in capsys.readouterr().err
    assert not (tmp_path / "demo.json").exists()
