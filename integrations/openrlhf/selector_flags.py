"""Our pair-selection flags for OpenRLHF's DPO CLI, and the ``SelectorSpec`` that carries them to the trainer.

    --selector sage [--sage.selection_ratio 0.5 --sage.rescore_interval 8 ...]
    [--selector.difficulty_key difficulty | --selector.pass_rate_key pass_rate] [--selector.score_batch_size 8]

- ``--selector NAME``: any of ``rlplugins.selection.SELECTOR_NAMES`` (SAGE, its ablations and the baselines).
- ``--sage.<field>``: one flag per ``SageConfig`` field (the config every selector shares), generated from
  the dataclass. ``beta`` and ``seed`` have no flag of ours: OpenRLHF's ``--model.beta`` and ``--train.seed``
  carry them (one flag per concept), so the selector's margins use the loss's beta.
- ``--selector.difficulty_key`` / ``--selector.pass_rate_key``: a dataset column with each pair's difficulty
  in [0, 1] (or pass rate, difficulty = 1 - pass rate) for the curriculum tiers; without one every pair is in
  tier 0 (a single curriculum level).
- ``--selector.score_batch_size``: pairs per no-grad scoring forward (default: ``--train.micro_batch_size``).

Everything is checked when the flags are parsed, before any model loads: a ``--sage.*`` flag the chosen selector
never reads (or that a SAGE ablation sets itself), ``selective_dpo`` without a difficulty column, and the values of
OpenRLHF's ``--model.beta`` (> 0) and ``--train.seed`` (>= 0), which the selector reads.

Imports no OpenRLHF.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from rlplugins._config import did_you_mean

from .loss_flags import FlagError, _converter, _flag_name

SELECTOR_FLAG = "--selector"
# SageConfig fields whose values OpenRLHF's flags carry.
OPENRLHF_OWNED_FIELDS = {"beta": "--model.beta", "seed": "--train.seed"}
# Needs per-token probabilities of the rejected response from the scoring pass; OpenRLHF's
# concatenated_forward returns only sequence sums.
UNSUPPORTED = {"score_variant": ("token_curvature",)}
_ADAPTER_FLAGS = ("difficulty_key", "pass_rate_key", "score_batch_size")
# SageConfig fields only SAGE and its ablations read (scoring, stability filter, curriculum refresh). A --sage.* flag
# the chosen selector never reads would be silently ignored: it is refused at parse time instead. Fields not listed
# (history_size, num_tiers, ...) are read by every selector.
_SAGE_ONLY_FIELDS = frozenset({
    "damping", "margin_clip", "boundary_band", "sign_consistency", "variance_threshold", "use_filter", "score_variant",
    "selection_mode", "granularity", "use_curriculum", "refresh_mode", "competence_threshold", "competence_source",
    "competence_min_coverage", "exhaust_fraction", "schedule_c0", "rescore_interval",
    "margin_source", "band_scale", "noise_guard", "rescore_scope", "plateau_rounds", "fill",
})
_UNUSED_FIELDS = {
    "dpo_full": _SAGE_ONLY_FIELDS | {"selection_ratio", "tier_mix", "warmup_steps"},
    "random_subset": _SAGE_ONLY_FIELDS | {"tier_mix", "warmup_steps"},
    "selective_dpo": _SAGE_ONLY_FIELDS | {"tier_mix", "warmup_steps"},
    "static_curriculum": _SAGE_ONLY_FIELDS | {"selection_ratio", "warmup_steps"},
    "static_low_gap": _SAGE_ONLY_FIELDS | {"tier_mix"},
    "static_high_margin": _SAGE_ONLY_FIELDS | {"tier_mix"},
}
# Selectors that cannot run without a per-pair difficulty.
_NEEDS_DIFFICULTY = ("selective_dpo",)


@dataclass(frozen=True)
class SelectorSpec:
    """Plain, picklable description of the selector; stored as ``args.rlplugins_selection``."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    difficulty_key: str | None = None
    pass_rate_key: str | None = None
    score_batch_size: int | None = None

    def to_namespace(self) -> SimpleNamespace:
        return SimpleNamespace(**{**dataclasses.asdict(self), "overrides": dict(self.overrides)})

    @classmethod
    def coerce(cls, value: "SelectorSpec | SimpleNamespace | Mapping[str, Any]") -> "SelectorSpec":
        if isinstance(value, SelectorSpec):
            return value
        if isinstance(value, SimpleNamespace):
            value = vars(value)
        if not isinstance(value, Mapping) or "name" not in value:
            raise TypeError(f"expected a SelectorSpec or args.rlplugins_selection, got {value!r}")
        return cls(**{**value, "overrides": dict(value.get("overrides") or {})})


