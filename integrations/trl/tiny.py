"""A tiny Qwen2-shaped model, an in-memory word-level tokenizer and toy datasets: TRL's real trainers on CPU in
seconds, with nothing downloaded. Used by ``rlplugins trl-smoke`` and the tests.
"""

from __future__ import annotations

import os
from typing import Any

WORDS = tuple(f"w{i}" for i in range(48))
SPECIAL = ("<pad>", "<unk>", "<s>", "</s>")


def tiny_tokenizer() -> Any:
    """Whitespace word-level tokenizer over ``w0..w47``: pad 0, unk 1, bos 2, eos 3."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>")


def tiny_model(seed: int = 0, moe: bool = False) -> Any:
    """A random 2-layer Qwen2 (hidden 32, ~20K parameters) built from a config; ``moe=True``: a Mixtral of the same
    size with 2 experts (its router load-balancing loss exercises the trainers' MoE aux-loss path)."""
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(vocab_size=len(SPECIAL) + len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                 bos_token_id=2, eos_token_id=3, tie_word_embeddings=True)
    if moe:
        config, cls = MixtralConfig(num_local_experts=2, num_experts_per_tok=1, router_aux_loss_coef=0.02,
                                    **shape), MixtralForCausalLM
    else:
        config, cls = Qwen2Config(**shape), Qwen2ForCausalLM
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config).eval()


def save_tiny_model(directory: str | os.PathLike, seed: int = 0, moe: bool = False) -> str:
    """Model and tokenizer saved like a hub checkpoint (GRPO with ``beta > 0`` loads its reference by path)."""
    path = os.fspath(directory)
    tiny_model(seed, moe).save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


def prompt_dataset(n: int = 8) -> Any:
    """``{"prompt": "w<i> w<i+1> w<i+2>"}`` rows for GRPO."""
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [" ".join(WORDS[(3 * i + k) % 16] for k in range(3)) for i in range(n)]})


def target_word_reward(completions: list[str], **_: Any) -> list[float]:
    """Share of completion words equal to ``w1`` (plus a length term): a signal a tiny model can learn."""
    out = []
    for text in completions:
        words = text.split()
        out.append(sum(w == "w1" for w in words) / max(len(words), 1) + 0.05 * len(words))
    return out


def preference_dataset(n: int = 16, seed: int = 0) -> Any:
    """``prompt``/``chosen``/``rejected`` rows (chosen repeats ``w1``) with a ``difficulty`` column in [0, 1]."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    rows: dict[str, list[Any]] = {"prompt": [], "chosen": [], "rejected": [], "difficulty": []}
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS[:16]) for _ in range(3))
        length = 2 + i % 3
        chosen = " ".join("w1" if rng.random() < 0.8 else rng.choice(WORDS) for _ in range(length))
        rejected = " ".join(rng.choice(WORDS[16:]) for _ in range(length))
        rows["prompt"].append(prompt)
        rows["chosen"].append(" " + chosen)
        rows["rejected"].append(" " + rejected)
        rows["difficulty"].append(round((i % 4) / 3, 3))
    return Dataset.from_dict(rows)
