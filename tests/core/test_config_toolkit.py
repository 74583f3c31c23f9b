"""rlplugins._config: the checks, the "did you mean" and the config base every config dataclass uses."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from rlplugins._config import (
    ConfigMixin,
    ConfigTypeError,
    UnknownFieldError,
    check_bool,
    check_choice,
    check_int,
    check_number,
    did_you_mean,
    suggest,
    suggest_field_names,
    unknown_field_error,
)


def test_suggest_picks_the_closest_candidate_or_none():
    assert suggest("sigam_base", ["sigma_base", "sigma_high", "alpha"]) == "sigma_base"
    assert suggest("zzz", ["sigma_base", "alpha"]) is None
    assert suggest("alpah", []) is None
    assert did_you_mean("maspp", ["maspo", "sapo"]) == " Did you mean 'maspo'?"
    assert did_you_mean("zzz", ["maspo"]) == ""
    # the cutoff is honoured: a loose match appears only below it
    assert suggest("ab", ["abcdef"]) is None
    assert suggest("ab", ["abcdef"], cutoff=0.3) == "abcdef"


def test_unknown_field_error_names_owner_key_suggestion_and_fields():
    err = unknown_field_error("MaspoConfig", "sigam_base", ["sigma_base", "alpha"])
    assert isinstance(err, TypeError) and isinstance(err, ValueError)
    msg = str(err)
    assert "MaspoConfig has no field 'sigam_base'" in msg
    assert "Did you mean 'sigma_base'?" in msg
    assert msg.endswith("Valid fields: sigma_base, alpha")
    assert "(none)" in str(unknown_field_error("PgConfig", "x", []))


@pytest.mark.parametrize(
    "value, bounds, pattern",
    [
        (0.0, dict(low=0.0, low_inclusive=False), r"^Cfg\.x must be in \(0, inf\), got 0\.0$"),
        (-1, dict(low=0.0), r"^Cfg\.x must be in \[0, inf\), got -1$"),
        (2, dict(high=1.0), r"^Cfg\.x must be in \(-inf, 1\], got 2$"),
        (1.0, dict(high=1.0, high_inclusive=False), r"^Cfg\.x must be in \(-inf, 1\), got 1\.0$"),
        (1.5, dict(low=0.0, high=1.0), r"^Cfg\.x must be in \[0, 1\], got 1\.5$"),
        (0.0, dict(low=0.0, high=1.0, low_inclusive=False), r"^Cfg\.x must be in \(0, 1\], got 0\.0$"),
        (float("nan"), dict(), r"^Cfg\.x must be finite, got nan$"),
        (float("-inf"), dict(low=0.0), r"must be finite"),
        (10**400, dict(), r"must be finite, got an int of 401 digits"),
    ],
)
def test_check_number_rejects_out_of_range_with_the_interval(value, bounds, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_number("Cfg", "x", value, **bounds)


@pytest.mark.parametrize("value", [True, "1.0", None, [1.0], 1 + 0j])
def test_check_number_rejects_non_numbers_as_both_error_types(value):
    with pytest.raises(ConfigTypeError, match=r"^Cfg\.x must be a number, got ") as info:
        check_number("Cfg", "x", value)
    assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)


def test_check_number_accepts_and_returns_unchanged():
    assert check_number("Cfg", "x", 3, low=0.0) == 3
    assert check_number("Cfg", "x", 0.5, low=0.0, high=1.0) == 0.5
    assert check_number("Cfg", "x", np.float32(0.25), low=0.0) == np.float32(0.25)
    assert check_number("Cfg", "x", np.int64(2), low=0) == 2
    assert check_number("Cfg", "x", None, allow_none=True) is None
    assert check_number("Cfg", "x", 1.0, low=1.0, high=1.0) == 1.0  # inclusive bounds are inclusive
    with pytest.raises(ConfigTypeError, match="number or None"):
        check_number("Cfg", "x", "a", allow_none=True)


def test_bare_field_name_without_owner():
    with pytest.raises(ValueError, match=r"^--rlp-alpha must be in \[0, inf\), got -1$"):
        check_number("", "--rlp-alpha", -1, low=0)


def test_check_int():
    assert check_int("Cfg", "n", 3, low=1) == 3
    assert check_int("Cfg", "n", None, low=1, allow_none=True) is None
    with pytest.raises(ValueError, match=r"^Cfg\.n must be an int in \[1, inf\), got 0$"):
        check_int("Cfg", "n", 0, low=1)
    with pytest.raises(ValueError, match=r"^Cfg\.n must be None or an int in \[0, 5\], got 6$"):
        check_int("Cfg", "n", 6, low=0, high=5, allow_none=True)
    for bad in (True, 1.0, "3", None):
        with pytest.raises(ConfigTypeError, match=r"^Cfg\.n must be an int, got "):
            check_int("Cfg", "n", bad)


def test_check_bool():
    assert check_bool("Cfg", "flag", False) is False
    for bad in (0, 1, "true", None):
        with pytest.raises(ConfigTypeError, match=r"^Cfg\.flag must be a bool, got "):
            check_bool("Cfg", "flag", bad)


def test_check_choice_lists_choices_and_suggests():
    assert check_choice("Cfg", "mode", "topk", ("topk", "sample")) == "topk"
    with pytest.raises(ValueError, match=r"^Cfg\.mode must be one of 'topk', 'sample', got 'topkk'\. Did you mean 'topk'\?$"):
        check_choice("Cfg", "mode", "topkk", ("topk", "sample"))
    with pytest.raises(ValueError, match=r"^Cfg\.mode must be one of 'topk', 'sample', got 'zzz'$"):
        check_choice("Cfg", "mode", "zzz", ("topk", "sample"))
    with pytest.raises(ValueError, match=r"got 3$"):
        check_choice("Cfg", "mode", 3, ("topk", "sample"))


@dataclass(frozen=True)
class _Base(ConfigMixin):
    alpha: float = 0.5
    edges: tuple[float, ...] = (0.25, 0.75)

    def __post_init__(self) -> None:
        check_number(type(self).__name__, "alpha", self.alpha, low=0.0)


@dataclass(frozen=True)
class _Child(_Base):
    gamma: int = 2


def test_config_mixin_constructor_and_replace_suggest_the_field():
    with pytest.raises(UnknownFieldError, match=r"_Base has no field 'alpah'\. Did you mean 'alpha'\?"):
        _Base(alpah=1.0)
    # a subclass checks its own fields: gamma is valid there, and misspelt it is suggested
    assert _Child(gamma=3).gamma == 3
    with pytest.raises(TypeError, match=r"_Child has no field 'gama'\. Did you mean 'gamma'\?"):
        _Child(gama=3)
    with pytest.raises(UnknownFieldError, match="Did you mean 'alpha'"):
        _Base().replace(alhpa=2.0)
    with pytest.raises(UnknownFieldError, match="Did you mean 'alpha'"):
        dataclasses.replace(_Base(), alhpa=2.0)
    assert _Base().replace(alpha=2.0).alpha == 2.0
    with pytest.raises(ValueError, match=r"_Base\.alpha must be in \[0, inf\)"):
        _Base().replace(alpha=-1.0)


def test_config_mixin_mapping_round_trip():
    cfg = _Child.from_mapping({"alpha": 1.5, "edges": [0.1, 0.9], "gamma": 4})
    assert cfg == _Child(alpha=1.5, edges=(0.1, 0.9), gamma=4)
    assert isinstance(cfg.edges, tuple) and hash(cfg)  # lists from YAML become tuples, the config stays hashable
    assert cfg.to_dict() == {"alpha": 1.5, "edges": (0.1, 0.9), "gamma": 4}
    assert _Child.from_mapping(cfg.to_dict()) == cfg
    assert _Child.field_names() == ["alpha", "edges", "gamma"]
    with pytest.raises(ValueError, match=r"_Child has no field 'gamm'\. Did you mean 'gamma'\?"):
        _Child.from_mapping({"gamm": 1})
    with pytest.raises(ConfigTypeError, match="needs a mapping"):
        _Child.from_mapping([("alpha", 1.0)])
    with pytest.raises(ValueError, match=r"_Child\.alpha must be in \[0, inf\)"):
        _Child.from_mapping({"alpha": -1})


def test_suggest_field_names_decorator_for_fixed_bases():
    class Framework:
        pass

    @suggest_field_names
    @dataclass
    class Args(Framework):
        lr: float = 1e-3

    assert Args(lr=0.1).lr == 0.1
    with pytest.raises(UnknownFieldError, match=r"Args has no field 'lrr'\. Did you mean 'lr'\?"):
        Args(lrr=0.1)
