"""examples/verl/*.sh: their exact flags compose with veRL's ppo_trainer and pass validate_config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils.config import omega_conf_to_dataclass, validate_config

from rlplugins.integrations.verl.sampler import SamplerOptions
from rlplugins.losses import MaspoConfig
from rlplugins.selection.prompt_groups import PromptGroupSelectorConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "verl"
GSM8K = EXAMPLES / "run_maspo_grpo.sh"
PAPER = EXAMPLES / "run_maspo_paper.sh"
PL = "actor_rollout_ref.actor.policy_loss."
SAMPLER_KW = "trainer.v1.sampler.sampler_kwargs."


def script_overrides(tmp_path: Path, script: Path = GSM8K, **env: str) -> list[str]:
    """Run the script with a stand-in python3 on PATH that records the arguments main_ppo would get."""
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "args.txt"
    run_env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "ARGS_OUT": str(out), **env}
    subprocess.run(["bash", str(script)], check=True, env=run_env, timeout=60)
    args = out.read_text().splitlines()
    assert args[:2] == ["-m", "verl.trainer.main_ppo"]
    return args[2:]


def as_dict(overrides: list[str]) -> dict[str, str]:
    return {o.split("=", 1)[0].lstrip("+"): o.split("=", 1)[1] for o in overrides}


def test_example_flags_validate(tmp_path, ppo_config, fake_tq):
    overrides = script_overrides(tmp_path)
    cfg = ppo_config(overrides)
    validate_config(cfg, use_reference_policy=True, use_critic=False)
    policy_loss = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).policy_loss
    assert policy_loss.to_core() == MaspoConfig()  # the script spells out every default
    trainer = SimpleNamespace(config=cfg, trainer_mode="sync", _add_prompts_to_generate=lambda n: n)
    buffer = PPOTrainer._build_replay_buffer(trainer)
    assert type(buffer).__name__ == "PromptGroupReplayBuffer"
    assert buffer.options.oversample == 1.25 and buffer.selector.config.tier_edges == (0.3333, 0.6667)
    assert cfg.actor_rollout_ref.actor.use_kl_loss is True and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.001


def test_example_kl_and_selector_are_switches(tmp_path, ppo_config, fake_tq):
    overrides = script_overrides(tmp_path, KL_LOSS_COEF="0", SELECTOR="none")
    assert not any(o.lstrip("+").startswith("trainer.v1.sampler.") for o in overrides)
    cfg = ppo_config(overrides)
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    assert cfg.actor_rollout_ref.actor.use_kl_loss is False
    assert not cfg.trainer.v1.sampler.custom_sampler.get("path")  # veRL's own replay buffer
    with pytest.raises(subprocess.CalledProcessError):
        script_overrides(tmp_path, SELECTOR="sage")


def test_example_spells_out_every_rlplugins_field(tmp_path):
    overrides = script_overrides(tmp_path)
    keys = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    assert {PL + name for name in [*MaspoConfig.field_names(), "on_nonfinite"]} <= keys
    sampler_fields = [*SamplerOptions.__dataclass_fields__, *PromptGroupSelectorConfig.__dataclass_fields__]
    assert {SAMPLER_KW + name for name in sampler_fields} <= keys


@pytest.mark.parametrize("loss", ["maspo", "grpo"])
def test_paper_recipe_validates(tmp_path, ppo_config, loss):
    overrides = script_overrides(tmp_path, PAPER, LOSS=loss)
    cfg = ppo_config(overrides)
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    actor = cfg.actor_rollout_ref.actor
    # The published recipe: 512 prompts per batch, mini-batches of 32 (16 updates), one epoch, no KL, no entropy.
    assert cfg.data.train_batch_size == 512 and actor.ppo_mini_batch_size == 32 and actor.ppo_epochs == 1
    assert actor.use_kl_loss is False and cfg.algorithm.use_kl_in_reward is False and actor.entropy_coeff == 0
    assert actor.loss_agg_mode == "token-mean" and cfg.algorithm.adv_estimator == "grpo"
    assert cfg.actor_rollout_ref.model.path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    assert "trainer.v1.sampler.custom_sampler.path" not in as_dict(overrides)  # no data selection in the recipe
    policy_loss = omega_conf_to_dataclass(actor).policy_loss
    if loss == "maspo":
        assert policy_loss.loss_mode == "maspo" and policy_loss.to_core() == MaspoConfig()
        assert {PL + name for name in MaspoConfig.field_names()} <= set(as_dict(overrides))
    else:  # veRL's vanilla: PPO clip 0.2 with the always-on dual clip c = 3
        assert policy_loss.loss_mode == "vanilla"
        assert (actor.clip_ratio_low, actor.clip_ratio_high, actor.clip_ratio_c) == (0.2, 0.2, 3.0)


def test_paper_baseline_differs_only_in_the_loss(tmp_path):
    def non_loss(loss: str) -> dict[str, str]:
        loss_keys = set(as_dict(loss_flags(PAPER, LOSS=loss)))
        return {k: v for k, v in as_dict(script_overrides(tmp_path, PAPER, LOSS=loss)).items()
                if k not in loss_keys and k != "trainer.experiment_name" and k != "trainer.default_local_dir"}

    assert non_loss("maspo") == non_loss("grpo")
    with pytest.raises(subprocess.CalledProcessError):
        script_overrides(tmp_path, PAPER, LOSS="ppo")


def loss_flags(script: Path, **env: str) -> list[str]:
    out = subprocess.run(["bash", str(script), "--print-loss-flags"], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return out.stdout.split()


@pytest.mark.parametrize("script,env,mode", [(GSM8K, {}, "maspo"), (PAPER, {"LOSS": "maspo"}, "maspo"),
                                             (PAPER, {"LOSS": "grpo"}, "vanilla")])
def test_print_loss_flags_feeds_the_smoke_run(script, env, mode):
    from rlplugins.integrations.verl import smoke

    flags = loss_flags(script, **env)
    assert f"{PL}loss_mode={mode}" in flags
    assert all("policy_loss" in f or "loss_agg_mode" in f or "clip_ratio" in f for f in flags)
    kept, ignored = smoke.split_overrides(flags)
    assert kept == flags and ignored == []  # the smoke run applies every loss flag as given


@pytest.mark.parametrize("mode,clipfrac,fails", [("vanilla", 1.0, False), ("vanilla", 0.5, True), ("maspo", 1.0, True)])
def test_smoke_accepts_a_zero_gradient_only_when_a_hard_clip_clipped_everything(mode, clipfrac, fails, capsys):
    from rlplugins.integrations.verl import smoke

    step1 = {"actor/ppo_kl": 0.0, "grad_norm": 3.0, "actor/pg_clipfrac": 0.0}
    step2 = {"actor/ppo_kl": 0.25, "grad_norm": 0.0, "actor/pg_clipfrac": clipfrac}
    result = {"loss_mode": mode, "loss_fn": "f", "policy_loss_config": "C", "steps": [step1, step2]}
    failed = smoke._report(result, [])
    assert (failed == ["grad_norm is not > 0 at step 2"]) if fails else (failed == [])
