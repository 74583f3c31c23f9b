"""The ``rlplugins verl-smoke`` run: veRL's packaged config + the user's overrides + the CPU overrides, the tiny
model, one rollout batch, and ``ActorRolloutRefWorker(role="actor")``: ``init_model`` -> ``compute_log_prob`` ->
``update_actor`` x steps. veRL is imported inside ``run`` only, after the CPU shims' environment is set.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from rlplugins.integrations.tiny_llama import VOCAB, build_tiny_llama

from .cpu_platform import init_gloo, install_cpu_platform, register_cpu_engine, set_single_process_env

BATCH = 4  # sequences per update: one mini-batch of two micro-batches
PROMPT_LEN = 6  # left-padded
RESPONSE_LEN = 5  # right-padded


def cpu_overrides(model_dir: str) -> list[str]:
    """What veRL 0.9.1's actor worker needs to run on CPU with the tiny model (with the shims of ``cpu_platform``)."""
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


def build_tiny_model(directory: Path, seed: int) -> None:
    """The shared tiny random Llama and tokenizer (``rlplugins.integrations.tiny_llama``), saved like a hub
    checkpoint; nothing is downloaded."""
    build_tiny_llama(str(directory), seed)


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
    set_single_process_env()
    import torch

    torch.manual_seed(seed)
    install_cpu_platform()  # imports verl (and so runs the verl.plugins entry points) after the env is set
    register_cpu_engine()
    from rlplugins.integrations.verl.version import check_verl_version

    check_verl_version()  # a clear message instead of "Unsupported loss mode" when veRL is not 0.9.1

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

        init_gloo()
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
