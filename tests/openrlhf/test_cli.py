"""The wrapper CLIs: they run OpenRLHF's real CLI modules (runpy) and reach train(args) with our choices in args.

train() itself needs GPUs (PPO) or a DeepSpeed launch (DPO): the tests stop at its first call,
``get_strategy(args)``, and look at the args OpenRLHF's own parser and post-processing produced.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import openrlhf.datasets
import openrlhf.trainer.dpo_trainer as dpo_trainer
import openrlhf.trainer.ray.ppo_actor as ppo_actor
import openrlhf.utils
import openrlhf.utils.config as openrlhf_config
import ray
from rlplugins.integrations.openrlhf import train_dpo, train_ppo_ray
from rlplugins.integrations.openrlhf.loss_flags import FlagError, parse_loss_flags
from rlplugins.integrations.openrlhf.selector_flags import parse_selector_flags

GRPO = ["--actor.model_name_or_path", "/nonexistent/model", "--reward.remote_url", "http://127.0.0.1:1/reward",
        "--algo.advantage.estimator", "group_norm", "--rollout.n_samples_per_prompt", "4",
        "--rollout.batch_size", "8", "--rollout.micro_batch_size", "2", "--train.batch_size", "8",
        "--train.micro_batch_size", "2", "--algo.kl.init_coef", "0", "--data.prompt_dataset", "/nonexistent/data"]
DPO = ["--model.model_name_or_path", "/nonexistent/model", "--data.dataset", "/nonexistent/data",
       "--train.batch_size", "8", "--train.micro_batch_size", "2", "--model.beta", "0.2", "--train.seed", "7"]


class ReachedTrain(Exception):
    def __init__(self, args):
        super().__init__("train(args) reached")
        self.train_args = args


@pytest.fixture
def cli(monkeypatch):
    """Run a wrapper's main(argv); return the args OpenRLHF's train() received. Patches are undone after."""
    for module, name in [(openrlhf_config, "hierarchize"), (ppo_actor, "PolicyModelActor"),
                         (dpo_trainer, "DPOTrainer"), (openrlhf.datasets, "RewardDataset")]:
        monkeypatch.setattr(module, name, getattr(module, name))
    monkeypatch.setattr(sys, "argv", list(sys.argv))

    def stop(args):
        raise ReachedTrain(args)

    monkeypatch.setattr(openrlhf.utils, "get_strategy", stop)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)  # train_ppo_ray's train() would start Ray first

    def run(main, argv):
        with pytest.raises(ReachedTrain) as reached:
            main(argv)
        return reached.value.train_args

    return run


def test_ppo_wrapper_puts_maspo_into_the_args_and_swaps_the_actor(cli):
    from rlplugins.integrations.openrlhf.ray_actor import RemotePolicyModelActor

    args = cli(train_ppo_ray.main, GRPO + ["--actor.policy_loss_type", "maspo", "--maspo.alpha", "0.5",
                                           "--maspo.variant", "paper", "--maspo.bilateral", "true",
                                           "--actor.dual_clip", "3"])
    assert args.actor.policy_loss_type == "maspo"  # past the CLI's choices=["ppo", "gspo"]
    assert vars(args.rlplugins) == {"policy_loss": "maspo", "on_nonfinite": "raise",
                                    "overrides": {"alpha": 0.5, "variant": "paper", "bilateral": True}}
    assert args.actor.dual_clip == 3.0 and args.actor.eps_clip_low_high == (0.2, 0.2)  # OpenRLHF's own flags
    assert args.algo.advantage.estimator == "group_norm"  # the rest is OpenRLHF's parse, untouched
    assert ppo_actor.PolicyModelActor is RemotePolicyModelActor


@pytest.mark.parametrize("native", ["ppo", "gspo"])
def test_ppo_wrapper_passes_native_losses_through(cli, native):
    original_actor = ppo_actor.PolicyModelActor
    args = cli(train_ppo_ray.main, GRPO + ["--actor.policy_loss_type", native])
    assert args.actor.policy_loss_type == native and not hasattr(args, "rlplugins")
    assert ppo_actor.PolicyModelActor is original_actor


def test_dpo_wrapper_installs_sage(cli):
    from rlplugins.integrations.openrlhf.dpo_trainer import SageDPOTrainer

    args = cli(train_dpo.main, DPO + ["--selector", "sage", "--sage.selection_ratio", "0.25",
                                      "--sage.rescore_interval", "4", "--selector.pass_rate_key", "pass_rate"])
    assert args.rlplugins_selection.name == "sage"
    assert args.rlplugins_selection.overrides == {"selection_ratio": 0.25, "rescore_interval": 4}
    assert args.rlplugins_selection.pass_rate_key == "pass_rate"
    assert args.model.beta == 0.2 and args.train.seed == 7  # the selector takes beta and seed from these
    assert dpo_trainer.DPOTrainer is SageDPOTrainer
    assert openrlhf.datasets.RewardDataset.__name__ == "RewardDatasetWith_pass_rate"


def test_dpo_wrapper_without_selector_is_plain_openrlhf(cli):
    original = dpo_trainer.DPOTrainer
    args = cli(train_dpo.main, DPO)
    assert not hasattr(args, "rlplugins_selection") and dpo_trainer.DPOTrainer is original


@pytest.mark.parametrize("argv,message", [
    (["--actor.policy_loss_type", "mapso"], "'mapso' is not a policy loss. Did you mean maspo?"),
    (["--actor.policy_loss_type", "maspo", "--maspo.alpah", "1"], "unknown flag --maspo.alpah. Did you mean --maspo.alpha?"),
    (["--actor.policy_loss_type", "maspo", "--sapo.tau_pos", "2"], "--sapo.tau_pos is a parameter of sapo"),
    (["--maspo.alpha", "0.5"], "add --actor.policy_loss_type maspo"),
    (["--actor.policy_loss_type", "maspo", "--maspo.sigma_high", "0.5"], "MaspoConfig.sigma_high must be in"),
    (["--actor.policy_loss_type", "maspo", "--maspo.alpha", "x"], "invalid float value: 'x'"),
    (["--actor.policy_loss_type", "maspo", "--maspo.bilateral", "maybe"], "expected true or false"),
    (["--actor.policy_loss_type", "maspo", "--maspo.dual_clip", "3"], "use --actor.dual_clip"),
    (["--actor.policy_loss_type", "sapo", "--actor.eps_clip", "0.3"], "--actor.eps_clip has no effect"),
    (["--actor.policy_loss_type", "pg", "--actor.dual_clip", "3"], "--actor.dual_clip has no effect"),
    (["--actor.policy_loss_type", "clip_higher"], "--actor.policy_loss_type ppo --actor.eps_clip_low_high 0.2 0.28"),
    (["--actor.policy_loss_type", "ppo", "--rlplugins.on_nonfinite", "mask"], "applies to rlplugins losses only"),
])
def test_ppo_wrapper_rejects_bad_flags(argv, message, capsys):
    with pytest.raises(FlagError, match=None) as err:
        parse_loss_flags(GRPO + argv)
    assert message in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        train_ppo_ray.main(GRPO + argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_openrlhf_still_rejects_its_own_bad_flags(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_ppo_ray.main(GRPO + ["--actor.policy_loss_type", "maspo", "--actor.loss_agg_mode", "token-sum"])
    assert exit_.value.code == 2 and "invalid choice: 'token-sum'" in capsys.readouterr().err


def test_cispo_eps_validated_against_openrlhf_clip_flags(cli, capsys):
    with pytest.raises(SystemExit):
        train_ppo_ray.main(GRPO + ["--actor.policy_loss_type", "cispo", "--actor.eps_clip_low_high", "1.5", "4"])
    assert "CispoConfig.eps_low must be in [0, 1], got 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--selector", "sag"], "'sag' is not a selector. Did you mean sage?"),
    (["--sage.selection_ratio", "0.5"], "needs --selector NAME"),
    (["--selector", "sage", "--sage.selection_ratio", "1.5"], "selection_ratio"),
    (["--selector", "sage", "--sage.beta", "0.3"], "use --model.beta"),
    (["--selector", "sage", "--sage.seed", "3"], "use --train.seed"),
    (["--selector", "sage", "--sage.selectoin_ratio", "0.5"], "Did you mean --sage.selection_ratio?"),
    (["--selector", "sage", "--sage.score_variant", "token_curvature"], "not supported by the OpenRLHF adapter"),
    (["--selector", "sage", "--selector.pass_rate_key", "a", "--selector.difficulty_key", "b"], "not both"),
])
def test_dpo_wrapper_rejects_bad_flags(argv, message, capsys):
    with pytest.raises(FlagError) as err:
        parse_selector_flags(DPO + argv)
    assert message in str(err.value)
    with pytest.raises(SystemExit) as exit_:
        train_dpo.main(DPO + argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_every_selector_name_parses():
    from rlplugins.selection import SELECTOR_NAMES

    for name in SELECTOR_NAMES:
        extra = ["--selector.pass_rate_key", "pass_rate"] if name == "selective_dpo" else []  # it needs one
        spec, rest = parse_selector_flags(DPO + ["--selector", name, *extra])
        assert spec.name == name and rest == DPO


def test_help_lists_our_flags(cli, capsys):
    with pytest.raises(SystemExit) as exit_:
        train_ppo_ray.main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "--maspo.sigma_base" in out and "--actor.policy_loss_type" in out
    with pytest.raises(SystemExit):
        train_dpo.main(["--help"])
    out = capsys.readouterr().out
    assert "--sage.selection_ratio" in out and "--selector {sage," in out and "--model.beta" in out


EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", "openrlhf")


def example_args(script: str, **env: str) -> list[str]:
    proc = subprocess.run(["bash", os.path.join(EXAMPLES, script)], env={**os.environ, "DRY_RUN": "1", **env},
                          capture_output=True, check=True)
    return proc.stdout.decode().split("\0")[:-1]


@pytest.mark.parametrize("script,loss", [("train_grpo_maspo.sh", "maspo"), ("train_grpo_sapo.sh", "sapo")])
def test_ppo_examples_parse(cli, script, loss):
    args = cli(train_ppo_ray.main, example_args(script))
    assert args.actor.policy_loss_type == loss and args.rlplugins.policy_loss == loss


def test_dpo_example_parses(cli):
    args = cli(train_dpo.main, example_args("train_dpo_sage.sh"))
    assert args.rlplugins_selection.name == "sage" and args.rlplugins_selection.pass_rate_key == "pass_rate"


@pytest.mark.parametrize("loss", ["maspo", "grpo"])
def test_paper_recipe_parses(cli, loss):
    from rlplugins.losses import MaspoConfig

    args = cli(train_ppo_ray.main, example_args("train_maspo_paper.sh", LOSS=loss))
    # The published recipe: 512 prompts per batch, mini-batches of 32 prompts (16 steps), one epoch, no KL or entropy.
    g = args.rollout.n_samples_per_prompt
    assert args.rollout.batch_size == 512 and args.train.batch_size == 32 * g and args.train.max_epochs == 1
    assert args.rollout.batch_size * g // args.train.batch_size == 16
    assert args.algo.kl.init_coef == 0 and not args.algo.kl.use_loss and args.actor.entropy_coef is None
    assert args.actor.loss_agg_mode == "token-mean" and args.algo.advantage.estimator == "group_norm"
    assert args.actor.model_name_or_path == "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"
    if loss == "maspo":
        assert args.actor.policy_loss_type == "maspo" and args.actor.dual_clip is None
        spelt = MaspoConfig(**args.rlplugins.overrides)
        assert spelt == MaspoConfig() and set(args.rlplugins.overrides) == set(MaspoConfig.field_names()) - {"dual_clip"}
    else:  # OpenRLHF's own PPO clip with dual clip 3: the official GRPO baseline
        assert args.actor.policy_loss_type == "ppo" and not hasattr(args, "rlplugins")
        assert tuple(args.actor.eps_clip_low_high) == (0.2, 0.2) and args.actor.dual_clip == 3.0


def test_paper_baseline_differs_only_in_the_loss():
    def rest(loss: str) -> list[str]:
        argv = example_args("train_maspo_paper.sh", LOSS=loss)
        out = argv[argv.index("--actor.loss_agg_mode"):]  # the loss flags come first
        i = out.index("--ckpt.output_dir")
        return out[:i] + out[i + 2:]

    assert rest("maspo") == rest("grpo")
