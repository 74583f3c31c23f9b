"""The three adapters' version guards have the same shape: module, names, exception, skip variable, messages.

Runs without any framework installed: each guard is called with an explicit version.
"""

from __future__ import annotations

import importlib
import warnings

import pytest

from rlplugins.integrations._version import UnsupportedVersionError

# adapter -> (supported-version constant, check function, an unsupported version, the pip requirement)
ADAPTERS = {
    "verl": ("SUPPORTED_VERL_VERSION", "check_verl_version", "0.8.0", "verl[verl-core]==0.9.1"),
    "openrlhf": ("SUPPORTED_OPENRLHF_VERSION", "check_openrlhf_version", "0.11.0", "openrlhf==0.11.2"),
    "trl": ("SUPPORTED_TRL_VERSION", "check_trl_version", "1.15.2", "trl==1.16.0"),
}
# old name -> new name, per module (deprecated aliases, kept for one release)
DEPRECATED = {
    "rlplugins.integrations.verl.version": {"UnsupportedVerlVersion": "UnsupportedVersionError",
                                            "require_supported_verl": None, "SUPPORTED_VERL_VERSIONS": None},
    "rlplugins.integrations.openrlhf.version": {"OpenRLHFVersionError": "UnsupportedVersionError",
                                                "SKIP_ENV": "SKIP_VERSION_CHECK_ENV"},
    "rlplugins.integrations.trl.version": {"TRLVersionError": "UnsupportedVersionError",
                                           "SKIP_ENV": "SKIP_VERSION_CHECK_ENV"},
    "rlplugins.integrations.openrlhf": {"OpenRLHFVersionError": "UnsupportedVersionError",
                                        "SKIP_ENV": "SKIP_VERSION_CHECK_ENV"},
    "rlplugins.integrations.trl": {"TRLVersionError": "UnsupportedVersionError", "SKIP_ENV": "SKIP_VERSION_CHECK_ENV"},
    "rlplugins.integrations.verl": {"UnsupportedVerlVersion": "UnsupportedVersionError",
                                    "require_supported_verl": None, "SUPPORTED_VERL_VERSIONS": None},
}


@pytest.mark.parametrize("fw", sorted(ADAPTERS))
def test_same_names_and_one_exception(fw, monkeypatch):
    constant, check_name, other, requirement = ADAPTERS[fw]
    module = importlib.import_module(f"rlplugins.integrations.{fw}.version")
    assert sorted(module.__all__) == sorted(
        ["SKIP_VERSION_CHECK_ENV", constant, "UnsupportedVersionError", check_name, f"installed_{fw}_version"]
    )
    assert module.UnsupportedVersionError is UnsupportedVersionError
    assert issubclass(UnsupportedVersionError, ImportError)
    assert module.SKIP_VERSION_CHECK_ENV == f"RLPLUGINS_{fw.upper()}_SKIP_VERSION_CHECK"
    check, supported = getattr(module, check_name), getattr(module, constant)
    assert check(supported) == supported
    monkeypatch.delenv(module.SKIP_VERSION_CHECK_ENV, raising=False)
    with pytest.raises(UnsupportedVersionError) as err:
        check(other)
    message = str(err.value)
    assert f"rlplugins.integrations.{fw} supports" in message and f"{other} is installed" in message
    assert f"pip install '{requirement}'" in message and module.SKIP_VERSION_CHECK_ENV in message
    monkeypatch.setattr(module, f"installed_{fw}_version", lambda: None)
    with pytest.raises(UnsupportedVersionError, match=f"needs .* {supported}, but .* is not installed"):
        check()
    monkeypatch.setenv(module.SKIP_VERSION_CHECK_ENV, "1")
    assert check(other) == other


@pytest.mark.parametrize("module_name", sorted(DEPRECATED))
def test_old_names_still_import_with_a_deprecation_warning(module_name):
    module = importlib.import_module(module_name)
    for old, new in DEPRECATED[module_name].items():
        with pytest.warns(DeprecationWarning, match=old):
            value = getattr(module, old)
        if new is not None:
            assert value is getattr(module, new), old
        assert old not in getattr(module, "__all__", [])


def test_verl_compat_module_is_a_deprecated_alias():
    import sys

    sys.modules.pop("rlplugins.integrations.verl.compat", None)
    with pytest.warns(DeprecationWarning, match="use rlplugins.integrations.verl.version"):
        compat = importlib.import_module("rlplugins.integrations.verl.compat")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.UnsupportedVerlVersion is UnsupportedVersionError
        assert compat.SUPPORTED_VERL_VERSIONS == ("0.9.1",)
        assert compat.require_supported_verl("0.9.1") == "0.9.1"
        with pytest.raises(UnsupportedVersionError, match="veRL 0.8.0 is installed"):
            compat.require_supported_verl("0.8.0")
