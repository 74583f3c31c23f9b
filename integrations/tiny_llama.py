"""The tiny random Llama the framework adapters run their real trainers and workers on, on CPU, in seconds.

One model for every adapter check that needs a hub-style checkpoint directory: ``rlplugins verl-smoke`` (veRL's
``ActorRolloutRefWorker``, one rank and two) and the OpenRLHF tests (``Actor``, ``DPOTrainer``, the PPO step).
Nothing is downloaded; the weights depend on ``seed`` only. Imports transformers/tokenizers when called.
"""

from __future__ import annotations

import os

VOCAB = 128
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")  # ids 0..3: pad, bos, eos, unk
WORDS = tuple(f"w{i}" for i in range(VOCAB - len(SPECIALS)))  # ids 4..127


def build_tiny_llama(path: str | os.PathLike, seed: int = 0) -> str:
    """A random 2-layer Llama (hidden 64, 4 heads, 2 KV heads, ~90K parameters, untied embeddings) and a
    whitespace word-level tokenizer over ``w0..w123``, saved to ``path``; returns the path."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = os.fspath(path)
    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
