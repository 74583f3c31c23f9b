"""Configuration: Hydra compose of veRL's packaged ppo_trainer with our flags, validate_config, the three
registration routes (``_target_``, entry point, module import), and configuration-time errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import verl
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException

from verl.trainer.ppo.core_algos import get_policy_loss_fn
from verl.utils.config import omega_conf_to_dataclass, validate_config

from rlplugins.losses import MaspoConfig

PL = "actor_rollout_ref.actor.policy_loss"
MASPO_TARGET = "rlplugins.integrations.verl.MaspoPolicyLossConfig"
MASPO_FLAGS = [f"{PL}._target_={MASPO_TARGET}", f"{PL}.loss_mode=maspo", f"+{PL}.alpha=0.5"]


# What any launch script sets (the packaged YAML leaves micro-batch sizes and the model unset).
BASE = [
    "actor_rollout_ref.model.path=/models/any",
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=2",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=2",
]


def compose_ppo(overrides: list[str]):
    """veRL's packaged ppo_trainer config, composed with Hydra as main_ppo does."""
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        return compose("ppo_trainer", overrides=[*BASE, *overrides])


def test_issue_flags_compose_and_pass_validate_config():
    cfg = compose_ppo(MASPO_FLAGS + [f"+{PL}.beta_neg=0.05", f"+{PL}.variant=paper"])
    validate_config(cfg, use_reference_policy=False, use_critic=False)  # veRL's driver-side check
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)  # what each actor worker builds
    from rlplugins.integrations.verl import MaspoPolicyLossConfig
    from verl.workers.config import PolicyLossConfig

    pl = actor.policy_loss
    assert isinstance(pl, MaspoPolicyLossConfig) and isinstance(pl, PolicyLossConfig)
    assert pl.to_core() == MaspoConfig(alpha=0.5, beta_neg=0.05, variant="paper")
    assert get_policy_loss_fn(pl.loss_mode).__module__ == "rlplugins.integrations.verl.losses"


def test_every_maspo_field_is_a_declared_field_with_the_core_default():
    from rlplugins.integrations.verl import MaspoPolicyLossConfig

    pl = MaspoPolicyLossConfig()
    assert pl.loss_mode == "maspo"
    assert pl.to_core() == MaspoConfig()
    flags = [f"+{PL}.{name}={value!r}" if isinstance(value, str) else f"+{PL}.{name}={value}"
             for name, value in MaspoConfig().to_dict().items() if value is not None]
    cfg = compose_ppo([f"{PL}._target_={MASPO_TARGET}", f"{PL}.loss_mode=maspo", *flags])
    assert omega_conf_to_dataclass(cfg.actor_rollout_ref.actor).policy_loss.to_core() == MaspoConfig()


def test_family_modes_compose_with_veRLs_own_fields():
    cfg = compose_ppo([f"{PL}.loss_mode=rlp_sapo", "actor_rollout_ref.actor.tau_pos=0.8",
                       "actor_rollout_ref.actor.loss_agg_mode=token-mean"])
    validate_config(cfg, use_reference_policy=False, use_critic=False)
    actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    assert actor.tau_pos == 0.8 and get_policy_loss_fn("rlp_sapo") is not None


def _instantiate_error(overrides: list[str]) -> str:
    cfg = compose_ppo(overrides)
    with pytest.raises(InstantiationException) as info:
        omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
    return str(info.value)


def test_misspelt_field_fails_at_configuration_time_naming_the_right_flag():
    message = _instantiate_error([f"{PL}._target_={MASPO_TARGET}", f"{PL}.loss_mode=maspo", f"+{PL}.alhpa=0.5"])
    assert "'alhpa'" in message and f"+{PL}.alpha" in message


def test_misspelt_loss_mode_fails_at_configuration_time():
    message = _instantiate_error([f"{PL}._target_={MASPO_TARGET}", f"{PL}.loss_mode=mapso"])
    assert "loss_mode='mapso'" in message and f"{PL}.loss_mode=maspo" in message


def test_forgotten_loss_mode_is_not_silently_vanilla():
    # the packaged YAML sets loss_mode: vanilla; our config must not let MASPO's fields be ignored
    message = _instantiate_error([f"{PL}._target_={MASPO_TARGET}", f"+{PL}.alpha=0.5"])
    assert "loss_mode='vanilla'" in message


def test_out_of_range_value_names_the_field():
    message = _instantiate_error([*MASPO_FLAGS[:2], f"+{PL}.sigma_base=-1"])
    assert "sigma_base" in message and "invalid MASPO parameter" in message


def test_without_target_veRL_rejects_our_keys():
    # documents why _target_ is needed (veRL's own PolicyLossConfig declares no MASPO fields)
    message = _instantiate_error([f"{PL}.loss_mode=maspo", f"+{PL}.alpha=0.5"])
    assert "alpha" in message


def test_unsupported_version_message_says_what_to_install():
    from rlplugins.integrations.verl.version import UnsupportedVersionError, check_verl_version

    with pytest.raises(UnsupportedVersionError, match=r"pip install 'verl\[verl-core\]==0.9.1'") as info:
        check_verl_version("0.8.0")
    assert "veRL 0.8.0 is installed" in str(info.value)
    assert check_verl_version() == "0.9.1"


# ------------------------------------------------------------------------------- registration routes
# Each route needs a fresh interpreter (entry points run at `import verl`); they are grouped to keep the
# number of veRL start-ups small.


