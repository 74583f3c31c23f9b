"""The loss tests follow the registry: a newly registered loss is covered without editing any test."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import _strategies
import pytest

from rlplugins.losses import get_policy_loss, list_policy_losses, register_policy_loss
from rlplugins.losses import registry

TESTS = pathlib.Path(__file__).resolve().parents[1]

# Registers two throwaway losses before the test modules are collected: an elementwise one (pg's terms) and a
# sequence-level one (gspo's terms, elementwise=False).
PLUGIN = '''
from rlplugins.losses import get_policy_loss, register_policy_loss

for new, old in (("zz_throwaway", "pg"), ("zz_throwaway_seq", "gspo")):
    spec = get_policy_loss(old)
    register_policy_loss(new, config_cls=spec.config_cls, elementwise=spec.elementwise,
                         finite_safe=spec.finite_safe)(spec.fn)
'''


@pytest.fixture
def throwaway_losses(monkeypatch):
    """Two extra losses in the registry for the duration of one test (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    for new, old in (("zz_throwaway", "pg"), ("zz_throwaway_seq", "gspo")):
        spec = get_policy_loss(old)
        register_policy_loss(new, config_cls=spec.config_cls, elementwise=spec.elementwise)(spec.fn)
    yield "zz_throwaway", "zz_throwaway_seq"


def test_loss_lists_come_from_the_registry(throwaway_losses):
    elementwise, sequence = throwaway_losses
    assert elementwise in _strategies.all_losses() and sequence in _strategies.all_losses()
    assert elementwise in _strategies.elementwise_losses()
    assert sequence not in _strategies.elementwise_losses()
    assert "gspo" not in _strategies.elementwise_losses() and "maspo" in _strategies.elementwise_losses()


def test_the_throwaway_losses_are_gone_afterwards():
    assert not {"zz_throwaway", "zz_throwaway_seq"} & set(list_policy_losses())


def test_a_registered_loss_is_collected_by_the_family_properties(tmp_path):
    """pytest --collect-only with the losses registered before collection: every property parametrized over the
    registry gets a case for each, and the elementwise-only property skips the sequence-level one."""
    (tmp_path / "rlp_throwaway_plugin.py").write_text(PLUGIN)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p", "rlp_throwaway_plugin",
         str(TESTS / "core" / "test_family.py"), str(TESTS / "core" / "test_fast_path.py")],
        cwd=TESTS.parent, env=env, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ids = out.stdout.splitlines()

    def cases(test: str, loss: str) -> list[str]:
        return [i for i in ids if f"::{test}[" in i and (f"[{loss}]" in i or f"-{loss}]" in i or f"[{loss}-" in i)]

    for test in ("test_masked_positions_change_nothing_and_get_zero_gradient", "test_float64_gradcheck",
                 "test_autograd_gradient_equals_analytic", "test_fast_path_equals_the_exact_masking_path"):
        assert cases(test, "zz_throwaway") and cases(test, "zz_throwaway_seq"), test
    local = "test_elementwise_token_loss_depends_on_its_own_token_only"
    assert cases(local, "zz_throwaway") and not cases(local, "zz_throwaway_seq")
    assert cases(local, "maspo") and not cases(local, "gspo")
