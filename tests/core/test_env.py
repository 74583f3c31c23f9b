"""rlplugins._env: one prefix, RLPLUGINS_; the old RLP_ names still work for one release, with a warning."""

from __future__ import annotations

import warnings

import pytest

from rlplugins import _env


@pytest.fixture(autouse=True)
def fresh(monkeypatch):
    monkeypatch.setattr(_env, "_warned", set())
    for name in ("RLPLUGINS_ZZ_TEST", "RLP_ZZ_TEST"):
        monkeypatch.delenv(name, raising=False)


def test_new_name_is_read_without_warning(monkeypatch):
    monkeypatch.setenv("RLPLUGINS_ZZ_TEST", "7")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.env("ZZ_TEST") == "7"
    assert _env.env("ZZ_UNSET", "d") == "d" and _env.env("ZZ_UNSET") is None


def test_old_name_is_a_deprecated_alias_warned_once(monkeypatch):
    monkeypatch.setenv("RLP_ZZ_TEST", "1")
    with pytest.warns(FutureWarning, match="RLP_ZZ_TEST is deprecated .* set RLPLUGINS_ZZ_TEST instead"):
        assert _env.env("ZZ_TEST") == "1"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per variable
        assert _env.env_flag("ZZ_TEST")


def test_new_name_wins_over_the_old(monkeypatch):
    monkeypatch.setenv("RLP_ZZ_TEST", "old")
    monkeypatch.setenv("RLPLUGINS_ZZ_TEST", "new")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _env.env("ZZ_TEST") == "new"


def test_kernel_tuning_variables_use_the_prefix(monkeypatch):
    pytest.importorskip("triton")
    from rlplugins.kernels._utils import vocab_launch_config

    monkeypatch.setenv("RLPLUGINS_FWD_BLOCK", "64")
    assert vocab_launch_config(1000, "fwd").block == 64
    monkeypatch.setenv("RLPLUGINS_FWD_BLOCK", "x")
    with pytest.raises(ValueError, match="RLPLUGINS_FWD_BLOCK must be an integer, got 'x'"):
        vocab_launch_config(1000, "fwd")
    monkeypatch.delenv("RLPLUGINS_FWD_BLOCK")
    monkeypatch.setenv("RLP_FWD_BLOCK", "32")
    with pytest.warns(FutureWarning, match="RLP_FWD_BLOCK"):
        assert vocab_launch_config(1000, "fwd").block == 32
