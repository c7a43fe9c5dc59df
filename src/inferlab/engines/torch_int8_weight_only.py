"""PyTorch weight-only INT8: every linear layer's weight held as int8 per output channel, the
activations left unquantized; runs with the KV cache like `kv-cache`.

Unlike `torch-int8` (dynamic: activations rounded to 8 bits per step, which fails the quality
gate on SmolLM2), only the weights are rounded here. The product runs in aten's weight-only
int8 matmul kernel (`_weight_int8pack_mm`); measured on an AVX2 CPU with 2 threads it is fast
only with bf16 inputs (1536x576: 82 us with bf16 inputs, 720 us with fp32, fp32 nn.Linear
105 us; inductor's code for the same product ran at ~700 us), so the layer's input is rounded
to bf16 for the product, and the result comes back in fp32 with the fp32 scales applied after
it. On SmolLM2 the rounding of the weights per channel is most of the quality cost (KL 0.0048
of 0.0055; bf16 inputs alone: 0.0001)."""

from __future__ import annotations

import torch
from torch import nn

from .torch_common import return_freed_heap
from .torch_quantized import QuantizedTorchEngine


class Int8WeightOnlyLinear(nn.Module):
    """y = x W^T + b with W = scale[:, None] * q, q int8 in [-127, 127] (symmetric, one fp32 scale
    per output channel: max |w| / 127)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127
        q = w / scale[:, None]  # one temporary the size of the weight (a tied LM head: 113 MB)
        self.register_buffer("qweight", q.round_().clamp_(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        # the kernel multiplies by its own (bf16) scales: ones, so that the fp32 scale is exact
        self.register_buffer("unit_scales", torch.ones_like(scale, dtype=torch.bfloat16), persistent=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(),
                                                                   requires_grad=False)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.unit_scales)
        y = y.float() * self.scale
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def dequantized_weight(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]


def quantize_linear_layers(model: nn.Module) -> int:
    """Replace every nn.Linear by an Int8WeightOnlyLinear; returns how many were replaced. A tied
    LM head gets its own int8 copy (the embedding table stays fp32 for the row lookup)."""
    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, child_name, Int8WeightOnlyLinear(child))
                return_freed_heap()
                replaced += 1
    return replaced


class TorchInt8WeightOnly(QuantizedTorchEngine):
    name = "torch-int8-weight-only"
    summary = "PyTorch weight-only INT8 (per-channel int8 weights, bf16 matmul inputs), KV cache"
    usage_transform = None  # inferlab's own layer: no form outside it

    def quantize(self, model: nn.Module) -> int:
        return quantize_linear_layers(model)

    def details(self) -> dict:
        return {**super().details(),
                "dtype": "int8 weights (per-channel, symmetric) / bf16 matmul inputs / fp32 elsewhere",
                "weight_bits": 8, "activation_bits": 16,
                "kernel": "aten._weight_int8pack_mm"}
