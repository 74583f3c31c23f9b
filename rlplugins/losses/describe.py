"""`rlplugins losses`: print the registered policy losses, their formulas and default configs."""

from __future__ import annotations

import argparse
import dataclasses

from .registry import get_policy_loss, list_policy_losses


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", help="show only this loss")


def main(args: argparse.Namespace) -> int:
    names = [args.name] if args.name else list_policy_losses()
    for name in names:
        spec = get_policy_loss(name)
        defaults = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(spec.config_cls))
        print(f"{name:12s} {spec.description}")
        print(f"{'':12s} loss per token: {spec.formula}")
        print(f"{'':12s} {spec.config_cls.__name__}({defaults})")
    return 0
