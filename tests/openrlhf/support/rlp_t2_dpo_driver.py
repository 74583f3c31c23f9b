"""T2 driver: ``python rlp_t2_dpo_driver.py RESULT_JSON <wrapper flags>`` runs our train_dpo wrapper (hence
OpenRLHF's real ``openrlhf.cli.train_dpo`` and real DeepSpeed ZeRO-2) on CPU, one process per rank (RANK and
WORLD_SIZE from the environment). ``{rank}`` in RESULT_JSON is replaced by the rank. With
``RLPLUGINS_T2_STOP_AFTER_STEP=N`` the run stops right after the checkpoint of optimizer step N (a preemption), so
that a second run with ``--ckpt.load_enable`` can resume from it.

Besides the flash_attn/vLLM stubs, two CUDA-only spots of OpenRLHF's strategy are replaced for CPU (gloo):
``DeepspeedStrategy.all_reduce`` moves CPU tensors to ``torch.cuda.current_device()``, and
``torch_dist_barrier_and_cuda_sync`` (at save) calls ``torch.cuda.synchronize()``. DeepSpeed's shared-memory
all-reduce kernel is not JIT-built (``skip_shm_comm_build``): collectives go through gloo.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import rlp_openrlhf_stubs  # noqa: E402

rlp_openrlhf_stubs.install()

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import openrlhf.utils.deepspeed.deepspeed as ds_module  # noqa: E402
from openrlhf.utils.deepspeed import DeepspeedStrategy  # noqa: E402


def all_reduce(self, data, op="mean"):
    """OpenRLHF's all_reduce without the move to CUDA."""
    if isinstance(data, dict):
        return {k: all_reduce(self, v, op) for k, v in data.items()}
    is_tensor = isinstance(data, torch.Tensor)
    tensor = data.detach().clone().float() if is_tensor else torch.tensor([float(data)])
    if op == "mean":
        tensor /= self.world_size
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return tensor if is_tensor else tensor.item()


DeepspeedStrategy.all_reduce = all_reduce
ds_module.torch_dist_barrier_and_cuda_sync = lambda: dist.barrier()

from rlp_dp_policy_loss_driver import skip_shm_comm_build  # noqa: E402

skip_shm_comm_build()

from rlplugins.integrations.openrlhf import dpo_trainer  # noqa: E402
from rlplugins.integrations.openrlhf.train_dpo import main  # noqa: E402

result_path = sys.argv[1].format(rank=os.environ.get("RANK", "0"))
stop_after = int(os.environ.get("RLPLUGINS_T2_STOP_AFTER_STEP", "0"))
fit = dpo_trainer.SageDPOTrainer.fit
save = dpo_trainer.SageDPOTrainer.save_logs_and_checkpoints
batches: list[list[int]] = []


class Preempted(Exception):
    pass


def stopping_save(self, args, global_step, *rest, **kwargs):
    save(self, args, global_step, *rest, **kwargs)
    if global_step == stop_after:
        raise Preempted()


def recording_fit(self, *args, **kwargs):
    loss_fn = self.loss_fn

    def loss(*logps):
        out = loss_fn(*logps)
        if torch.is_grad_enabled():
            batches.append(loss_fn.last_indices.tolist())
        return out

    self.loss_fn = loss
    try:
        fit(self, *args, **kwargs)
        stopped = False
    except Preempted:
        stopped = True
    with open(result_path, "w") as f:
        json.dump({"metrics": self.selector_metrics(), "pending": self.sampler.pending, "batches": batches,
                   "loader_len": len(self.train_dataloader), "epochs": self.epochs, "stopped": stopped,
                   "rank": self.selector.rank, "num_replicas": self.selector.num_replicas,
                   "shard": self.selector.shard.tolist(), "state": _plain(self.sampler.state_dict())}, f)


def _plain(value):
    """A state dict as JSON (tensors as lists, NaN as null) so that two runs' states compare exactly."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _plain(value.tolist())
    if isinstance(value, float) and value != value:
        return None
    return value


dpo_trainer.SageDPOTrainer.fit = recording_fit
dpo_trainer.SageDPOTrainer.save_logs_and_checkpoints = stopping_save
main(sys.argv[2:])
