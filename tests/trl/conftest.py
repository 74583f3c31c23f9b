"""TRL 1.16.0 adapter tests: TRL's real GRPOTrainer / DPOTrainer ``train()`` on CPU with a tiny Qwen2 built from a
config and an in-memory tokenizer (``rlplugins.integrations.trl.tiny``); nothing is downloaded.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

import torch  # noqa: E402

# Tiny models: intra-op threads only add synchronisation on a shared 2-core machine.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlplugins.integrations.trl.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_moe_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from rlplugins.integrations.trl.tiny import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_mixtral"), moe=True)
