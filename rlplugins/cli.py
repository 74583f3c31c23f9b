"""The `rlplugins` command.

Each subcommand lives in its own module, imported only when that subcommand runs, so that
`rlplugins demo` never imports a framework and `rlplugins verl-smoke` / `trl-smoke` are the only paths that need
veRL / TRL.
A subcommand module provides `add_arguments(parser)` and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("rlplugins.demo", "toy RLVR run on CPU comparing maspo, its no-gate control, GRPO (dual clip), sapo and pg"),
    "losses": ("rlplugins.losses.describe", "list the registered policy losses and their defaults"),
    "verl-smoke": ("rlplugins.integrations.verl.smoke", "run veRL's real actor worker on CPU for two steps"),
    "trl-smoke": ("rlplugins.integrations.trl.smoke", "a few real GRPO (rlplugins loss) and SAGE DPO steps in TRL on CPU"),
}


def _top_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlplugins", description="rlplugins command-line tools")
    parser.add_argument("command", choices=sorted(SUBCOMMANDS), help="; ".join(
        f"{name}: {text}" for name, (_, text) in SUBCOMMANDS.items()))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        _top_parser().parse_args(argv[:1])  # prints usage and exits for --help or an unknown name
        return 2
    name, rest = argv[0], argv[1:]
    module_name, help_text = SUBCOMMANDS[name]
    # Import only the chosen subcommand: the others may need optional dependencies.
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(f"rlplugins {name}: cannot import {module_name}: {exc}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"rlplugins {name}", description=help_text)
    module.add_arguments(parser)
    return int(module.main(parser.parse_args(rest)) or 0)


if __name__ == "__main__":
    sys.exit(main())
