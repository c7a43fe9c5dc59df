"""PyTorch fp32 with the Hugging Face KV cache: the correctness reference."""

from __future__ import annotations

import torch

from .base import Engine
from .torch_common import (
    folder_weight_file_bytes,
    load_hf_model,
    module_weight_bytes,
    parameter_count,
    window_logits,
)


class KVCache(Engine):
    name = "kv-cache"
    summary = "PyTorch fp32 with the KV cache (the reference for correctness and quality)"

    def load(self) -> None:
        self.model = self.build_model()
        self.past = None

    def build_model(self):
        return load_hf_model(self.model_ref, self.threads)

    @torch.inference_mode()
    def prefill(self, token_ids):
        out = self.model(input_ids=torch.tensor([list(token_ids)]), use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits[0, -1]

    @torch.inference_mode()
    def decode(self, token_id):
        out = self.model(
            input_ids=torch.tensor([[int(token_id)]]), past_key_values=self.past, use_cache=True
        )
        self.past = out.past_key_values
        return out.logits[0, -1]

    def window_logits(self, token_ids):
        return window_logits(self.model, token_ids)

    def profile(self, prompt_ids, steps, trace_path, detail, sweep_lengths=()):
        from ..profiling import torch_profile

        return torch_profile.profile(self, self.model, prompt_ids, steps, trace_path, detail,
                                     sweep_lengths)

    def details(self) -> dict:
        return {"dtype": "float32", "threads": torch.get_num_threads(),
                "attention": self.model.config._attn_implementation}

    def info(self) -> dict:
        return {
            "weight_bytes": module_weight_bytes(self.model),
            "file_bytes": folder_weight_file_bytes(self.model_ref.path),
            "parameters": parameter_count(self.model),
            "details": self.details(),
        }
