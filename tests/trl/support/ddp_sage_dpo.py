"""Run by tests/trl/test_sage_dpo_ddp.py under torchrun (2 CPU processes, gloo): SageDPOTrainer with one selector per
process; each process writes the pairs it trained on and its selector's shard to OUT/rank{r}.json."""

import json
import os
import sys

import torch

from rlplugins.integrations.trl.dpo import SageDPOConfig, SageDPOTrainer
from rlplugins.integrations.trl.tiny import preference_dataset, tiny_model, tiny_tokenizer

torch.set_num_threads(1)
out, selector = sys.argv[1], sys.argv[2]
args = SageDPOConfig(output_dir=os.path.join(out, "run"), use_cpu=True, per_device_train_batch_size=2,
                     gradient_accumulation_steps=2, max_steps=3, logging_steps=1, report_to=[], learning_rate=1e-2,
                     save_strategy="no", seed=0, disable_tqdm=True, selector=selector, sage_warmup_steps=0,
                     sage_rescore_interval=2, ddp_backend="gloo")
trainer = SageDPOTrainer(model=tiny_model(0), ref_model=tiny_model(0), args=args, train_dataset=preference_dataset(16),
                         processing_class=tiny_tokenizer())
trained = []
original = SageDPOTrainer._compute_loss


def record(self, model, inputs, return_outputs):
    result = original(self, model, inputs, return_outputs)
    if self.last_observed is not None and self.model.training:
        trained.extend(self.last_observed["indices"].tolist())
    return result


SageDPOTrainer._compute_loss = record
trainer.train()
rank = trainer.accelerator.process_index
with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
    json.dump({"rank": rank, "world": trainer.accelerator.num_processes, "trained": trained,
               "metrics": trainer.selector_metrics(),
               "params": [p.detach().double().sum().item() for p in trainer.model.parameters()]}, fh)