def _selection():  # imported lazily: the flag help must work even if selection fails to import
    import rlplugins.selection as selection

    return selection


def sage_flag_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(_selection().SageConfig) if f.name not in OPENRLHF_OWNED_FIELDS]


def add_selector_flags(parser: argparse.ArgumentParser) -> None:
    sel = _selection()
    parser.add_argument(SELECTOR_FLAG, dest="selector", default=None, metavar="NAME",
                        help=f"pair selector: {'|'.join(sel.SELECTOR_NAMES)}")
    parser.add_argument("--selector.difficulty_key", dest="difficulty_key", default=None, metavar="COLUMN")
    parser.add_argument("--selector.pass_rate_key", dest="pass_rate_key", default=None, metavar="COLUMN")
    parser.add_argument("--selector.score_batch_size", dest="score_batch_size", type=int, default=None, metavar="N")
    hints = typing.get_type_hints(sel.SageConfig)
    for f in sage_flag_fields():
        conv, metavar = _converter(hints[f.name])
        parser.add_argument(f"--sage.{f.name}", dest=f"sage.{f.name}", type=conv, metavar=metavar,
                            default=argparse.SUPPRESS, help=f"SageConfig.{f.name} (default {f.default!r})")


def parse_selector_flags(argv: Sequence[str]) -> tuple[SelectorSpec | None, list[str]]:
    """Split ``argv`` into our selector choice and OpenRLHF's arguments; ``FlagError`` on a mistake."""
    sel = _selection()
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    add_selector_flags(parser)
    try:
        ns, rest = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as exc:
        raise FlagError(str(exc)) from None

    for token in rest:
        flag = _flag_name(token)
        if flag.startswith("--sage.") or flag.startswith("--selector."):
            key = flag.split(".", 1)[1]
            if flag.startswith("--sage.") and key in OPENRLHF_OWNED_FIELDS:
                raise FlagError(f"{flag}: {key} is set by OpenRLHF's own flag; use {OPENRLHF_OWNED_FIELDS[key]}")
            known = [f"--sage.{f.name}" for f in sage_flag_fields()] + [f"--selector.{k}" for k in _ADAPTER_FLAGS]
            hint = did_you_mean(flag, known, quote=False)
            raise FlagError(f"unknown flag {flag}.{hint} Selector flags: {', '.join(known)}")

    overrides = {k.split(".", 1)[1]: v for k, v in vars(ns).items() if k.startswith("sage.")}
    adapter = {k: getattr(ns, k) for k in _ADAPTER_FLAGS if getattr(ns, k) is not None}
    if ns.selector is None:
        if overrides or adapter:
            given = [f"--sage.{k}" for k in overrides] + [f"--selector.{k}" for k in adapter]
            raise FlagError(f"{given[0]} needs {SELECTOR_FLAG} NAME (e.g. {SELECTOR_FLAG} sage); without it the run "
                            f"is OpenRLHF's plain DPO")
        return None, rest
    if ns.selector not in sel.SELECTOR_NAMES:
        hint = did_you_mean(ns.selector, sel.SELECTOR_NAMES, quote=False)
        raise FlagError(f"{SELECTOR_FLAG} {ns.selector!r} is not a selector.{hint} "
                        f"Choices: {', '.join(sel.SELECTOR_NAMES)}")
    for key, bad in UNSUPPORTED.items():
        if overrides.get(key) in bad:
            raise FlagError(f"--sage.{key} {overrides[key]} is not supported by the OpenRLHF adapter (it needs "
                            f"per-token probabilities of the rejected response, which OpenRLHF's DPO forward does "
                            f"not return); use one of newton, signal, loss")
    unused = sorted(k for k in overrides if k in _UNUSED_FIELDS.get(ns.selector, ()))
    if unused:
        raise FlagError(f"--sage.{unused[0]} has no effect with {SELECTOR_FLAG} {ns.selector} (it does not read "
                        f"{', '.join(unused)}); remove it, or choose a SAGE selector")
    fixed = _fixed_by_selector(ns.selector)
    clash = sorted(k for k in overrides if k in fixed and overrides[k] != fixed[k])
    if clash:
        raise FlagError(f"--sage.{clash[0]} {overrides[clash[0]]} contradicts {SELECTOR_FLAG} {ns.selector}, which sets "
                        f"{clash[0]}={fixed[clash[0]]!r}; remove the flag, or choose another selector")
    if ns.selector in _NEEDS_DIFFICULTY and not (ns.difficulty_key or ns.pass_rate_key):
        raise FlagError(f"{SELECTOR_FLAG} {ns.selector} chooses pairs by difficulty, so it needs a difficulty column: "
                        f"add --selector.difficulty_key COLUMN or --selector.pass_rate_key COLUMN")
    _check_openrlhf_values(rest)
    if ns.difficulty_key and ns.pass_rate_key:
        raise FlagError("give one of --selector.difficulty_key and --selector.pass_rate_key, not both")
    if ns.score_batch_size is not None and ns.score_batch_size < 1:
        raise FlagError(f"--selector.score_batch_size must be >= 1, got {ns.score_batch_size}")
    try:  # validate now, before models are loaded
        sel.SageConfig(**overrides)
    except (TypeError, ValueError) as exc:
        raise FlagError(f"invalid --sage.* value: {exc}") from None
    return SelectorSpec(ns.selector, overrides, ns.difficulty_key, ns.pass_rate_key, ns.score_batch_size), rest