def test_target_and_module_import_routes_and_version_gate_without_entry_points(run_python):
    code = f"""
import os, sys, importlib
import rlplugins, rlplugins.losses, rlplugins.selection.prompt_groups, rlplugins.integrations.verl
import rlplugins.integrations.verl.smoke
print("1 verl imported by rlplugins:", "verl" in sys.modules)
import verl
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R
print("2 registered after import verl:", "maspo" in R)            # entry points are disabled
from hydra import compose, initialize_config_dir
from verl.utils.config import omega_conf_to_dataclass
with initialize_config_dir(config_dir=os.path.join(os.path.dirname(verl.__file__), "trainer", "config"), version_base=None):
    cfg = compose("ppo_trainer", overrides={BASE + MASPO_FLAGS!r})
actor = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)      # Hydra imports the _target_'s module
print("3 _target_ route:", "maspo" in R, type(actor.policy_loss).__name__, actor.policy_loss.alpha)
for name in ("maspo", "rlp_sapo", "rlp_ppo_clip"):
    del R[name]
importlib.reload(rlplugins.integrations.verl)    # external_lib / a user import inside a veRL process
print("4 module import route:", sorted(n for n in R if n in ("maspo", "rlp_sapo", "rlp_ppo_clip")))
verl.__version__ = "0.10.0"                       # what a user with a newer veRL would have
try:
    omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
except Exception as exc:
    print("5 ERROR:", exc)
"""
    out = run_python(code, env={"VERL_USE_EXTERNAL_PLUGINS": "none"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "1 verl imported by rlplugins: False" in out.stdout
    assert "2 registered after import verl: False" in out.stdout
    assert "3 _target_ route: True MaspoPolicyLossConfig 0.5" in out.stdout
    assert "4 module import route: ['maspo', 'rlp_ppo_clip', 'rlp_sapo']" in out.stdout
    # the version error surfaces through Hydra (raised by the constructor, not hidden by _target_ lookup)
    assert "5 ERROR:" in out.stdout and "veRL 0.10.0 is installed" in out.stdout
    assert "pip install 'verl[verl-core]==0.9.1'" in out.stdout


def test_entry_point_registers_on_import_verl(run_python):
    code = """
import verl
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R
print(sorted(k for k in R if k in ("maspo", "rlp_sapo", "rlp_ppo_clip")), R["maspo"].__module__)
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "['maspo', 'rlp_ppo_clip', 'rlp_sapo'] rlplugins.integrations.verl.losses" in out.stdout


def test_verl_use_external_modules_route(run_python):
    code = """
import verl
from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY as R
print("registered:", sorted(k for k in R if k in ("maspo", "rlp_sapo", "rlp_ppo_clip")))
"""
    out = run_python(code, env={"VERL_USE_EXTERNAL_PLUGINS": "none", "VERL_USE_EXTERNAL_MODULES": "rlplugins.integrations.verl"})
    assert out.returncode == 0, out.stderr[-3000:]
    assert "registered: ['maspo', 'rlp_ppo_clip', 'rlp_sapo']" in out.stdout


def test_file_path_reexecution_of_the_losses_module_stays_idempotent(monkeypatch):
    # veRL's load_module(<file path>) executes a module again under a fresh name: registering from that copy
    # must replace our own entries (marked as ours), not fail, and leave veRL's losses alone.
    import rlplugins.integrations.verl.losses as losses
    from verl.trainer.ppo import core_algos
    from verl.utils.import_utils import load_module

    monkeypatch.setattr(core_algos, "POLICY_LOSS_REGISTRY", dict(core_algos.POLICY_LOSS_REGISTRY))
    builtin_sapo = core_algos.POLICY_LOSS_REGISTRY["sapo"]
    copy = load_module(losses.__file__)
    assert copy is not losses
    assert copy.register_policy_losses() == list(losses.VERL_POLICY_LOSSES)
    assert core_algos.POLICY_LOSS_REGISTRY["maspo"] is copy.maspo_policy_loss
    assert losses.register_policy_losses() == list(losses.VERL_POLICY_LOSSES)
    assert core_algos.POLICY_LOSS_REGISTRY["maspo"] is losses.maspo_policy_loss
    assert core_algos.POLICY_LOSS_REGISTRY["sapo"] is builtin_sapo


def test_entry_point_is_lazy_and_a_lookup_still_finds_every_loss(run_python):
    """``import verl`` with the entry point enabled (the default) loads our plugin but not veRL's core_algos
    (nor its actor config); the first lookup of a loss by name imports core_algos, which registers ours."""
    code = """
import sys
import verl
print("plugin loaded:", "rlplugins.integrations.verl.plugin" in sys.modules)
print("core_algos:", "verl.trainer.ppo.core_algos" in sys.modules)
print("actor config:", "verl.workers.config.actor" in sys.modules)
print("our losses module:", "rlplugins.integrations.verl.losses" in sys.modules)
from verl.trainer.ppo.core_algos import get_policy_loss_fn
from rlplugins.losses import list_policy_losses
names = ["maspo", "rlp_sapo", "rlp_ppo_clip", *("rlp_" + n for n in list_policy_losses())]
print("lookup:", all(get_policy_loss_fn(n).__module__ == "rlplugins.integrations.verl.losses" for n in names))
from verl.workers.config import FSDPActorConfig, PolicyLossConfig
try:
    FSDPActorConfig(strategy="fsdp2", rollout_n=1, ppo_micro_batch_size_per_gpu=2, tau_pos=-1.0,
                    policy_loss=PolicyLossConfig(loss_mode="rlp_sapo"))
except ValueError as exc:
    print("actor check:", exc)
"""
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "plugin loaded: True" in out.stdout
    assert "core_algos: False" in out.stdout and "actor config: False" in out.stdout
    assert "our losses module: False" in out.stdout
    assert "lookup: True" in out.stdout
    assert "actor check:" in out.stdout and "actor_rollout_ref.actor.tau_pos" in out.stdout
