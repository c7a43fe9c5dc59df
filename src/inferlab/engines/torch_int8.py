"""PyTorch dynamic INT8: per-channel int8 weights on every linear layer (GPT-2's Conv1D too),
activations quantized per step; runs with the KV cache like `kv-cache`."""

from __future__ import annotations

import torch
from torch import nn

from .base import EngineError
from .kv_cache import KVCache
from .torch_common import load_hf_model, module_weight_bytes


def conv1d_to_linear(model: nn.Module) -> int:
    """Replace transformers' Conv1D (GPT-2: y = x @ W + b, W [in, out]) by an equivalent
    nn.Linear (W^T), so that quantize_dynamic sees it. Returns how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    replaced = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = nn.Linear(n_in, n_out, bias=child.bias is not None)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(parent, child_name, linear)
                replaced += 1
    return replaced


def release_file_mapping(model: nn.Module) -> None:
    """Copy the tensors left in fp32 (embedding, norms) out of the weight file's memory map.

    transformers maps the safetensors file and the parameters view it; quantizing reads every
    fp32 weight, so the whole file stays resident (538 MB for SmolLM2) as long as one tensor
    still views the mapping. Measured on SmolLM2: steady RSS 1148 MB before, 723 MB after."""
    import gc

    with torch.no_grad():
        for module in model.modules():
            for p in module.parameters(recurse=False):
                p.data = p.data.clone()
            for name, b in list(module.named_buffers(recurse=False)):
                module._buffers[name] = b.clone()
    gc.collect()


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
