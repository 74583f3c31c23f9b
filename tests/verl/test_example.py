"""examples/verl/run_maspo_grpo.sh: its exact flags compose with veRL's ppo_trainer and pass validate_config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

from verl.trainer.ppo.v1.trainer_base import PPOTrainer
from verl.utils.config import omega_conf_to_dataclass, validate_config

from rlplugins.integrations.verl.sampler import SamplerOptions
from rlplugins.losses import MaspoConfig
from rlplugins.selection.prompt_groups import PromptGroupSelectorConfig

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "verl" / "run_maspo_grpo.sh"


def script_overrides(tmp_path: Path) -> list[str]:
    """Run the script with a stand-in python3 on PATH that records the arguments main_ppo would get."""
    fake = tmp_path / "bin" / "python3"
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "args.txt"
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "ARGS_OUT": str(out)}
    subprocess.run(["bash", str(SCRIPT)], check=True, env=env, timeout=60)
    args = out.read_text().splitlines()
    assert args[:2] == ["-m", "verl.trainer.main_ppo"]
    return args[2:]


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


def test_example_spells_out_every_rlplugins_field(tmp_path):
    overrides = script_overrides(tmp_path)
    keys = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    pl, kw = "actor_rollout_ref.actor.policy_loss.", "trainer.v1.sampler.sampler_kwargs."
    assert {pl + name for name in [*MaspoConfig.field_names(), "on_nonfinite"]} <= keys
    sampler_fields = [*SamplerOptions.__dataclass_fields__, *PromptGroupSelectorConfig.__dataclass_fields__]
    assert {kw + name for name in sampler_fields} <= keys


def test_print_loss_flags_feeds_the_smoke_run():
    out = subprocess.run(["bash", str(SCRIPT), "--print-loss-flags"], capture_output=True, text=True, check=True)
    flags = out.stdout.split()
    assert "actor_rollout_ref.actor.policy_loss.loss_mode=maspo" in flags
    assert all("policy_loss" in f or "loss_agg_mode" in f for f in flags)
