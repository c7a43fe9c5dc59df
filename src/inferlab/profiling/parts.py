"""Which part of the model an operator or module belongs to, from its name.

Names look like `model.layers.3.self_attn.q_proj` (PyTorch modules) or
`/model/layers.3/self_attn/q_proj/MatMul` (ONNX node names from the exporter)."""

from __future__ import annotations

import re

PARTS = ("embedding", "attention", "mlp", "block norms", "final norm + lm head", "other")

_RULES = (
    (re.compile(r"(^|[./])(embed_tokens|wte|wpe|embed_positions)([./_]|$)"), "embedding"),
    (re.compile(r"(^|[./])(self_attn|attn|attention)([./_]|$)"), "attention"),
    (re.compile(r"(^|[./])(mlp|feed_forward|ffn)([./_]|$)"), "mlp"),
    (re.compile(r"(^|[./])(input_layernorm|post_attention_layernorm|ln_1|ln_2)([./_]|$)"),
     "block norms"),
    (re.compile(r"(^|[./])(lm_head|ln_f)([./_]|$)|(^|[./])model[./]norm([./_]|$)"),
     "final norm + lm head"),
)


def part_of(name: str) -> str:
    for pattern, part in _RULES:
        if pattern.search(name):
            return part
    return "other"


def top_level_modules(model) -> list[tuple[str, str, object]]:
    """(name, part, module) for the outermost modules of each known part (no nesting)."""
    chosen: list[tuple[str, str, object]] = []
    for name, module in model.named_modules():
        if not name:
            continue
        part = part_of(name)
        if part == "other":
            continue
        if any(name.startswith(prefix + ".") for prefix, _, _ in chosen):
            continue
        chosen.append((name, part, module))
    return chosen
