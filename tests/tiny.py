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


def make_model(folder: str, arch: str, seed: int = 0, **options) -> str:
    """A tiny random model of `arch` (gpt2, llama, qwen2), config `options` over the defaults."""
    import torch
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(**{**dict(n_layer=2, n_head=2, n_embd=64, vocab_size=VOCAB,
                                                     n_positions=256, bos_token_id=0, eos_token_id=1), **options}))
    elif arch in ("llama", "qwen2"):
        config, causal_lm = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
        model = causal_lm(config(**{**dict(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=256,
            tie_word_embeddings=True, bos_token_id=0, eos_token_id=1), **options}))
    else:
        raise ValueError(arch)
    model.save_pretrained(folder)
    make_tokenizer(folder)
    return folder


# Query and key projections 8x larger: transformers' default initialization leaves the tiny
# models' attention nearly uniform, so keys rotated to the wrong position or read from another
# sequence change their logits by less than any tolerance; with this, scores spread over several
# units and each position's weight matters (tests/test_exact_4bit.py measures it).
SHARP_QK = 8.0


def on_gguf_grids(source: str, folder: str, qk_scale: float = 1.0, seed: int = 0) -> str:
    """The model at `source`, saved to `folder` with its matrices moved onto the grids of a Q4_1
    GGUF (blocks of 32 inputs: 4-bit affine; the token table: 8-bit symmetric; scales and offsets
    in fp16), like the bundled model's reference weights; the query and key projections first
    multiplied by qk_scale; biases and norms, which transformers starts at 0 and 1, drawn at
    random so that a decoder that drops one is seen."""
    import torch
    from transformers import AutoModelForCausalLM

    from inferlab.engines.blockquant import affine4, symmetric8

    model = AutoModelForCausalLM.from_pretrained(source)
    gpt2 = model.config.model_type == "gpt2"
    qk_outputs = slice(0, 2 * model.config.hidden_size)  # GPT-2's c_attn: q, k, then v outputs
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            w = p.numpy().copy()
            if w.ndim == 1:
                w = (1.0 if name.endswith("weight") else 0.0) + rng.normal(0, 0.1, w.shape)
            if name.split(".")[-2] in ("q_proj", "k_proj"):
                w *= qk_scale
            elif gpt2 and "c_attn" in name:
                w[..., qk_outputs] *= qk_scale
            if w.ndim == 2 and "wpe" not in name:  # learned positions stay fp32 in every engine
                conv1d = gpt2 and ".h." in name  # GPT-2's Conv1D layers store [in, out]
                m = w.T if conv1d else w
                q = (symmetric8 if any(k in name for k in ("embed_tokens", "wte", "lm_head")) else affine4)(m)
                q.scales = q.scales.astype(np.float16).astype(np.float32)  # GGUF stores them in fp16
                if q.offsets is not None:
                    q.offsets = q.offsets.astype(np.float16).astype(np.float32)
                w = q.dequantize().T if conv1d else q.dequantize()
            p.copy_(torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)))
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
