"""The version guard: any OpenRLHF other than 0.11.2 is refused with both versions named, before import."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rlplugins.integrations.openrlhf import version
from rlplugins.integrations.openrlhf.version import (
    SKIP_VERSION_CHECK_ENV,
    SUPPORTED_OPENRLHF_VERSION,
    UnsupportedVersionError,
    check_openrlhf_version,
)


def test_installed_version_is_the_supported_one():
    assert SUPPORTED_OPENRLHF_VERSION == "0.11.2"
    assert check_openrlhf_version() == "0.11.2"


@pytest.mark.parametrize("other", ["0.11.0", "0.11.3", "0.10.1"])
def test_other_versions_are_refused_naming_both(other, monkeypatch):
    monkeypatch.delenv(SKIP_VERSION_CHECK_ENV, raising=False)
    with pytest.raises(UnsupportedVersionError) as err:
        check_openrlhf_version(other)
    message = str(err.value)
    assert f"supports OpenRLHF 0.11.2 only, but OpenRLHF {other} is installed" in message
    assert "pip install 'openrlhf==0.11.2'" in message
    monkeypatch.setenv(SKIP_VERSION_CHECK_ENV, "1")
    assert check_openrlhf_version(other) == other


def test_missing_openrlhf_is_named(monkeypatch):
    monkeypatch.setattr(version, "installed_openrlhf_version", lambda: None)
    with pytest.raises(UnsupportedVersionError, match="needs OpenRLHF 0.11.2, but OpenRLHF is not installed"):
        check_openrlhf_version()


GUARDED = ["policy_loss", "ray_actor", "dpo_trainer", "dpo_sampler", "dpo_dataset"]


def test_adapter_refuses_to_load_on_another_version():
    """In a fresh interpreter that reports OpenRLHF 0.11.0, every module that touches OpenRLHF refuses to load
    (before importing it), and the wrapper CLIs exit with status 2 and the message."""
    code = (
        "import importlib.metadata as md, sys\n"
        "real = md.version\n"
        "md.version = lambda name: '0.11.0' if name == 'openrlhf' else real(name)\n"
        "from rlplugins.integrations.openrlhf.version import UnsupportedVersionError\n"
        f"for mod in {GUARDED!r}:\n"
        "    try:\n"
        "        __import__('rlplugins.integrations.openrlhf.' + mod)\n"
        "    except UnsupportedVersionError as exc:\n"
        "        print(mod, 'refused:', exc)\n"
        "assert not any(m.startswith('openrlhf') for m in sys.modules)\n"
        "from rlplugins.integrations.openrlhf import train_dpo, train_ppo_ray\n"
        "for main, argv in [(train_ppo_ray.main, ['--actor.policy_loss_type', 'maspo']),\n"
        "                   (train_dpo.main, ['--selector', 'sage'])]:\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as exc:\n"
        "        print('exit', exc.code)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    refusal = "supports OpenRLHF 0.11.2 only, but OpenRLHF 0.11.0 is installed"
    for module in GUARDED:
        assert f"{module} refused: rlplugins.integrations.openrlhf {refusal}" in proc.stdout
    assert proc.stdout.count("exit 2") == 2 and proc.stderr.count(refusal) == 2


def test_package_import_needs_no_openrlhf():
    code = ("import sys, rlplugins.integrations.openrlhf as o, rlplugins.integrations.openrlhf.loss_flags\n"
            "assert 'openrlhf' not in sys.modules, sorted(m for m in sys.modules if m.startswith('openrlhf'))\n"
            "print(o.SUPPORTED_OPENRLHF_VERSION)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0.11.2"
