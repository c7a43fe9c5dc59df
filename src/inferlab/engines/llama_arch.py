"""What inferlab's own builders (the fused ONNX graph, the native decoder) read of a
Llama-architecture model: its shapes, which variants they reproduce, its rotary tables and
its fp32 weights."""

from __future__ import annotations

import json
import os

import numpy as np

from .base import EngineUnsupported

SUPPORTED_TYPES = ("llama",)


def check_supported(config: dict, builder: str, block: int) -> None:
    """Raise EngineUnsupported unless `builder` reproduces the config's decoder: a Llama with
    SiLU, plain rotary, no biases, and layer widths that are whole blocks of `block`."""
    kind = config.get("model_type")
    why = None
    if kind not in SUPPORTED_TYPES:
        why = f"architecture '{kind}' (it covers {', '.join(SUPPORTED_TYPES)})"
    elif config.get("hidden_act", "silu") != "silu":
        why = f"activation {config.get('hidden_act')}"
    elif config.get("rope_scaling"):
        why = f"rope scaling {config.get('rope_scaling')}"
    elif config.get("attention_bias") or config.get("mlp_bias"):
        why = "biases in attention or MLP"
    elif config["hidden_size"] % block or config["intermediate_size"] % block:
        why = f"layer widths not divisible by the block of {block}"
    if why:
        raise EngineUnsupported(f"not supported for this model: {builder} does not handle {why}")


class Shapes:
    def __init__(self, config: dict):
        self.hidden = config["hidden_size"]
        self.heads = config["num_attention_heads"]
        self.kv_heads = config.get("num_key_value_heads") or self.heads
        self.head_dim = config.get("head_dim") or self.hidden // self.heads
        self.inter = config["intermediate_size"]
        self.layers = config["num_hidden_layers"]
        self.vocab = config["vocab_size"]
        self.eps = float(config.get("rms_norm_eps", 1e-6))
        self.theta = float(config.get("rope_theta", 10000.0))
        self.tied = bool(config.get("tie_word_embeddings", False))


def rotary_tables(shapes: Shapes, slots: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin [slots, head_dim / 2] for positions 0..slots-1 (non-interleaved rotary)."""
    inv_freq = 1.0 / (shapes.theta ** (np.arange(0, shapes.head_dim, 2, dtype=np.float64) / shapes.head_dim))
    angles = np.outer(np.arange(slots, dtype=np.float64), inv_freq)
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
