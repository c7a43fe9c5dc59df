"""What inferlab's own builders (the fused ONNX graph, the native decoder) read of a model:
its shapes, which variants they reproduce (the Llama family; GPT-2 for the native decoder),
its rotary tables and its fp32 weights."""

from __future__ import annotations

import json
import os

import numpy as np

from .base import EngineUnsupported

SUPPORTED_TYPES = ("llama",)
LLAMA_FAMILY = ("llama", "qwen2")  # one block structure; Qwen2 adds q/k/v biases
ROPE_TYPES = ("default", "linear", "llama3")  # rotary scalings rotary_tables computes


def check_supported(config: dict, builder: str, block: int, types: tuple[str, ...] = SUPPORTED_TYPES,
                    biases: bool = False) -> None:
    """Raise EngineUnsupported unless `builder` reproduces the config's decoder: one of `types`
    with the options it handles (a Llama: SiLU, rotary by ROPE_TYPES, biases only where the
    builder takes them; GPT-2: gelu_new), and layer widths that are whole blocks of `block`.
    An option it does not handle is named, never run wrong."""
    kind = config.get("model_type")
    why = None
    if kind not in types:
        why = f"architecture '{kind}' (it covers {', '.join(types)})"
    elif kind == "gpt2":
        if config.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            why = f"activation {config.get('activation_function')}"
        elif config.get("scale_attn_by_inverse_layer_idx") or config.get("add_cross_attention"):
            why = "scale_attn_by_inverse_layer_idx or cross-attention"
    else:
        rope = config.get("rope_scaling") or {}
        rope_type = rope.get("rope_type") or rope.get("type") or "default"
        if config.get("hidden_act", "silu") != "silu":
            why = f"activation {config.get('hidden_act')}"
        elif rope_type not in ROPE_TYPES:
            why = f"rope scaling '{rope_type}' (it covers {', '.join(ROPE_TYPES)})"
        elif config.get("partial_rotary_factor", 1.0) != 1.0:
            why = f"partial rotary (factor {config['partial_rotary_factor']})"
        elif config.get("use_sliding_window"):
            why = "sliding-window attention"
        elif not biases and (config.get("attention_bias") or config.get("mlp_bias") or kind == "qwen2"):
            why = "biases in attention or MLP"
    if why is None:
        s = Shapes(config)
        if s.hidden % block or s.inter % block:
            why = f"layer widths not divisible by the block of {block}"
    if why:
        raise EngineUnsupported(f"not supported for this model: {builder} does not handle {why}")


class Shapes:
    def __init__(self, config: dict):
        self.gpt2 = config.get("model_type") == "gpt2"
        if self.gpt2:  # GPT2Config's names; multi-head attention, learned positions, tied head
            self.hidden, self.heads, self.layers = config["n_embd"], config["n_head"], config["n_layer"]
            self.kv_heads, self.head_dim = self.heads, self.hidden // self.heads
            self.inter = config.get("n_inner") or 4 * self.hidden
            self.eps = float(config.get("layer_norm_epsilon", 1e-5))
            self.max_positions = config.get("n_positions", 1024)
            self.theta, self.tied, self.rope = 0.0, True, {}
        else:
            self.hidden = config["hidden_size"]
            self.heads = config["num_attention_heads"]
            self.kv_heads = config.get("num_key_value_heads") or self.heads
            self.head_dim = config.get("head_dim") or self.hidden // self.heads
            self.inter = config["intermediate_size"]
            self.layers = config["num_hidden_layers"]
            self.eps = float(config.get("rms_norm_eps", 1e-6))
            self.theta = float(config.get("rope_theta", 10000.0))
            self.tied = bool(config.get("tie_word_embeddings", False))
            self.rope = config.get("rope_scaling") or {}
            self.max_positions = None  # rotary: any position
        self.vocab = config["vocab_size"]


def inverse_frequencies(shapes: Shapes) -> np.ndarray:
    """The rotary frequencies, scaled as the config says (ROPE_TYPES; transformers' rules)."""
    inv_freq = 1.0 / (shapes.theta ** (np.arange(0, shapes.head_dim, 2, dtype=np.float64) / shapes.head_dim))
    rope = shapes.rope
    kind = rope.get("rope_type") or rope.get("type") or "default"
    if kind == "linear":
        return inv_freq / rope["factor"]
    if kind == "llama3":  # long wavelengths slowed by `factor`, short ones kept, the middle blended
        factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
        old = rope["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv_freq
        scaled = np.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)
    return inv_freq


def rotary_tables(shapes: Shapes, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [slots, head_dim / 2] for positions 0..slots-1 (non-interleaved rotary)."""
    angles = np.outer(np.arange(slots, dtype=np.float64), inverse_frequencies(shapes))
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def lm_head_name(shapes: Shapes, weights: dict) -> str:
    """The LM head's weight: the embedding when tied (or when no separate head was saved)."""
    return "model.embed_tokens.weight" if shapes.tied or "lm_head.weight" not in weights else "lm_head.weight"


def load_weights(folder: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not files:
        raise EngineUnsupported("not supported for this model: inferlab's builders read "
                                "safetensors weights, and the folder has none")
    weights = {}
    for f in files:
        weights.update(load_file(os.path.join(folder, f)))
    return {k: v.astype(np.float32) for k, v in weights.items()}


def read_config(folder: str) -> dict:
    with open(os.path.join(folder, "config.json")) as f:
        return json.load(f)
