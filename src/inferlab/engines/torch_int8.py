"""PyTorch dynamic INT8: per-channel int8 weights on every linear layer (GPT-2's Conv1D too),
activations quantized per step; runs with the KV cache like `kv-cache`."""

from __future__ import annotations

import torch
from torch import nn

from .base import EngineError
from .kv_cache import KVCache
from .torch_common import conv1d_to_linear, load_hf_model, module_weight_bytes, release_file_mapping


class TorchInt8(KVCache):
    name = "torch-int8"
    summary = "PyTorch dynamic INT8 (per-channel weights, every linear layer), KV cache"

    def build_model(self):
        model = load_hf_model(self.model_ref, self.threads)
        self.bytes_before = module_weight_bytes(model)
        self.conv1d_converted = conv1d_to_linear(model)
        self.linear_total = sum(isinstance(m, nn.Linear) for m in model.modules())
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        # in place: a copy would hold a second fp32 model in this process's peak memory
        model = quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                 inplace=True)
        from torch.ao.nn.quantized.dynamic import Linear as QLinear

        self.quantized = sum(isinstance(m, QLinear) for m in model.modules())
        if self.quantized == 0:
            raise EngineError("torch-int8 quantized 0 layers: nothing was optimized")
        release_file_mapping(model)
        return model

    def details(self) -> dict:
        return {
            **super().details(),
            "dtype": "int8 weights (per-channel) / fp32 activations",
            "quantized_layers": self.quantized,
            "linear_layers_before": self.linear_total,
            "conv1d_converted_to_linear": self.conv1d_converted,
            "weight_bytes_before": self.bytes_before,
            "engine": torch.backends.quantized.engine,
        }
