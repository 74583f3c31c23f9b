"""``rlplugins verl-smoke --nproc-per-node N``: the same update on 1 rank and on N data-parallel ranks.

veRL runs the policy loss on every data-parallel rank, each on its share of the mini-batch, and FSDP averages
the gradients over the ranks; a loss is right under DP only if it normalises by the *global* counts that
``ppo_loss`` puts in ``config.global_batch_info`` (tokens and sequences of the whole mini-batch across ranks)
and multiplies by ``dp_size``. This mode checks that with veRL's real ``ActorRolloutRefWorker`` (FSDP2, gloo,
CPU): for each case (a policy loss and an aggregation mode) it runs one ``update_actor`` on a fixed 8-sequence
batch, once in a 1-process ``torchrun`` and once in an N-process one, and compares

- the parameters after the update (gathered from the FSDP shards): they must agree to float tolerance;
- the metrics veRL returns (``actor/pg_loss``, ``loss``, ``grad_norm``, our gate statistics, ...): they must
  agree too, since both runs see the same micro-batches (see docs/verl.md#data-parallelism-what-global-means).

Settings that make the check sharp: the optimizer is plain SGD (Adam's first step, ~lr*sign(g), would hide a
gradient off by a constant factor) with no gradient clipping (clipping would rescale such a gradient back);
the old log-probs are the policy's own plus a fixed perturbation, so ratios differ from 1 and the gates and
clips are active; the per-token ``rollout_is_weights`` are random; the sequences have different lengths, so
the ranks hold different token counts; micro-batches of 2 sequences per rank, so each rank accumulates
gradients over several micro-batches. The batch is split across ranks by veRL's own dispatch split
(``verl.protocol.BatchData.chunk``), as the trainer's ``update_actor`` call does.

Each rank runs this module (``python -m torch.distributed.run ... -m rlplugins.integrations.verl.smoke_dp
SPEC.json``); ``main`` (the CLI) builds the tiny model once, launches both runs and compares.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from . import smoke_run
from .cpu_platform import install_cpu_platform, register_cpu_engine

DP_BATCH = 8  # sequences in the mini-batch (one optimizer step), split across the ranks
DP_MICRO = 2  # ppo_micro_batch_size_per_gpu: gradient accumulation over DP_BATCH / (ranks * DP_MICRO) micro-batches
DP_LR = 0.5  # SGD step; large enough that the update dwarfs float noise
LOSSES = ("maspo", "rlp_ppo_clip")
AGG_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
# Pass criteria. Parameters: |p_N - p_1| <= PARAM_ATOL + PARAM_RTOL * max|p_1 - p_0| (the update's own size).
PARAM_ATOL, PARAM_RTOL = 1e-6, 1e-4
METRIC_ATOL, METRIC_RTOL = 1e-5, 1e-4
# Timing and memory metrics are not expected to agree.
NOT_COMPARED_PREFIXES = ("perf/", "mfu")

PL = "actor_rollout_ref.actor.policy_loss"


def add_dp_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data-parallel check (--nproc-per-node N)")
    group.add_argument(
        "--nproc-per-node", type=int, default=None, metavar="N",
        help="compare one update on N data-parallel CPU ranks (torchrun, gloo, FSDP2) with the same update on 1 rank "
        "(an 8-sequence batch with rollout_is_weights, SGD; --steps and --rollout-is-weights do not apply)",
    )
    group.add_argument(
        "--dp-cases", default=None, metavar="CASES",
        help="with --nproc-per-node: comma-separated LOSS:AGG_MODE cases (e.g. maspo:token-mean), or 'all' for "
        f"{{{','.join(LOSSES)}}} x the five aggregation modes; default: the loss and mode your overrides select",
    )


def parse_cases(text: str | None) -> list[tuple[str, str] | None]:
    """``None`` -> [None] (the user's own config); ``all`` -> the full matrix; else LOSS:MODE items."""
    if text is None:
        return [None]
    if text == "all":
        return [(loss, mode) for loss in LOSSES for mode in AGG_MODES]
    cases: list[tuple[str, str] | None] = []
    for item in text.split(","):
        loss, sep, mode = item.strip().partition(":")
        if not sep or not loss or mode not in AGG_MODES:
            raise ValueError(f"--dp-cases: {item!r} is not LOSS:AGG_MODE with AGG_MODE one of {', '.join(AGG_MODES)}")
        cases.append((loss, mode))
    return cases


def case_overrides(case: tuple[str, str] | None) -> list[str]:
    if case is None:
        return []
    loss, mode = case
    out = [f"{PL}.loss_mode={loss}", f"actor_rollout_ref.actor.loss_agg_mode={mode}"]
    if loss == "maspo":
        out.insert(0, f"{PL}._target_=rlplugins.integrations.verl.MaspoPolicyLossConfig")
    return out


def case_name(case: tuple[str, str] | None) -> str:
    return "user-config" if case is None else f"{case[0]}:{case[1]}"


def dp_overrides() -> list[str]:
    """On top of smoke_run.cpu_overrides: the DP batch geometry and an optimizer that shows gradient scale."""
    a = "actor_rollout_ref.actor"
    return [
        f"{a}.ppo_mini_batch_size={DP_BATCH}",  # global, as in the trainer; the worker divides by dp_size
        f"{a}.ppo_micro_batch_size_per_gpu={DP_MICRO}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={DP_MICRO}",
        f"{a}.optim.optimizer=SGD",
        f"{a}.optim.lr={DP_LR}",
        f"{a}.optim.weight_decay=0.0",
        f"{a}.optim.clip_grad=1000000.0",
        f"{a}.ppo_epochs=1",
        f"{a}.shuffle=False",
    ]


def make_dp_batch(seed: int) -> dict[str, Any]:
    """8 sequences of different prompt/response lengths (the ranks get different token counts), plus fixed
    per-token rollout_is_weights and old-log-prob offsets."""
    import torch

    g = torch.Generator().manual_seed(seed + 11)
    # with 2 ranks: 14 response tokens on rank 0, 13 on rank 1
    batch = smoke_run.rollout_batch([6, 4, 5, 3, 2, 6, 4, 5], [5, 3, 4, 2, 5, 1, 5, 2],
                          [-1.0, 1.0, -0.5, 0.5, 1.5, -1.5, 0.8, -0.3], g)
    mask = batch["response_mask"]
    return {
        **batch,
        "rollout_is_weights": (0.5 + torch.rand(mask.shape, generator=g)) * mask,
        # old = logp + delta: ratios exp(-delta) in [0.55, 1.82], so clips and gates are active in the update
        "old_log_prob_offset": (torch.rand(mask.shape, generator=g) * 1.2 - 0.6) * mask,
    }


# ----------------------------------------------------------------------------------------------- one rank


def _full_parameters(worker) -> dict[str, Any]:
    """Every parameter as a full tensor (a collective: all ranks call it, in the same order)."""
    from torch.distributed.tensor import DTensor

    out = {}
    for name, param in worker.actor.engine.module.named_parameters():
        full = param.full_tensor() if isinstance(param, DTensor) else param
        out[name] = full.detach().to("cpu").clone()
    return out


def _rank_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    os.environ.setdefault("VERL_PLATFORM", "cpu")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    torch.set_num_threads(1)  # N processes share the machine's cores
    torch.manual_seed(spec["seed"])
    install_cpu_platform()
    register_cpu_engine()
    from rlplugins.integrations.verl.version import check_verl_version

    check_verl_version()
    import torch.distributed as dist
    from hydra import compose, initialize_config_dir
    import verl
    from verl import DataProto
    from verl.protocol import BatchData
    from verl.utils import tensordict_utils as tu
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    # Before the worker: otherwise veRL builds the backend string "cpu:gloo,cpu:gloo" (see cpu_platform.init_gloo).
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tensors = make_dp_batch(spec["seed"])
    weights = tensors.pop("rollout_is_weights")
    offset = tensors.pop("old_log_prob_offset")

    def split(extra: dict[str, torch.Tensor]):
        """The full batch in veRL's jagged layout, then this rank's share by veRL's own dispatch split."""
        td = DataProto.from_single_dict({**tensors, **extra}, meta_info={"temperature": 1.0}).to_tensordict()
        # The split consolidates (and locks) each share, which Ray would serialise; unlock it as deserialising does.
        return BatchData(left_right_2_no_padding(td)).chunk(world)[rank].unlock_()

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    results = {}
    for case in spec["cases"]:
        overrides = [*spec["overrides"], *case["overrides"], *smoke_run.cpu_overrides(spec["model_dir"]),
                     *dp_overrides()]
        with initialize_config_dir(config_dir=config_dir, version_base=None):
            cfg = compose("ppo_trainer", overrides=overrides)
        actor_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        worker = ActorRolloutRefWorker(cfg.actor_rollout_ref, role="actor")
        worker.init_model()
        before = _full_parameters(worker)

        td = split({})
        tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False)
        local = no_padding_2_padding(tu.get(worker.compute_log_prob(td), "log_probs"), td).detach()
        gathered = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(gathered, local.contiguous())
        old_log_probs = torch.cat(gathered) + offset

        extra = {"old_log_probs": old_log_probs, "rollout_is_weights": weights}
        if actor_config.use_kl_loss:
            extra["ref_log_prob"] = torch.cat(gathered).clone()
        td = split(extra)
        tu.assign_non_tensor(
            td, calculate_entropy=True, distillation_use_topk=False, distillation_only=False,
            # global sizes, as the trainer sends them (trainer_base._update_actor): the worker divides by dp_size
            global_batch_size=DP_BATCH, mini_batch_size=DP_BATCH, epochs=1, seed=spec["seed"] + 42,
            dataloader_kwargs={"shuffle": False}, compute_loss=True,
        )
        output = worker.update_actor(td)
        after = _full_parameters(worker)
        if rank == 0:
            metrics = {k: smoke_run._scalar(v) for k, v in sorted(tu.get(output, "metrics").items())}
            path = Path(spec["out_dir"]) / f"case{len(results)}.pt"
            torch.save({"before": before, "after": after}, path)
            results[case["name"]] = {
                "params": str(path),
                "metrics": metrics,
                "loss_mode": actor_config.policy_loss.get("loss_mode", "vanilla"),
                "loss_agg_mode": actor_config.loss_agg_mode,
                "tokens_per_rank": None,
            }
        mask = td["response_mask"]
        tokens = torch.tensor([float((mask.values() if mask.is_nested else mask).sum())])
        counts = [torch.zeros(1) for _ in range(world)]
        dist.all_gather(counts, tokens)
        if rank == 0:
            results[case["name"]]["tokens_per_rank"] = [int(c.item()) for c in counts]
        del worker
        dist.barrier()
    if rank == 0:
        Path(spec["out_dir"], "results.json").write_text(json.dumps({"world_size": world, "cases": results}, indent=2))
    dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------------------- launcher


