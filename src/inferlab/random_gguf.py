"""Random-weight GGUF models of real shapes, made on demand (models.resolve): speed depends on
shapes and counts, not on what the weights mean, so a model of Llama-3.2-1B's shape answers
"does the lead hold when the weights are twenty times the L3 cache?" without a download.

The file carries the bundled SmolLM2's tokenizer (its 49,152-token vocabulary, where
Llama-3.2-1B has 128,256: the token table and tied LM head are 0.10 B parameters instead of
0.26 B) and fp16 weights drawn from N(0, 0.02) with unit norms; every engine starts from this
one file (llama.cpp re-quantizes it to each type, the others read its fp32 conversion)."""

from __future__ import annotations

import numpy as np

# Llama-3.2-1B's shape (its config.json), the vocabulary aside (see above). Its llama3 rope
# scaling is left out: it changes no count.
LLAMA_1B = {"layers": 16, "hidden": 2048, "inter": 8192, "heads": 32, "kv_heads": 8, "context": 8192,
            "rope_theta": 500000.0, "eps": 1e-5}


def write_random_llama(path: str, tokenizer_gguf: str, shape: dict = LLAMA_1B, seed: int = 0) -> None:
    """A Llama GGUF of `shape` with seeded random fp16 weights and `tokenizer_gguf`'s tokenizer."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType

    reader = GGUFReader(tokenizer_gguf)
    tokens = reader.fields["tokenizer.ggml.tokens"]
    vocab = len(tokens.data)
    h, kv_dim = shape["hidden"], shape["hidden"] // shape["heads"] * shape["kv_heads"]
    writer = GGUFWriter(path, "llama")
    writer.add_name("llama-1b-random")
    writer.add_block_count(shape["layers"])
    writer.add_context_length(shape["context"])
    writer.add_embedding_length(h)
    writer.add_feed_forward_length(shape["inter"])
    writer.add_head_count(shape["heads"])
    writer.add_head_count_kv(shape["kv_heads"])
    writer.add_rope_dimension_count(h // shape["heads"])
    writer.add_rope_freq_base(shape["rope_theta"])
    writer.add_layer_norm_rms_eps(shape["eps"])
    writer.add_vocab_size(vocab)
    writer.add_file_type(LlamaFileType.MOSTLY_F16)
    for key, field in reader.fields.items():  # the tokenizer, as the bundled file has it
        if key.startswith("tokenizer."):
            kind = field.types[0]
            sub = field.types[-1] if kind == GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), kind, sub)

    rng = np.random.default_rng(seed)

    def matrix(rows: int, cols: int) -> np.ndarray:  # [out, in], as GGUF's writer takes numpy
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    ones = np.ones(h, np.float32)
    writer.add_tensor("token_embd.weight", matrix(vocab, h))  # also the LM head (tied, as in 1B)
    for i in range(shape["layers"]):
        b = f"blk.{i}."
        writer.add_tensor(b + "attn_norm.weight", ones)
        writer.add_tensor(b + "attn_q.weight", matrix(h, h))
        writer.add_tensor(b + "attn_k.weight", matrix(kv_dim, h))
        writer.add_tensor(b + "attn_v.weight", matrix(kv_dim, h))
        writer.add_tensor(b + "attn_output.weight", matrix(h, h))
        writer.add_tensor(b + "ffn_norm.weight", ones)
        writer.add_tensor(b + "ffn_gate.weight", matrix(shape["inter"], h))
        writer.add_tensor(b + "ffn_up.weight", matrix(shape["inter"], h))
        writer.add_tensor(b + "ffn_down.weight", matrix(h, shape["inter"]))
    writer.add_tensor("output_norm.weight", ones)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
