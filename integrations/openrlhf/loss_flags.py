"""Our policy-loss flags for OpenRLHF's PPO CLI, and the ``LossSpec`` that carries the choice to the workers.

    --actor.policy_loss_type maspo --maspo.alpha 0.3 --maspo.variant paper --rlplugins.on_nonfinite raise

- ``--actor.policy_loss_type``: OpenRLHF's ``ppo``/``gspo`` pass through untouched; any other registered
  core loss (``maspo``, ``sapo``, ``cispo``, ``pg``, ...) is ours.
- ``--<loss>.<field>``: one flag per field of the loss's config dataclass, generated from the dataclass, so
  a field added to the core is a flag here without code changes. Fields that OpenRLHF's own flags carry
  (``eps_low``/``eps_high``: ``--actor.eps_clip_low_high``; ``dual_clip``: ``--actor.dual_clip``) have no
  flag of ours: one flag per concept.
- ``ppo_clip``/``clip_higher``/``dual_clip`` are OpenRLHF's native ``ppo`` with its own clip flags; we refuse
  them with the native command line rather than offering a second way to say the same thing.

This module imports no OpenRLHF: parsing and validation run before OpenRLHF is imported.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

from rlplugins._config import did_you_mean
from rlplugins.losses import get_policy_loss, list_policy_losses

NATIVE_LOSSES = ("ppo", "gspo")
NATIVE_EQUIVALENTS: dict[str, str] = {
    "ppo_clip": "--actor.policy_loss_type ppo --actor.eps_clip_low_high LOW HIGH",
    "clip_higher": "--actor.policy_loss_type ppo --actor.eps_clip_low_high 0.2 0.28",
    "dual_clip": "--actor.policy_loss_type ppo --actor.dual_clip 3.0",
}
OPENRLHF_OWNED_FIELDS: dict[str, str] = {
    "eps_low": "--actor.eps_clip_low_high LOW HIGH (or --actor.eps_clip)",
    "eps_high": "--actor.eps_clip_low_high LOW HIGH (or --actor.eps_clip)",
    "dual_clip": "--actor.dual_clip",
}
LOSS_TYPE_FLAG = "--actor.policy_loss_type"
ON_NONFINITE_FLAG = "--rlplugins.on_nonfinite"
# The clip range is meaningless for losses without one; saying so beats silently ignoring it.
_EPS_FLAGS = ("--actor.eps_clip", "--actor.eps_clip_low_high")
_DUAL_CLIP_FLAG = "--actor.dual_clip"


class FlagError(ValueError):
    """A command-line mistake; the message names the flag and what to write instead."""


@dataclass(frozen=True)
class LossSpec:
    """What travels to the Ray workers inside ``strategy.args.rlplugins``: plain, picklable values only."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)
    on_nonfinite: str = "raise"

    def to_namespace(self) -> SimpleNamespace:
        return SimpleNamespace(policy_loss=self.name, overrides=dict(self.overrides), on_nonfinite=self.on_nonfinite)

    @classmethod
    def coerce(cls, value: "LossSpec | SimpleNamespace | Mapping[str, Any]") -> "LossSpec":
        if isinstance(value, LossSpec):
            return value
        if isinstance(value, SimpleNamespace):
            value = vars(value)
        if not isinstance(value, Mapping) or "policy_loss" not in value:
            raise TypeError(
                f"expected a LossSpec or args.rlplugins (a namespace with policy_loss, overrides, on_nonfinite); "
                f"got {value!r}"
            )
        return cls(value["policy_loss"], dict(value.get("overrides") or {}), value.get("on_nonfinite", "raise"))


def cli_losses() -> list[str]:
    """Core losses selectable with --actor.policy_loss_type (beyond OpenRLHF's own ppo and gspo)."""
    return [n for n in list_policy_losses() if n not in NATIVE_LOSSES and n not in NATIVE_EQUIVALENTS]


