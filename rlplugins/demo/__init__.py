"""`rlplugins demo`: a toy RLVR run on CPU, nothing downloaded, comparing policy losses.

A tiny GRU policy learns to reverse digit sequences from a binary verifiable reward
(``rlplugins.toy_rlvr``, shared with the tests), with GRPO group-normalised advantages and several off-policy
mini-batch updates per rollout batch. Every loss gets the same hyper-parameters, the same seeds (hence the
same initial weights, the same first batch and the same evaluation samples) and its published default config
unless ``--losses`` overrides it. The run prints three tables (outcomes; what each gate did; paired per-seed
differences against the baseline), writes ``demo.json`` and ``demo.png`` and says where.

One concern per module: ``specs`` (the ``--losses`` grammar), ``runner`` (worker processes), ``stats``
(summaries and paired differences), ``table``, ``plot``, ``report`` (the JSON), ``cli`` (arguments, main).

This is a toy: it shows the losses running through one real code path and how their gates behave
off-policy. It is not evidence about LLM-scale results.
"""

from .cli import DEFAULT_LOSSES, add_arguments, config_from_args, main, run_demo
from .report import SCHEMA, build_result, write_outputs
from .specs import LossSpec, parse_losses

__all__ = ["DEFAULT_LOSSES", "SCHEMA", "LossSpec", "add_arguments", "build_result", "config_from_args", "main",
           "parse_losses", "run_demo", "write_outputs"]
