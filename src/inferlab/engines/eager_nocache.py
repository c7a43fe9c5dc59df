"""The original study's baseline: no KV cache, every step recomputes the whole sequence."""

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


class EagerNoCache(Engine):
    name = "eager-nocache"
    summary = "PyTorch fp32, no KV cache: each step reruns the whole sequence (original baseline)"

    def load(self) -> None:
        self.model = load_hf_model(self.model_ref, self.threads)
        self.ids: list[int] = []

    @torch.inference_mode()
    def _last_logits(self):
        # logits_to_keep=1: only the last position goes through the LM head, as in kv-cache
        out = self.model(input_ids=torch.tensor([self.ids]), use_cache=False, logits_to_keep=1)
        return out.logits[0, -1]

    def prefill(self, token_ids):
        self.ids = list(token_ids)
        return self._last_logits()

    def decode(self, token_id):
        self.ids.append(int(token_id))
        return self._last_logits()

    def window_logits(self, token_ids):
        return window_logits(self.model, token_ids)

    def profile(self, prompt_ids, steps, trace_path, detail, sweep_lengths=()):
        from ..profiling import torch_profile

        return torch_profile.profile(self, self.model, prompt_ids, steps, trace_path, detail,
                                     sweep_lengths)

    def info(self) -> dict:
        return {
            "weight_bytes": module_weight_bytes(self.model),
            "file_bytes": folder_weight_file_bytes(self.model_ref.path),
            "parameters": parameter_count(self.model),
            "details": {"dtype": "float32", "threads": torch.get_num_threads(),
                        "attention": self.model.config._attn_implementation},
        }
