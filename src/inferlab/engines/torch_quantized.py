"""What the quantized PyTorch engines share: load the fp32 model, turn GPT-2's Conv1D into
Linear, quantize the linear layers in place, let go of the weight file; then run like
`kv-cache`. Subclasses only say how a model's linear layers are quantized."""

from __future__ import annotations

from abc import abstractmethod

from torch import nn

from .base import EngineError
from .kv_cache import KVCache
from .torch_common import conv1d_to_linear, load_hf_model, module_weight_bytes, release_file_mapping


class QuantizedTorchEngine(KVCache):
    convert_conv1d = True  # GPT-2's Conv1D layers become nn.Linear first, so they quantize too

    @abstractmethod
    def quantize(self, model: nn.Module) -> int:
        """Quantize the model's nn.Linear layers in place (a copy would hold a second fp32 model
        in the method's peak memory); returns how many were quantized."""

    def build_model(self):
        model = load_hf_model(self.model_ref, self.threads)
        self.bytes_before = module_weight_bytes(model)
        self.conv1d_converted = conv1d_to_linear(model) if self.convert_conv1d else 0
        self.linear_total = sum(isinstance(m, nn.Linear) for m in model.modules())
        self.quantized = self.quantize(model)
        if self.quantized == 0:
            raise EngineError(f"{self.name} quantized 0 layers: nothing was optimized")
        release_file_mapping(model)
        return model

    def details(self) -> dict:
        return {
            **super().details(),
            "quantized_layers": self.quantized,
            "linear_layers_before": self.linear_total,
            "conv1d_converted_to_linear": self.conv1d_converted,
            "weight_bytes_before": self.bytes_before,
        }
