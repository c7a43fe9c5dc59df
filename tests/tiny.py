"""Tiny random models built from a config (no download), with a small trained tokenizer."""

from __future__ import annotations

import os

import numpy as np

VOCAB = 320
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the previous ones.",
    "Latency, throughput and memory are measured for every method.",
] * 20


def make_tokenizer(folder: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB - 8, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(folder)
    return fast


def make_model(folder: str, arch: str, seed: int = 0) -> str:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=64, vocab_size=VOCAB,
                                           n_positions=256, bos_token_id=0, eos_token_id=1))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=1))
    else:
        raise ValueError(arch)
    model.save_pretrained(folder)
    make_tokenizer(folder)
    return folder


def on_q4_1_grid(shape, seed=0):
    """Weights as a Q4_1 file dequantizes them: per block of 32, q * d + m (d and m in fp16)."""
    rng = np.random.default_rng(seed)
    n, k = shape
    q = rng.integers(0, 16, (n, k // 32, 32)).astype(np.float32)
    q[..., 0], q[..., 1] = 0, 15  # every block spans its full range, as Q4_1's rule makes it
    d = rng.uniform(0.001, 0.02, (n, k // 32, 1)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.15, 0.0, (n, k // 32, 1)).astype(np.float16).astype(np.float32)
    return (q * d + m).reshape(n, k)
