"""T2 driver: ``python rlp_t2_dpo_driver.py RESULT_JSON <wrapper flags>`` runs our train_dpo wrapper (hence
OpenRLHF's real ``openrlhf.cli.train_dpo`` and real DeepSpeed ZeRO-2) on CPU, one rank.

Besides the flash_attn/vLLM stubs, two CUDA-only spots of OpenRLHF's strategy are replaced for CPU (gloo):
``DeepspeedStrategy.all_reduce`` moves CPU tensors to ``torch.cuda.current_device()``, and
``torch_dist_barrier_and_cuda_sync`` (at save) calls ``torch.cuda.synchronize()``.
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

from rlplugins.integrations.openrlhf import dpo_trainer  # noqa: E402
from rlplugins.integrations.openrlhf.train_dpo import main  # noqa: E402

result_path = sys.argv[1]
fit = dpo_trainer.SageDPOTrainer.fit
batches: list[list[int]] = []


def recording_fit(self, *args, **kwargs):
    loss_fn = self.loss_fn

    def loss(*logps):
        out = loss_fn(*logps)
        if torch.is_grad_enabled():
            batches.append(loss_fn.last_indices.tolist())
        return out

    self.loss_fn = loss
    fit(self, *args, **kwargs)
    with open(result_path, "w") as f:
        json.dump({"metrics": self.selector.metrics(), "pending": self.sampler.pending, "batches": batches,
                   "loader_len": len(self.train_dataloader), "epochs": self.epochs}, f)


dpo_trainer.SageDPOTrainer.fit = recording_fit
main(sys.argv[2:])
