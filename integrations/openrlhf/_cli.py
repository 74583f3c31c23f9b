"""What both wrapper CLIs share: hook OpenRLHF's ``hierarchize`` and run OpenRLHF's own CLI module.

OpenRLHF builds its parser under ``if __name__ == "__main__":`` and ends with ``train(args)``, so the only
way to reuse its CLI unchanged is to run that module as ``__main__`` (``runpy``). Its main block imports
``openrlhf.utils.config.hierarchize`` at call time, right after ``parse_args()``: wrapping that function is
where our parsed choices join OpenRLHF's ``args`` (which then travel with ``strategy.args``). ``runpy``
re-executes the CLI's own imports, so we patch source modules (``openrlhf.utils.config``,
``openrlhf.trainer.*``), never the CLI module.
"""

from __future__ import annotations

import runpy
import sys
from types import SimpleNamespace
from typing import Callable, NoReturn, Sequence

PostHook = Callable[[SimpleNamespace], None]


def patch_hierarchize(post: PostHook) -> None:
    """Make ``openrlhf.utils.config.hierarchize`` call ``post(args)`` on its result; re-patching replaces ``post``."""
    import openrlhf.utils.config as config

    original = getattr(config.hierarchize, "_rlplugins_original", config.hierarchize)

    def hierarchize(args):  # same signature as OpenRLHF's
        nested = original(args)
        post(nested)
        return nested

    hierarchize._rlplugins_original = original
    hierarchize.__doc__ = original.__doc__
    config.hierarchize = hierarchize


def run_openrlhf_cli(module: str, argv: Sequence[str]) -> None:
    """Run ``python -m <module> argv`` in this process (``sys.argv`` as OpenRLHF's parser expects it)."""
    sys.argv = [module, *argv]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def fail(prog: str, message: str) -> NoReturn:
    """Exit like argparse does on a bad flag: usage line, message, status 2."""
    print(f"usage: python -m {prog} [OpenRLHF flags] [rlplugins flags]\n{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)
