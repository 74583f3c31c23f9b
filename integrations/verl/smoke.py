"""``rlplugins verl-smoke``: veRL 0.9.1's real actor worker, on CPU, for a few update steps.

It composes veRL's packaged ``ppo_trainer`` config with the user's own overrides (the flags of their launch
script), builds a tiny random Llama in a temporary directory (nothing is downloaded), and runs
``ActorRolloutRefWorker(role="actor")``: ``init_model`` -> ``compute_log_prob`` -> ``update_actor`` x steps,
with FSDP2 over gloo in this one process. The policy loss is whatever ``actor.policy_loss.loss_mode``
selects, reached through veRL's own ``ppo_loss``, so the check covers config instantiation, registration,
the call contract and the metrics, before any GPU hour is spent.

The CPU shims (a CPU platform, CPU engine registration, gloo process group, memory-stat stubs, eager attention)
live in this module alone; nothing else in rlplugins touches veRL's device handling. veRL is imported only
inside ``main`` so that the shims' environment is in place first and ``--help`` works without veRL.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import socket
import sys
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Any

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

BATCH = 4  # sequences per update: one mini-batch of two micro-batches
PROMPT_LEN = 6  # left-padded
RESPONSE_LEN = 5  # right-padded
VOCAB = 128


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


def cpu_overrides(model_dir: str) -> list[str]:
    """What veRL 0.9.1's actor worker needs to run on CPU with the tiny model
    (see docs/verl.md#check-a-configuration-on-cpu-first)."""
    a = "actor_rollout_ref"
    return [
        f"{a}.model.path={model_dir}",
        f"{a}.model.use_fused_kernels=False",  # FSDP2 + fused kernels on CPU: mixed Tensor/DTensor error
        f"+{a}.model.override_config.attn_implementation=eager",  # default flash_attention_2 needs flash-attn
        f"{a}.actor.strategy=fsdp2",  # FSDP1's sync_module_states needs GPU tensors
        f"{a}.actor.use_torch_compile=False",
        f"{a}.actor.fsdp_config.use_torch_compile=False",
        f"{a}.actor.fsdp_config.model_dtype=fp32",
        f"+{a}.actor.fsdp_config.mixed_precision={{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}}",
        f"{a}.actor.ppo_mini_batch_size={BATCH}",
        f"{a}.actor.ppo_micro_batch_size_per_gpu={BATCH // 2}",
        f"{a}.actor.use_dynamic_bsz=False",
        # A large step so that the second update is visibly off-policy (ppo_kl > 0, gates active).
        f"{a}.actor.optim.lr=1e-2",
        f"{a}.rollout.log_prob_micro_batch_size_per_gpu={BATCH // 2}",
        f"{a}.rollout.n=1",
    ]


# ----------------------------------------------------------------------------------------------- CPU shims


def _free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _set_single_process_env() -> None:
    # A one-rank "cluster": veRL's Worker reads these; MASTER_PORT must be free on this machine.
    os.environ.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        VERL_PLATFORM="cpu",
        TOKENIZERS_PARALLELISM="false",
    )