def launch(nproc: int, spec: dict[str, Any], work: Path, timeout: float = 1200) -> dict[str, Any]:
    """Run the cases under ``torchrun --nproc-per-node nproc``; return rank 0's results.json."""
    out_dir = work / f"ranks{nproc}"
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps({**spec, "out_dir": str(out_dir)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "VERL_PLATFORM": "cpu"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "rlplugins.integrations.verl.smoke_dp", str(spec_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=work)
    result_path = out_dir / "results.json"
    if proc.returncode != 0 or not result_path.exists():
        tail = (proc.stdout[-3000:] + "\n" + proc.stderr[-6000:]).strip()
        raise RuntimeError(f"the {nproc}-rank run failed (rc {proc.returncode}):\n{tail}")
    return json.loads(result_path.read_text())


def compare(one: dict[str, Any], many: dict[str, Any]) -> dict[str, Any]:
    """Per case: max parameter difference, the update's size, and the metrics that disagree."""
    import torch

    report = {}
    for name, ref in one["cases"].items():
        got = many["cases"][name]
        a, b = torch.load(ref["params"]), torch.load(got["params"])
        update = max(float((a["after"][k] - a["before"][k]).abs().max()) for k in a["after"])
        start = max(float((a["before"][k] - b["before"][k]).abs().max()) for k in a["before"])
        diff = max(float((a["after"][k] - b["after"][k]).abs().max()) for k in a["after"])
        keys = sorted(k for k in set(ref["metrics"]) | set(got["metrics"]) if not k.startswith(NOT_COMPARED_PREFIXES))
        bad = {}
        for k in keys:
            x, y = ref["metrics"].get(k, math.nan), got["metrics"].get(k, math.nan)
            if not (math.isfinite(x) and math.isfinite(y) and abs(x - y) <= METRIC_ATOL + METRIC_RTOL * abs(x)):
                bad[k] = (x, y)
        report[name] = {
            "loss_mode": ref["loss_mode"],
            "loss_agg_mode": ref["loss_agg_mode"],
            "max_param_diff": diff,
            "max_update": update,
            "max_initial_diff": start,
            "params_ok": diff <= PARAM_ATOL + PARAM_RTOL * update and update > 0.0 and start == 0.0,
            "metrics_compared": keys,
            "metrics_disagreeing": bad,
            "tokens_per_rank": got["tokens_per_rank"],
            "metrics_1": ref["metrics"],
            f"metrics_{many['world_size']}": got["metrics"],
        }
    return report


def run_dp_check(overrides: list[str], cases: list[tuple[str, str] | None], *, nproc: int = 2, seed: int = 0,
                 timeout: float = 1200) -> dict[str, Any]:
    """Build the tiny model once, run the cases on 1 and on ``nproc`` ranks, compare."""
    if nproc < 2:
        raise ValueError(f"--nproc-per-node must be >= 2 (it is compared with 1 rank), got {nproc}")
    if DP_BATCH % (nproc * DP_MICRO):
        raise ValueError(f"--nproc-per-node {nproc}: the {DP_BATCH}-sequence batch must split into micro-batches of "
                         f"{DP_MICRO} on every rank (use 2 or 4)")
    with tempfile.TemporaryDirectory(prefix="rlplugins-verl-dp-") as tmp:
        work = Path(tmp)
        smoke_run.build_tiny_model(work / "model", seed)
        spec = {"model_dir": str(work / "model"), "seed": seed, "overrides": overrides,
                "cases": [{"name": case_name(c), "overrides": case_overrides(c)} for c in cases]}
        one = launch(1, spec, work, timeout)
        many = launch(nproc, spec, work, timeout)
        return {"nproc": nproc, "cases": compare(one, many)}


def _report(result: dict[str, Any]) -> list[str]:
    n = result["nproc"]
    print(f"one update_actor, {DP_BATCH} sequences, micro-batch {DP_MICRO}/rank, SGD lr {DP_LR}: 1 rank vs {n} ranks")
    print(f"{'case':<40} {'max|p1-p' + str(n) + '|':>14} {'max|update|':>12} {'tokens/rank':>12}  metrics")
    failed = []
    for name, r in result["cases"].items():
        agreement = (f"DISAGREE: {', '.join(sorted(r['metrics_disagreeing']))}" if r["metrics_disagreeing"]
                     else f"{len(r['metrics_compared'])} agree")
        print(f"{name:<40} {r['max_param_diff']:>14.3e} {r['max_update']:>12.3e} "
              f"{','.join(map(str, r['tokens_per_rank'])):>12}  {agreement}")
        if not r["params_ok"]:
            failed.append(f"{name}: parameters differ by {r['max_param_diff']:.3e} (update {r['max_update']:.3e})")
        for k, (x, y) in r["metrics_disagreeing"].items():
            failed.append(f"{name}: metric {k} is {x!r} on 1 rank, {y!r} on {n}")
    print("checks: " + ("ok" if not failed else "FAILED\n  " + "\n  ".join(failed)))
    return failed


def main(args: argparse.Namespace, overrides: list[str]) -> int:
    try:
        cases = parse_cases(args.dp_cases)
        result = run_dp_check(overrides, cases, nproc=args.nproc_per_node, seed=args.seed)
    except Exception as exc:
        print(f"rlplugins verl-smoke --nproc-per-node: {type(exc).__name__}: {exc}", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}, indent=2))
        return 1
    failed = _report(result)
    result["failed_checks"] = failed
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(_rank_main(sys.argv[1]))
