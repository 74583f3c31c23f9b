"""``rlplugins.integrations.openrlhf.train_dpo``: OpenRLHF's DPO CLI with a pair selector (SAGE or a baseline).

    deepspeed --module rlplugins.integrations.openrlhf.train_dpo <every OpenRLHF train_dpo flag> \\
        --selector sage [--sage.selection_ratio 0.5 --sage.rescore_interval 8 ...] \\
        [--selector.pass_rate_key pass_rate]

Every rank runs this module, so in-process patches suffice (no Ray here): ``DPOTrainer`` becomes
``SageDPOTrainer``, ``RewardDataset`` keeps the curriculum column when one is named, and ``hierarchize``
attaches the selector choice as ``args.rlplugins_selection``. Then ``openrlhf.cli.train_dpo`` runs unchanged.
Without ``--selector`` the run is OpenRLHF's plain DPO, untouched.
"""

from __future__ import annotations

import sys
from typing import Sequence

from ._cli import fail, patch_hierarchize, run_openrlhf_cli
from .loss_flags import FlagError
from .selector_flags import SelectorSpec, parse_selector_flags, selector_flags_help
from .version import UnsupportedVersionError, check_openrlhf_version

PROG = "rlplugins.integrations.openrlhf.train_dpo"
OPENRLHF_MODULE = "openrlhf.cli.train_dpo"


def install_selector(spec: SelectorSpec) -> None:
    """Patch OpenRLHF's source modules so that its DPO CLI trains with ``spec``'s selector."""
    import openrlhf.datasets as datasets
    import openrlhf.trainer.dpo_trainer as dpo_trainer

    from .dpo_dataset import RewardDataset, reward_dataset_with_column
    from .dpo_trainer import SageDPOTrainer

    dpo_trainer.DPOTrainer = SageDPOTrainer
    column = spec.difficulty_key or spec.pass_rate_key
    datasets.RewardDataset = reward_dataset_with_column(column) if column else RewardDataset
    patch_hierarchize(lambda args: setattr(args, "rlplugins_selection", spec.to_namespace()))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(selector_flags_help() + "\n\nOpenRLHF's flags:\n")
    try:
        check_openrlhf_version()
        spec, rest = parse_selector_flags(argv)
    except (FlagError, UnsupportedVersionError) as exc:
        fail(PROG, str(exc))
    if spec is not None:
        install_selector(spec)
    run_openrlhf_cli(OPENRLHF_MODULE, rest)


if __name__ == "__main__":
    main()
