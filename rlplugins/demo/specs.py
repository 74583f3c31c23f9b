"""The ``--losses`` grammar: which losses run, each with optional config overrides.

Entries are separated by commas or spaces; ``name:field=value`` starts an entry with overrides, and a
following ``field=value`` with no colon adds to that entry (loss names never contain ``=``)::

    maspo,unclipped,dual_clip
    maspo:sigma_base=0.2 maspo:alpha=0 maspo:beta_pos=0,beta_neg=0 unclipped

The same loss may appear several times with different overrides; its label (``maspo:sigma_base=0.2``) names
it in the table, the plot and the JSON. Values are validated by the loss's own config class, so a misspelt
field or an out-of-range value fails before any training with the config's message.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .._config import did_you_mean
from ..losses import list_policy_losses, make_config
from ..losses.config import PolicyLossConfig


@dataclass(frozen=True)
class LossSpec:
    """One compared loss: a registered name, its config overrides, and the label shown for it."""

    name: str
    overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_show(v)}" for k, v in self.overrides.items())

    def config(self) -> PolicyLossConfig:
        """The loss's default config with the overrides applied (validated by the config class)."""
        default = make_config(self.name)
        return make_config(self.name, {**default.to_dict(), **self.overrides})


def _show(value: Any) -> str:
    return "null" if value is None else str(value)


def _coerce(text: str, default: Any) -> Any:
    """A CLI string as the type of the field's default: ``0`` for a float field is ``0.0``."""
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if isinstance(default, bool) or low in ("true", "false"):
        if low not in ("true", "false"):
            raise ValueError(f"expected true or false, got {text!r}")
        return low == "true"
    if isinstance(default, str):
        return text.strip()
    try:
        number = float(text)
    except ValueError:
        return text.strip()  # a string field whose default is None; the config class validates it
    if isinstance(default, int) and number.is_integer():
        return int(number)
    return number


def parse_losses(text: str | list[str]) -> list[LossSpec]:
    """Parse the ``--losses`` value (a string, or a list of strings from several shell words)."""
    words = text if isinstance(text, list) else [text]
    tokens = [t.strip() for w in words for part in w.split() for t in part.split(",") if t.strip()]
    if not tokens:
        raise ValueError("--losses is empty")
    known = set(list_policy_losses())
    entries: list[tuple[str, dict[str, str]]] = []
    for tok in tokens:
        if "=" in tok and ":" not in tok:
            if not entries:
                raise ValueError(f"--losses: override {tok!r} comes before any loss name")
            key, value = tok.split("=", 1)
            entries[-1][1][key.strip()] = value
            continue
        name, _, first = tok.partition(":")
        name = name.strip()
        if name not in known:
            raise ValueError(f"--losses: unknown loss {name!r}.{did_you_mean(name, known)} "
                             f"Registered: {', '.join(sorted(known))}")
        over: dict[str, str] = {}
        if first:
            if "=" not in first:
                raise ValueError(f"--losses: expected {name}:field=value, got {tok!r}")
            key, value = first.split("=", 1)
            over[key.strip()] = value
        entries.append((name, over))

    specs = []
    for name, raw in entries:
        default = make_config(name).to_dict()
        unknown = [k for k in raw if k not in default]
        if unknown:
            make_config(name, {k: raw[k] for k in unknown})  # raises with the config's "did you mean" message
        over = {k: _coerce(v, default[k]) for k, v in raw.items()}
        spec = LossSpec(name, over)
        try:
            spec.config()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"--losses {spec.label}: {exc}") from None
        specs.append(spec)
    labels = [s.label for s in specs]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"--losses lists {', '.join(dup)} more than once")
    return specs
