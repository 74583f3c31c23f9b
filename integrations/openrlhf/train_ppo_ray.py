"""``python -m rlplugins.integrations.openrlhf.train_ppo_ray``: OpenRLHF's PPO/GRPO CLI plus rlplugins losses.

    python -m rlplugins.integrations.openrlhf.train_ppo_ray <every OpenRLHF flag> \\
        --actor.policy_loss_type maspo [--maspo.alpha 0.3 ...] [--rlplugins.on_nonfinite raise]

(also as the entrypoint of ``ray job submit``). Steps: split off our flags (``loss_flags``), validate them,
swap the Ray policy actor class (``ray_actor``), hook ``hierarchize`` so that ``args.actor.policy_loss_type``
names our loss (bypassing the CLI's ``choices``) and ``args.rlplugins`` carries its parameters, then run
``openrlhf.cli.train_ppo_ray`` unchanged. A policy worker without the plugin then fails at its first step
(``ValueError: Invalid policy loss type: maspo``) instead of silently training PPO. OpenRLHF's own ``ppo``
and ``gspo`` pass through untouched.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Sequence

from ._cli import fail, patch_hierarchize, run_openrlhf_cli
from .loss_flags import FlagError, LossSpec, loss_flags_help, parse_loss_flags
from .version import UnsupportedVersionError, check_openrlhf_version

PROG = "rlplugins.integrations.openrlhf.train_ppo_ray"
OPENRLHF_MODULE = "openrlhf.cli.train_ppo_ray"


def attach_loss(args: SimpleNamespace, spec: LossSpec) -> None:
    """Put the loss choice into OpenRLHF's (hierarchized) args; validate it against OpenRLHF's clip flags."""
    from .policy_loss import config_from_openrlhf

    low_high = args.actor.eps_clip_low_high or (args.actor.eps_clip, args.actor.eps_clip)
    try:
        config_from_openrlhf(spec.name, spec.overrides, clip_eps_low=low_high[0], clip_eps_high=low_high[1],
                             dual_clip=args.actor.dual_clip)
    except (TypeError, ValueError) as exc:
        fail(PROG, str(exc))
    args.actor.policy_loss_type = spec.name
    args.rlplugins = spec.to_namespace()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(loss_flags_help() + "\n\nOpenRLHF's flags:\n")
    try:
        check_openrlhf_version()
        spec, rest = parse_loss_flags(argv)
    except (FlagError, UnsupportedVersionError) as exc:
        fail(PROG, str(exc))
    if spec is not None:
        from .ray_actor import swap_policy_actor

        swap_policy_actor()
        patch_hierarchize(lambda args: attach_loss(args, spec))
    run_openrlhf_cli(OPENRLHF_MODULE, rest)


if __name__ == "__main__":
    main()