def loss_flag_fields(name: str) -> list[dataclasses.Field]:
    """The config fields of loss ``name`` that get a ``--name.field`` flag."""
    cls = get_policy_loss(name).config_cls
    return [f for f in dataclasses.fields(cls) if f.name not in OPENRLHF_OWNED_FIELDS]


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(annotation: Any) -> tuple[Any, str]:
    """argparse ``type`` and metavar for a config field annotation (float, int, bool, str, X | None)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    optional = type(None) in typing.get_args(annotation)
    base = args[0] if (optional and len(args) == 1) else annotation
    if base is bool:
        conv, metavar = _parse_bool, "{true,false}"
    elif base in (int, float, str):
        conv, metavar = base, base.__name__.upper()
    else:
        conv, metavar = str, "VALUE"
    if not optional:
        return conv, metavar

    def maybe_none(text: str) -> Any:
        return None if text.strip().lower() == "none" else conv(text)

    # argparse names the converter in its message ("invalid <name> value: '1.5'").
    maybe_none.__name__ = f"{getattr(conv, '__name__', metavar.lower())} (or none)"
    return maybe_none, metavar + "|none"


def add_loss_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--actor.policy_loss_type``, every ``--<loss>.<field>`` and ``--rlplugins.on_nonfinite``."""
    parser.add_argument(LOSS_TYPE_FLAG, dest="policy_loss_type", default=None, metavar="NAME",
                        help=f"OpenRLHF's ppo|gspo, or an rlplugins loss: {'|'.join(cli_losses())}")
    parser.add_argument(ON_NONFINITE_FLAG, dest="on_nonfinite", choices=("raise", "mask"), default="raise",
                        help="a NaN/inf log-prob or advantage on a response token: raise (default) or drop the token")
    for name in cli_losses():
        cls = get_policy_loss(name).config_cls
        hints = typing.get_type_hints(cls)
        for f in loss_flag_fields(name):
            conv, metavar = _converter(hints[f.name])
            parser.add_argument(f"--{name}.{f.name}", dest=f"{name}.{f.name}", type=conv, metavar=metavar,
                                default=argparse.SUPPRESS, help=f"{cls.__name__}.{f.name} (default {f.default!r})")


def _flag_name(token: str) -> str:
    return token.split("=", 1)[0]


def _is_our_namespace(flag: str) -> bool:
    prefix = flag[2:].split(".", 1)[0] if flag.startswith("--") and "." in flag else ""
    return prefix in cli_losses() or prefix in NATIVE_EQUIVALENTS or prefix == "rlplugins"