def _fixed_by_selector(name: str) -> Mapping[str, Any]:
    """SageConfig fields a SAGE ablation sets itself (make_selector replaces them, so a flag would be ignored)."""
    from rlplugins.selection import registry

    return getattr(registry, "_SAGE_OVERRIDES", {}).get(name, {})


def _openrlhf_flag(rest: Sequence[str], flag: str) -> str | None:
    """The last value given to OpenRLHF's ``flag`` in ``rest`` (``--flag V`` or ``--flag=V``), or None."""
    value = None
    for i, token in enumerate(rest):
        if token == flag and i + 1 < len(rest):
            value = rest[i + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value


def _check_openrlhf_values(rest: Sequence[str]) -> None:
    """The OpenRLHF flags the selector reads (--model.beta, --train.seed), checked before any model loads."""
    import math

    beta = _openrlhf_flag(rest, OPENRLHF_OWNED_FIELDS["beta"])
    if beta is not None:
        try:
            value = float(beta)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value > 0):
            raise FlagError(f"{OPENRLHF_OWNED_FIELDS['beta']} must be a finite number > 0 (the DPO beta, also the "
                            f"selector's margin scale), got {beta!r}")
    seed = _openrlhf_flag(rest, OPENRLHF_OWNED_FIELDS["seed"])
    if seed is not None:
        try:
            ok = int(seed) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise FlagError(f"{OPENRLHF_OWNED_FIELDS['seed']} must be an int >= 0 (it seeds the selector), got {seed!r}")


def selector_flags_help() -> str:
    sel = _selection()
    lines = ["rlplugins pair selection (python -m rlplugins.integrations.openrlhf.train_dpo):",
             f"  {SELECTOR_FLAG} {{{','.join(sel.SELECTOR_NAMES)}}}",
             "  --selector.difficulty_key COLUMN | --selector.pass_rate_key COLUMN   (curriculum tiers)",
             "  --selector.score_batch_size N   (pairs per scoring forward; default --train.micro_batch_size)"]
    lines += [f"  --sage.{f.name} (default {f.default!r})" for f in sage_flag_fields()]
    lines.append("  beta and seed come from OpenRLHF's --model.beta and --train.seed")
    return "\n".join(lines)
