"""PyTorch fp32 with the Hugging Face KV cache: the correctness reference."""

from __future__ import annotations

import torch

from .torch_engine import TorchEngine


class KVCache(TorchEngine):
    name = "kv-cache"
    summary = "PyTorch fp32 with the KV cache (the reference for correctness and quality)"
    max_batch = 256
    setup_in_ttft = "a new DynamicCache, its tensors allocated as the prompt fills them"

    @torch.inference_mode()
    def prefill(self, token_ids, all_logits=False):
        # logits_to_keep: 0 keeps every position, 1 only the last (the LM head runs on those)
        out = self.model(input_ids=torch.tensor([list(token_ids)]), use_cache=True,
                         logits_to_keep=0 if all_logits else 1)
        self.past = out.past_key_values
        return out.logits[0] if all_logits else out.logits[0, -1]

    def decode(self, token_id):
        return self.append_batch([[token_id]])[0]

    def append(self, token_ids):
        return self.append_batch([token_ids])[0]

    def rewind(self, length):
        self.past.crop(length)  # transformers' DynamicCache: every layer's keys and values
        return True

    # a batch: one input row per sequence, all of one length (no padding, no attention mask)
    @torch.inference_mode()
    def prefill_batch(self, sequences):
        out = self.model(input_ids=torch.tensor(sequences), use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits[:, -1]

    @torch.inference_mode()
    def append_batch(self, sequences):
        out = self.model(input_ids=torch.tensor(sequences), past_key_values=self.past,
                         use_cache=True, logits_to_keep=1)
        self.past = out.past_key_values
        return out.logits[:, -1]
