"""``rlplugins verl-smoke``: veRL 0.9.1's real actor worker, on CPU, for a few update steps.

It composes veRL's packaged ``ppo_trainer`` config with the user's own overrides (the flags of their launch
script), builds a tiny random Llama in a temporary directory (nothing is downloaded), and runs
``ActorRolloutRefWorker(role="actor")``: ``init_model`` -> ``compute_log_prob`` -> ``update_actor`` x steps,
with FSDP2 over gloo in this one process. The policy loss is whatever ``actor.policy_loss.loss_mode``
selects, reached through veRL's own ``ppo_loss``, so the check covers config instantiation, registration,
the call contract and the metrics, before any GPU hour is spent.

This module is the command line and the report; the run is ``smoke_run``, the CPU shims (a CPU platform, CPU
engine registration, gloo process group, memory-stat stubs) ``cpu_platform``, the tiny model
``rlplugins.integrations.tiny_llama`` (shared with the OpenRLHF tests), the two-rank mode ``smoke_dp``. veRL is
imported only inside ``main`` so that the shims' environment is in place first and ``--help`` works without veRL.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

# The run's names stay importable from here (smoke_dp, tests and users reach them as smoke.<name>).
from .cpu_platform import free_port as _free_port  # noqa: F401
from .cpu_platform import init_gloo as _init_gloo  # noqa: F401
from .cpu_platform import install_cpu_platform as _install_cpu_platform  # noqa: F401
from .cpu_platform import register_cpu_engine as _register_cpu_engine  # noqa: F401
from .cpu_platform import set_single_process_env as _set_single_process_env  # noqa: F401
from .smoke_run import (  # noqa: F401
    BATCH,
    PROMPT_LEN,
    RESPONSE_LEN,
    VOCAB,
    _scalar,
    build_tiny_model,
    compose_config,
    cpu_overrides,
    make_batch,
    rollout_batch,
    run,
)

# Keys the smoke run must own on CPU; user overrides of these (or below them) are reported and dropped.
# Everything else the user passes (policy_loss.*, loss_agg_mode, clip ratios, tau_*, entropy/KL settings,
# ppo_epochs, ...) is applied as given.
CONTROLLED_PREFIXES: tuple[str, ...] = (
    "actor_rollout_ref.model.path",
    "actor_rollout_ref.model.tokenizer_path",
    "actor_rollout_ref.model.use_fused_kernels",
    "actor_rollout_ref.model.fused_kernel_options",
    "actor_rollout_ref.model.override_config",
    "actor_rollout_ref.model.enable_gradient_checkpointing",
    "actor_rollout_ref.model.lora",
    "actor_rollout_ref.model.lora_rank",
    "actor_rollout_ref.actor.strategy",
    "actor_rollout_ref.actor.use_torch_compile",
    "actor_rollout_ref.actor.fsdp_config",
    "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.ppo_micro_batch_size",
    "actor_rollout_ref.actor.use_dynamic_bsz",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
    "actor_rollout_ref.actor.optim",
    "actor_rollout_ref.actor.checkpoint",
    "actor_rollout_ref.actor.profiler",
    "actor_rollout_ref.actor.ulysses_sequence_parallel_size",
    "actor_rollout_ref.rollout",
    "actor_rollout_ref.ref",
    "trainer",
    "data",
    "reward",
    "critic",
    "global_profiler",
    "ray_kwargs",
    "transfer_queue",
)

# Hard-clipping losses: at step 2 they may clip every token and rightly give a zero gradient.
CLIPPING_MODES = ("vanilla", "rlp_ppo_clip")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="Hydra overrides exactly as in your veRL launch script, e.g. "
        "actor_rollout_ref.actor.policy_loss._target_=rlplugins.integrations.verl.MaspoPolicyLossConfig "
        "actor_rollout_ref.actor.policy_loss.loss_mode=maspo +actor_rollout_ref.actor.policy_loss.alpha=0.5. "
        "Keys the CPU run must own (model path, FSDP, batch sizes, rollout, trainer, data, ...) are reported "
        "and ignored.",
    )
    parser.add_argument("--steps", type=int, default=2, help="update_actor calls on the same rollout batch (default 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the random model and batch (default 0)")
    parser.add_argument(
        "--rollout-is-weights",
        action="store_true",
        help="also send random per-token rollout_is_weights, as veRL's rollout correction does",
    )
    parser.add_argument("--json", metavar="PATH", default=None, help="write the per-step metrics to this JSON file")
    from .smoke_dp import add_dp_arguments  # the data-parallel mode lives in its own module

    add_dp_arguments(parser)


def override_key(override: str) -> str:
    """``+a.b=1`` -> ``a.b``; ``~a.b`` -> ``a.b``."""
    key = override.split("=", 1)[0].strip()
    return key.lstrip("+~")


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Return (kept, ignored): ignored overrides touch a key the CPU run must own."""
    kept, ignored = [], []
    for item in overrides:
        key = override_key(item)
        owned = any(key == p or key.startswith(p + ".") for p in CONTROLLED_PREFIXES)
        (ignored if owned else kept).append(item)
    return kept, ignored


