"""The original study's INT8, kept to show what it measured: torch's dynamic quantization of the
model's nn.Linear layers as found, per-tensor. On GPT-2 that is the LM head alone (its blocks are
transformers' Conv1D, which quantize_dynamic does not know); `torch-int8` converts them first
and quantizes every layer."""

from __future__ import annotations

import torch
from torch import nn

from .torch_quantized import QuantizedTorchEngine


class TorchInt8Study(QuantizedTorchEngine):
    name = "torch-int8-study"
    summary = ("the original study's INT8: dynamic quantization of nn.Linear as found (on GPT-2 the "
               "LM head alone), KV cache")
    convert_conv1d = False
    usage_transform = ("model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, "
                       "dtype=torch.qint8)\n")

    def quantize(self, model: nn.Module) -> int:
        from torch.ao.nn.quantized.dynamic import Linear as QLinear
        from torch.ao.quantization import quantize_dynamic

        model = quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
        return sum(isinstance(m, QLinear) for m in model.modules())

    def details(self) -> dict:
        return {**super().details(), "weight_bits": 8, "activation_bits": 8,
                "dtype": "int8 weights (per-tensor, nn.Linear only) / int8 activations quantized per step"}
