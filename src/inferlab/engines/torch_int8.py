"""PyTorch dynamic INT8: per-channel int8 weights on every linear layer (GPT-2's Conv1D too),
activations quantized per step; runs with the KV cache like `kv-cache`."""

from __future__ import annotations

import torch
from torch import nn

from .torch_quantized import QuantizedTorchEngine


class TorchInt8(QuantizedTorchEngine):
    name = "torch-int8"
    summary = "PyTorch dynamic INT8 (per-channel weights, every linear layer), KV cache"
    usage_transform = ("model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: "
                       "torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8)\n")

    def quantize(self, model: nn.Module) -> int:
        from torch.ao.nn.quantized.dynamic import Linear as QLinear
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        model = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                 inplace=True)
        return sum(isinstance(m, QLinear) for m in model.modules())

    def details(self) -> dict:
        return {**super().details(), "dtype": "int8 weights (per-channel) / int8 activations quantized per step",
                "weight_bits": 8, "activation_bits": 8,
                "engine": torch.backends.quantized.engine}
