"""Config fields from the command line (TrlParser), clear errors, the version guard, and `rlplugins trl-smoke`."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import pytest

from rlplugins.integrations.trl import (
    SKIP_VERSION_CHECK_ENV,
    SUPPORTED_TRL_VERSION,
    UnsupportedVersionError,
    check_trl_version,
)
from rlplugins.integrations.trl.dpo import SELECTOR_FIELDS, SageDPOConfig
from rlplugins.integrations.trl.grpo import (
    LOSS_FIELDS,
    TRL_LOSS_TYPES,
    RLPluginsGRPOConfig,
    resolve_loss_type,
    rlplugins_loss_types,
)
from rlplugins.losses import MaspoConfig, get_policy_loss, list_policy_losses
from rlplugins.selection import SageConfig
from trl import TrlParser

BASE = ["--output_dir", "/tmp/unused", "--use_cpu", "true", "--report_to", "none"]


def test_every_registered_loss_is_a_loss_type_with_its_fields():
    for name in list_policy_losses():
        loss_type = ("rlp_" + name) if name in TRL_LOSS_TYPES else name
        assert loss_type in rlplugins_loss_types() and resolve_loss_type(loss_type) == name
        assert resolve_loss_type("rlp_" + name) == name
        fields = {f.name for f in dataclasses.fields(get_policy_loss(name).config_cls)}
        assert set(LOSS_FIELDS[name].values()) == fields
        cfg = RLPluginsGRPOConfig(output_dir="/tmp/unused", use_cpu=True, loss_type=loss_type)
        assert cfg.rlplugins_loss_config() == get_policy_loss(name).config_cls()  # defaults carried over
    for trl_type in TRL_LOSS_TYPES:  # TRL's own names stay TRL's
        assert resolve_loss_type(trl_type) is None
        assert RLPluginsGRPOConfig(output_dir="/tmp/unused", use_cpu=True, loss_type=trl_type).rlplugins_loss is None


def test_trl_parser_reads_loss_fields_from_the_command_line():
    (cfg,) = TrlParser((RLPluginsGRPOConfig,)).parse_args_and_config(
        BASE + ["--loss_type", "maspo", "--maspo_alpha", "0.5", "--maspo_variant", "paper", "--maspo_dual_clip", "3.0",
                "--maspo_bilateral", "true", "--loss_normalizer", "grpo"])
    assert cfg.rlplugins_loss == "maspo" and cfg.rlplugins_normalizer == "grpo"
    assert cfg.rlplugins_loss_config() == MaspoConfig(alpha=0.5, variant="paper", dual_clip=3.0, bilateral=True)
    (dpo,) = TrlParser((SageDPOConfig,)).parse_args_and_config(
        BASE + ["--selector", "static_high_margin", "--sage_selection_ratio", "0.3", "--sage_rescore_interval", "4",
                "--beta", "0.2", "--seed", "7"])
    config = dpo.selector_config()
    assert (dpo.selector, config.selection_ratio, config.rescore_interval) == ("static_high_margin", 0.3, 4)
    assert (config.beta, config.seed) == (0.2, 7)  # from the DPO config, not duplicated
    assert set(SELECTOR_FIELDS.values()) == {f.name for f in dataclasses.fields(SageConfig)} - {"beta", "seed"}


@pytest.mark.parametrize("kwargs,match", [
    (dict(loss_type="maspoo"), "neither a TRL loss type.*Did you mean 'maspo'"),
    (dict(loss_type="maspo", maspo_alpha=-1.0), r"MaspoConfig.alpha must be in .*maspo_alpha"),
    (dict(loss_type="grpo", loss_normalizer="dapo"), "applies to rlplugins losses only"),
    (dict(loss_type="maspo", loss_normalizer="token-mean"), "loss_normalizer must be one of"),
    (dict(loss_type="gspo", importance_sampling_level="sequence"), "need 'token'"),
    (dict(loss_type="ppo_clip", delta=2.0), "ppo_clip_dual_clip"),
    (dict(loss_type="maspo", rlplugins_on_nonfinite="ignore"), "rlplugins_on_nonfinite"),
])
def test_config_errors_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RLPluginsGRPOConfig(output_dir="/tmp/unused", use_cpu=True, **kwargs)


def test_plain_grpo_config_with_our_loss_is_refused(tiny_model_dir):
    from rlplugins.integrations.trl.grpo import RLPluginsGRPOTrainer
    from trl import GRPOConfig

    with pytest.raises(TypeError, match="RLPluginsGRPOConfig"):
        RLPluginsGRPOTrainer(model=tiny_model_dir, reward_funcs=lambda **k: [0.0],
                             args=GRPOConfig(output_dir="/tmp/unused", use_cpu=True, loss_type="maspo"))


def test_version_guard(monkeypatch):
    assert check_trl_version() == SUPPORTED_TRL_VERSION
    monkeypatch.delenv(SKIP_VERSION_CHECK_ENV, raising=False)
    with pytest.raises(UnsupportedVersionError) as err:
        check_trl_version("1.15.2")
    assert "1.16.0" in str(err.value) and SKIP_VERSION_CHECK_ENV in str(err.value) and "1.15.2" in str(err.value)
    with pytest.raises(UnsupportedVersionError, match="not installed"):
        _missing(monkeypatch)
    monkeypatch.setenv(SKIP_VERSION_CHECK_ENV, "1")
    assert check_trl_version("1.17.0") == "1.17.0"


def _missing(monkeypatch):
    from rlplugins.integrations.trl import version

    monkeypatch.setattr(version, "installed_trl_version", lambda: None)
    version.check_trl_version()


def test_trl_smoke_command(tmp_path, capsys):
    from rlplugins import cli

    out = tmp_path / "smoke.json"
    assert cli.main(["trl-smoke", "--steps", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trl-smoke ok" in printed and "rlplugins/gate_mean" in printed and "selector/pairs_scored" in printed
    data = json.loads(out.read_text())
    assert [r["step"] for r in data["grpo"]] == [1, 2] and [r["step"] for r in data["dpo"]] == [1, 2]
    assert data["grpo"][1]["rlplugins/ratio_max"] > 1.0  # the second step reuses the rollout (num_iterations=2)
    assert data["dpo"][1]["selector/pairs_observed"] == 8


EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples" / "trl"


def test_example_scripts_parse_their_documented_flags(load_file):
    def _example(name):
        return load_file(name[:-3], EXAMPLES / name)

    script, args, model = _example("train_grpo_maspo.py").parse(
        BASE + ["--model_name_or_path", "some/model", "--dataset_name", "some/data", "--loss_type", "maspo",
                "--maspo_alpha", "0.3", "--loss_normalizer", "dapo", "--num_iterations", "2"])
    assert (args.rlplugins_loss, args.num_iterations, model.model_name_or_path) == ("maspo", 2, "some/model")
    assert script.reward_funcs == ["accuracy_reward"]
    script, args, model = _example("train_dpo_sage.py").parse(
        BASE + ["--model_name_or_path", "some/model", "--dataset_name", "some/data", "--selector", "sage",
                "--sage_selection_ratio", "0.5", "--sage_rescore_interval", "100", "--selector_pass_rate_column",
                "pass_rate", "--offline", "false"])
    assert (args.selector, args.selector_config().rescore_interval, script.offline) == ("sage", 100, False)