def _report(result: dict[str, Any], ignored: list[str]) -> list[str]:
    """Print the metrics table; return the list of failed checks."""
    steps = result["steps"]
    print(f"loss_mode={result['loss_mode']}  ->  {result['loss_fn']}  (policy_loss: {result['policy_loss_config']})")
    if ignored:
        print("ignored on CPU (owned by the smoke run): " + " ".join(ignored))
    # everything but throughput/timing (perf/*, mfu): actor/*, grad_norm, loss, lr, kl_loss, kl_coef, ...
    keys = sorted({k for s in steps for k in s if not k.startswith("perf/") and k != "mfu"})
    width = max(len(k) for k in keys) if keys else 10
    print(f"{'metric':<{width}}  " + "  ".join(f"{'step ' + str(i + 1):>12}" for i in range(len(steps))))
    for key in keys:
        print(f"{key:<{width}}  " + "  ".join(f"{s.get(key, float('nan')):>12.6g}" for s in steps))
    failed = []
    bad = sorted({k for s in steps for k, v in s.items() if not math.isfinite(v)})
    if bad:
        failed.append(f"non-finite metrics: {', '.join(bad)}")
    if len(steps) >= 2 and not steps[1].get("actor/ppo_kl", 0.0) > 0.0:
        failed.append("actor/ppo_kl is not > 0 at step 2: the policy did not move or the loss reports no KL")
    if len(steps) >= 2 and not steps[1].get("grad_norm", 0.0) > 0.0:
        clipped = steps[1].get("actor/pg_clipfrac", 0.0) + steps[1].get("actor/pg_clipfrac_lower", 0.0)
        if result["loss_mode"] in CLIPPING_MODES and clipped >= 1.0:
            # The large smoke-run step moves every ratio out of the clip range: no gradient is the right answer.
            print("note: grad_norm is 0 at step 2 because the PPO clip clipped every token (pg_clipfrac = 1)")
        else:
            failed.append("grad_norm is not > 0 at step 2")
    print("checks: " + ("ok" if not failed else "FAILED\n  " + "\n  ".join(failed)))
    return failed


def main(args: argparse.Namespace) -> int:
    kept, ignored = split_overrides(list(args.overrides))
    # find_spec, not import: veRL must be imported only after run() has set the single-process environment.
    if importlib.util.find_spec("verl") is None:
        print(
            "rlplugins verl-smoke needs veRL 0.9.1 in this environment: pip install 'rlplugins[verl]' "
            "(in this repository: make venv-verl, then .venv-verl/bin/rlplugins verl-smoke ...)",
            file=sys.stderr,
        )
        return 2
    if getattr(args, "nproc_per_node", None) is not None:
        from . import smoke_dp

        if ignored:
            print("ignored on CPU (owned by the smoke run): " + " ".join(ignored))
        return smoke_dp.main(args, kept)
    try:
        result = run(kept, steps=args.steps, seed=args.seed, rollout_is_weights=args.rollout_is_weights)
    except Exception as exc:  # a configuration error is the most likely outcome: say so plainly
        print(f"rlplugins verl-smoke: the worker run failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}, indent=2))
        return 1
    result["ignored_overrides"] = ignored
    failed = _report(result, ignored)
    result["failed_checks"] = failed
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if failed else 0