def parse_loss_flags(argv: Sequence[str]) -> tuple[LossSpec | None, list[str]]:
    """Split ``argv`` into our loss choice and the arguments OpenRLHF's parser gets.

    Returns ``(None, argv-with-native-choice)`` when the loss is OpenRLHF's own (or not given). Raises
    ``FlagError`` for: an unknown loss name, a PPO-family name that OpenRLHF covers natively, a flag of
    another loss, an unknown ``--<loss>.*`` field, a bad value, or an OpenRLHF clip flag with no effect.
    """
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    add_loss_flags(parser)
    try:
        ns, rest = parser.parse_known_args(list(argv))
    except argparse.ArgumentError as exc:
        raise FlagError(str(exc)) from None
    given = {k: v for k, v in vars(ns).items() if "." in k}

    unknown = [_flag_name(t) for t in rest if _is_our_namespace(_flag_name(t))]
    if unknown:
        flag = unknown[0]
        loss = flag[2:].split(".", 1)[0]
        if loss in NATIVE_EQUIVALENTS:
            raise FlagError(f"{flag}: {loss} is OpenRLHF's native ppo; write {NATIVE_EQUIVALENTS[loss]}")
        if loss in cli_losses() and flag[2:].split(".", 1)[1] in OPENRLHF_OWNED_FIELDS:
            field_name = flag[2:].split(".", 1)[1]
            raise FlagError(f"{flag}: {field_name} is set by OpenRLHF's own flag; use {OPENRLHF_OWNED_FIELDS[field_name]}")
        known = [f"--{loss}.{f.name}" for f in loss_flag_fields(loss)] if loss in cli_losses() else [ON_NONFINITE_FLAG]
        hint = did_you_mean(flag, known, quote=False)
        raise FlagError(f"unknown flag {flag}.{hint} Flags of {loss}: {', '.join(known) or '(none)'}")

    name = ns.policy_loss_type
    if name is None or name in NATIVE_LOSSES:
        if ON_NONFINITE_FLAG in {_flag_name(t) for t in argv}:
            raise FlagError(f"{ON_NONFINITE_FLAG} applies to rlplugins losses only, but {LOSS_TYPE_FLAG} is "
                            f"{name or 'ppo (the default)'}; remove it")
        if given:
            flag = "--" + sorted(given)[0]
            raise FlagError(
                f"{flag} is a parameter of rlplugins loss {flag[2:].split('.', 1)[0]}, but "
                f"{LOSS_TYPE_FLAG} is {name or 'ppo (the default)'}; add {LOSS_TYPE_FLAG} {flag[2:].split('.', 1)[0]}"
            )
        rest = ([LOSS_TYPE_FLAG, name] if name else []) + rest
        return None, rest
    if name in NATIVE_EQUIVALENTS:
        raise FlagError(f"{LOSS_TYPE_FLAG} {name}: OpenRLHF's native ppo is this loss; write {NATIVE_EQUIVALENTS[name]}")
    if name not in cli_losses():
        choices = [*NATIVE_LOSSES, *cli_losses()]
        hint = did_you_mean(name, choices, quote=False)
        raise FlagError(f"{LOSS_TYPE_FLAG} {name!r} is not a policy loss.{hint} Choices: {', '.join(choices)}")

    overrides: dict[str, Any] = {}
    for key, value in given.items():
        loss, field_name = key.split(".", 1)
        if loss != name:
            raise FlagError(f"--{key} is a parameter of {loss}, but {LOSS_TYPE_FLAG} is {name}; remove it "
                            f"or write {LOSS_TYPE_FLAG} {loss}")
        overrides[field_name] = value

    names_with_field = {f.name for f in dataclasses.fields(get_policy_loss(name).config_cls)}
    rest_flags = {_flag_name(t) for t in rest}
    if "eps_low" not in names_with_field:
        for flag in _EPS_FLAGS:
            if flag in rest_flags:
                raise FlagError(f"{flag} has no effect with {LOSS_TYPE_FLAG} {name} (it has no clip range); remove "
                                f"it (tune {name} with: {', '.join(_flags_of(name)) or 'no parameters'})")
    if "dual_clip" not in names_with_field and _DUAL_CLIP_FLAG in rest_flags:
        raise FlagError(f"{_DUAL_CLIP_FLAG} has no effect with {LOSS_TYPE_FLAG} {name} (it has no dual clip; losses "
                        f"with one: ppo, maspo); remove it")

    try:  # validate the values now, not in a Ray worker minutes later
        get_policy_loss(name).config_cls.from_mapping(overrides)
    except (TypeError, ValueError) as exc:
        raise FlagError(f"invalid {name} parameters: {exc}") from None
    return LossSpec(name, overrides, ns.on_nonfinite), rest


def _flags_of(name: str) -> list[str]:
    return [f"--{name}.{f.name}" for f in loss_flag_fields(name)]


def loss_flags_help() -> str:
    """Help text listing our flags, appended to OpenRLHF's --help."""
    lines = ["rlplugins policy losses (python -m rlplugins.integrations.openrlhf.train_ppo_ray):",
             f"  {LOSS_TYPE_FLAG} {{{','.join([*NATIVE_LOSSES, *cli_losses()])}}}",
             f"  {ON_NONFINITE_FLAG} {{raise,mask}}  (default raise)"]
    for name in cli_losses():
        cls = get_policy_loss(name).config_cls
        flags = [f"--{name}.{f.name} (default {f.default!r})" for f in loss_flag_fields(name)]
        lines.append(f"  {name}: " + (", ".join(flags) if flags else "no parameters") + f"  [{cls.__name__}]")
    lines.append("  clip range and dual clip come from OpenRLHF's --actor.eps_clip_low_high / --actor.dual_clip")
    return "\n".join(lines)
