"""OpenRLHF 0.11.2 adapter tests: real OpenRLHF (DeepSpeed built without ops, real Ray), CPU only.

Only flash_attn and vLLM are stubbed (support/rlp_openrlhf_stubs.py says why); the stubs go into
sys.modules here, before any test module imports OpenRLHF. Models are tiny random Llamas built from a
config in code; nothing is downloaded.
"""

from __future__ import annotations

import os
import sys

import pytest

SUPPORT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "support")
if SUPPORT not in sys.path:
    sys.path.insert(0, SUPPORT)

import rlp_openrlhf_stubs  # noqa: E402

rlp_openrlhf_stubs.install()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

# The models here have 64 hidden units: intra-op threads only add synchronisation, and on a busy 2-core
# machine OpenMP's spin-waiting made a DPO step 30x slower (0.7 s instead of 0.02 s).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    import rlp_openrlhf_tiny

    path = tmp_path_factory.mktemp("tiny_llama")
    rlp_openrlhf_tiny.build_tiny_llama(str(path))
    return str(path)