def _install_cpu_platform() -> None:
    """veRL 0.9.1 ships cuda/npu/rocm platforms only; register and select a CPU one (gloo backend)."""
    from contextlib import contextmanager

    import torch
    from verl.plugin.platform.platform_base import PlatformBase
    from verl.plugin.platform.platform_manager import PlatformRegistry, set_platform

    if PlatformRegistry.get("cpu") is None:

        @PlatformRegistry.register(platform="cpu")
        class PlatformCPU(PlatformBase):  # noqa: F841  (registered by the decorator)
            device_name = "cpu"
            vendor_name = "cpu"
            device_module = torch.cpu

            def is_available(self) -> bool:
                return True

            def current_device(self):
                return "cpu"

            def device_count(self) -> int:
                return 1

            def set_device(self, device_index) -> None:
                return None

            def synchronize(self, device_index=None) -> None:
                return None

            def manual_seed(self, seed: int) -> None:
                torch.manual_seed(seed)

            def manual_seed_all(self, seed: int) -> None:
                torch.manual_seed(seed)

            def set_allocator_settings(self, settings: str) -> None:
                return None

            def empty_cache(self) -> None:
                return None

            def get_device_capability(self, device_index: int = 0):
                return (None, None)

            def communication_backend_name(self) -> str:
                return "gloo"

            def visible_devices_envvar(self) -> str:
                return "CPU_VISIBLE_DEVICES"

            @contextmanager
            def nvtx_range(self, msg: str):
                yield

            def profiler_start(self) -> None:
                return None

            def profiler_stop(self) -> None:
                return None

            def ray_resource_name(self) -> str:
                return "CPU"

            def ray_noset_envvars(self) -> list[str]:
                return []

            def is_ipc_supported(self) -> bool:
                return False

            def cudart(self):
                return None

    set_platform(PlatformRegistry.get("cpu")())

    # veRL calls <device module>.empty_cache() and its memory statistics directly; torch.cpu lacks them.
    for name in ("max_memory_allocated", "max_memory_reserved", "memory_allocated", "memory_reserved"):
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, lambda *args, **kwargs: 0)
    for name in ("empty_cache", "reset_peak_memory_stats"):
        if not hasattr(torch.cpu, name):
            setattr(torch.cpu, name, lambda *args, **kwargs: None)


def _register_cpu_engine() -> None:
    """The FSDP engine registers for cuda/npu only; the same class runs on CPU with gloo."""
    from verl.workers.engine.base import EngineRegistry
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngineWithLMHead

    registry = EngineRegistry._engines.setdefault("language_model", {})
    missing = [b for b in ("fsdp", "fsdp2") if "cpu" not in registry.get(b, {})]
    if missing:
        EngineRegistry.register(model_type="language_model", backend=missing, device="cpu")(FSDPEngineWithLMHead)


def _init_gloo() -> None:
    # Initialised here, before the worker: otherwise veRL builds the backend string "cpu:gloo,cpu:gloo".
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=0, world_size=1)


# ----------------------------------------------------------------------------------------------- model + data


def build_tiny_model(directory: Path, seed: int) -> None:
    """A random 2-layer Llama (~99K parameters) and a word-level tokenizer, saved like a hub checkpoint."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{f"t{i}": i for i in range(4, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    ).save_pretrained(directory)


def rollout_batch(prompt_lens: list[int], response_lens: list[int], seq_adv: list[float], g) -> dict[str, Any]:
    """A GRPO-shaped batch as the trainer sends it: left-padded prompts, right-padded responses, one advantage
    per sequence broadcast over its tokens. Token ids are drawn from ``g``, row by row."""
    import torch

    B = len(prompt_lens)
    prompts = torch.zeros(B, PROMPT_LEN, dtype=torch.long)
    responses = torch.zeros(B, RESPONSE_LEN, dtype=torch.long)
    prompt_mask = torch.zeros(B, PROMPT_LEN, dtype=torch.long)
    response_mask = torch.zeros(B, RESPONSE_LEN, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_lens, response_lens, strict=True)):
        prompts[i, PROMPT_LEN - p :] = torch.randint(4, VOCAB, (p,), generator=g)
        prompt_mask[i, PROMPT_LEN - p :] = 1
        responses[i, :r] = torch.randint(4, VOCAB, (r,), generator=g)
        response_mask[i, :r] = 1
    attention_mask = torch.cat([prompt_mask, response_mask], dim=1)
    return {
        "prompts": prompts,
        "responses": responses,
        "input_ids": torch.cat([prompts, responses], dim=1),
        "attention_mask": attention_mask,
        "position_ids": torch.clamp(torch.cumsum(attention_mask, dim=1) - 1, min=0),
        "response_mask": response_mask,
        "advantages": torch.tensor(seq_adv)[:, None] * response_mask,
    }


def make_batch(seed: int) -> dict[str, Any]:
    """The smoke run's rollout batch: 4 sequences of different lengths, plus random per-token rollout_is_weights."""
    import torch

    g = torch.Generator().manual_seed(seed + 1)
    # The longer responses carry the negative advantages (as wrong answers tend to), so after one update most
    # valid tokens lost probability and the second update's ppo_kl = mean(logp_old - logp) is positive.
    batch = rollout_batch([6, 4, 5, 3], [5, 3, 4, 2], [-1.0, 1.0, -0.5, 0.5], g)
    batch["rollout_is_weights"] = (0.5 + torch.rand(BATCH, RESPONSE_LEN, generator=g)) * batch["response_mask"]
    return batch


