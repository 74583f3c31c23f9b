"""DP driver: ``torchrun --nproc-per-node N rlp_dp_policy_loss_driver.py OUT_DIR MODEL_DIR`` runs one optimizer
step of a tiny OpenRLHF ``Actor`` under real DeepSpeed ZeRO-2 (gloo, CPU) per case, with the loss called exactly as
``ActorPPOTrainer.training_step`` calls it: micro-batches of 2 sequences, gradient accumulation, and the global
normalisers from OpenRLHF's own ``iter_grad_accum_global_norm`` (tokens and sequences of the whole optimizer step
across DP ranks, divided by the accumulation steps that DeepSpeed divides out).

The global batch (8 sequences of different lengths, fixed) is the same whatever N is; rank r trains on the
contiguous share r. Plain SGD without clipping, so ``(before - after) / lr`` is the gradient DeepSpeed applied
(averaged over ranks). Rank 0 writes ``case<i>.pt`` (parameters before/after) and ``results.json``.
"""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rlp_openrlhf_stubs  # noqa: E402

rlp_openrlhf_stubs.install()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

BATCH, MICRO, PROMPT, RESPONSE = 8, 2, 4, 6
LR = 0.5
WRONG = "wrong:dp_size-forgotten"
# (name, loss: rlplugins core name or "openrlhf" for OpenRLHF's own PolicyLoss, loss_agg_mode)
CASES = [
    ("maspo:token-mean", "maspo", "token-mean"),
    ("maspo:seq-mean-token-mean", "maspo", "seq-mean-token-mean"),
    ("ppo_clip:token-mean", "ppo_clip", "token-mean"),
    ("openrlhf-ppo:token-mean", "openrlhf", "token-mean"),
    # negative control: the global counts but dp_size=1, i.e. DeepSpeed's average over ranks is not undone
    (WRONG, "ppo_clip", "token-mean"),
]


def make_batch():
    g = torch.Generator().manual_seed(3)
    response_lens = [6, 2, 5, 3, 1, 6, 4, 2]  # 14 and 15 tokens on the two ranks' halves
    sequences = torch.randint(4, 120, (BATCH, PROMPT + RESPONSE), generator=g)
    attention_mask = torch.ones(BATCH, PROMPT + RESPONSE, dtype=torch.long)
    action_mask = torch.zeros(BATCH, RESPONSE, dtype=torch.bool)
    for i, r in enumerate(response_lens):
        action_mask[i, :r] = True
        attention_mask[i, PROMPT + r:] = 0
        sequences[i, PROMPT + r:] = 0
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.5, -0.8, 0.3, -1.2])[:, None].expand(BATCH, RESPONSE).clone()
    offset = (torch.rand(BATCH, RESPONSE, generator=g) * 1.2 - 0.6) * action_mask
    return sequences, attention_mask, action_mask, advantages, offset


def build_loss(loss: str, mode: str):
    from openrlhf.models.loss import PolicyLoss

    template = PolicyLoss(clip_eps_low=0.2, clip_eps_high=0.2, token_level_loss=mode == "token-mean")
    if loss == "openrlhf":
        return template
    from rlplugins.integrations.openrlhf.policy_loss import build_policy_loss

    return build_policy_loss(loss, template=template)


def skip_shm_comm_build() -> None:
    """DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel (``deepspeed_shm_comm``: minutes of
    g++ on 2 cores, on every fresh machine) inside ``init_distributed``. It only speeds up intra-node all-reduce;
    without it every collective goes through torch.distributed (gloo). ``RLPLUGINS_DS_SHM_COMM=1`` keeps it."""
    if os.environ.get("RLPLUGINS_DS_SHM_COMM") != "1":
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def main(out_dir: str, model_dir: str) -> None:
    import deepspeed
    from openrlhf.models import Actor
    from openrlhf.utils.loss_utils import iter_grad_accum_global_norm

    torch.set_num_threads(1)
    skip_shm_comm_build()
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    gas = BATCH // (MICRO * world)
    sequences, attention_mask, action_mask, advantages, offset = make_batch()
    share = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    strategy = SimpleNamespace(ds_device_mesh=None)  # OpenRLHF's helpers then use the default (all-rank) group
    results = {}
    for i, (name, loss, mode) in enumerate(CASES):
        torch.manual_seed(0)
        model = Actor(model_dir, attn_implementation="eager", param_dtype="bf16").float()
        with torch.no_grad():
            old = model(sequences, action_mask, attention_mask=attention_mask) + offset
        engine, *_ = deepspeed.initialize(
            model=model, optimizer=torch.optim.SGD(model.parameters(), lr=LR),
            config={"train_micro_batch_size_per_gpu": MICRO, "gradient_accumulation_steps": gas,
                    "zero_optimization": {"stage": 2}, "gradient_clipping": 0.0, "bf16": {"enabled": False},
                    "zero_allow_untested_optimizer": True, "steps_per_print": 10**9},
        )
        before = {k: v.detach().clone() for k, v in engine.module.named_parameters()}
        loss_fn = build_loss(loss, mode)
        micro = [slice(s, s + MICRO) for s in range(share.start, share.stop, MICRO)]
        for rows, info in iter_grad_accum_global_norm(micro, strategy, gas, lambda rows: action_mask[rows]):
            log_probs = engine(sequences[rows], action_mask[rows], attention_mask=attention_mask[rows])
            if name == WRONG:
                info = {**info, "dp_size": 1}
            out = loss_fn(log_probs, old[rows], advantages[rows], action_mask=action_mask[rows], **info)
            engine.backward(out[0])
            engine.step()
        assert engine.global_steps == 1, engine.global_steps  # one optimizer step over the whole global batch
        after = {k: v.detach().clone() for k, v in engine.module.named_parameters()}
        if rank == 0:
            path = os.path.join(out_dir, f"case{i}.pt")
            torch.save({"before": before, "after": after}, path)
            results[name] = {"params": path, "batch_num_tokens": float(info["batch_num_tokens"]),
                             "global_batch_size": float(info["global_batch_size"]), "dp_size": info["dp_size"],
                             "gas": gas}
        dist.barrier()
    if rank == 0:
        with open(os.path.join(out_dir, "results.json"), "w") as f:
            json.dump({"world_size": world, "lr": LR, "cases": results}, f, indent=2)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