def _scalar(value: Any) -> float:
    if isinstance(value, (list, tuple)):
        value = value[-1] if value else float("nan")
    if hasattr(value, "item"):
        value = value.item()
    return float(value)


# ----------------------------------------------------------------------------------------------- the run


def compose_config(overrides: list[str], model_dir: str):
    """veRL's packaged ppo_trainer config + the user's overrides + the CPU overrides (which win)."""
    import verl
    from hydra import compose, initialize_config_dir

    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose("ppo_trainer", overrides=[*overrides, *cpu_overrides(model_dir)])


def run(overrides: list[str], *, steps: int = 2, seed: int = 0, rollout_is_weights: bool = False) -> dict[str, Any]:
    """Run the worker; return {"loss_mode", "loss_fn", "steps": [ {metric: float} per update ]}."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    _set_single_process_env()
    import torch

    torch.manual_seed(seed)
    _install_cpu_platform()  # imports verl (and so runs the verl.plugins entry points) after the env is set
    _register_cpu_engine()
    from rlplugins.integrations.verl.compat import require_supported_verl

    require_supported_verl()  # a clear message instead of "Unsupported loss mode" when veRL is not 0.9.1

    from verl import DataProto
    from verl.trainer.ppo.core_algos import get_policy_loss_fn
    from verl.utils import tensordict_utils as tu
    from verl.utils.config import omega_conf_to_dataclass
    from verl.workers.engine_workers import ActorRolloutRefWorker
    from verl.workers.utils.padding import left_right_2_no_padding, no_padding_2_padding

    with tempfile.TemporaryDirectory(prefix="rlplugins-verl-smoke-") as tmp:
        build_tiny_model(Path(tmp), seed)
        cfg = compose_config(overrides, tmp)
        # Configuration-time checks first, as veRL's driver does: instantiating the actor config imports a
        # policy_loss._target_ and validates its fields; then the loss must be registered.
        actor_config = omega_conf_to_dataclass(cfg.actor_rollout_ref.actor)
        loss_mode = actor_config.policy_loss.get("loss_mode", "vanilla")
        loss_fn = get_policy_loss_fn(loss_mode)
        use_kl_loss = bool(actor_config.use_kl_loss)

        _init_gloo()
        worker = ActorRolloutRefWorker(cfg.actor_rollout_ref, role="actor")
        worker.init_model()

        tensors = make_batch(seed)
        weights = tensors.pop("rollout_is_weights")

        def batch(extra: dict[str, torch.Tensor]):
            td = DataProto.from_single_dict({**tensors, **extra}, meta_info={"temperature": 1.0}).to_tensordict()
            return left_right_2_no_padding(td)

        td = batch({})
        tu.assign_non_tensor(td, calculate_entropy=False, compute_loss=False)
        old_log_probs = no_padding_2_padding(tu.get(worker.compute_log_prob(td), "log_probs"), td).detach()

        extra = {"old_log_probs": old_log_probs}
        if use_kl_loss:  # the reference policy is the initial one
            extra["ref_log_prob"] = old_log_probs.clone()
        if rollout_is_weights:
            extra["rollout_is_weights"] = weights
        history = []
        for _ in range(steps):
            # train_mini_batch pops these non-tensor keys: a fresh TensorDict per update.
            td = batch(extra)
            tu.assign_non_tensor(
                td,
                calculate_entropy=True,
                distillation_use_topk=False,
                distillation_only=False,
                global_batch_size=BATCH,
                mini_batch_size=BATCH,
                epochs=1,
                seed=seed + 42,
                dataloader_kwargs={"shuffle": False},
                compute_loss=True,
            )
            metrics = tu.get(worker.update_actor(td), "metrics")
            history.append({key: _scalar(value) for key, value in sorted(metrics.items())})
    return {
        "loss_mode": loss_mode,
        "loss_fn": f"{loss_fn.__module__}.{loss_fn.__qualname__}",
        "policy_loss_config": type(actor_config.policy_loss).__qualname__,
        "steps": history,
    }


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
