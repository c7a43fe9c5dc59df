"""The original study's baseline: no KV cache, every step recomputes the whole sequence."""

from __future__ import annotations

import torch

from .torch_engine import TorchEngine


class EagerNoCache(TorchEngine):
    name = "eager-nocache"
    summary = "PyTorch fp32, no KV cache: each step reruns the whole sequence (original baseline)"
    steps_are_full_forwards = True

    max_batch = 256
    setup_in_ttft = "none: no cache (every step runs the whole sequence again)"

    @torch.inference_mode()
    def _last_logits(self, all_logits=False):
        # logits_to_keep=1: only the last position goes through the LM head, as in kv-cache
        out = self.model(input_ids=torch.tensor(self.rows), use_cache=False,
                         logits_to_keep=0 if all_logits else 1)
        return out.logits if all_logits else out.logits[:, -1]

    def prefill(self, token_ids, all_logits=False):
        self.rows = [list(token_ids)]
        return self._last_logits(all_logits)[0]

    def decode(self, token_id):
        return self.append_batch([[token_id]])[0]

    def append(self, token_ids):
        return self.append_batch([token_ids])[0]

    def rewind(self, length):
        self.rows = [row[:length] for row in self.rows]
        return True

    def prefill_batch(self, sequences):
        self.rows = [list(s) for s in sequences]
        return self._last_logits()

    def append_batch(self, sequences):
        for row, more in zip(self.rows, sequences):
            row.extend(int(t) for t in more)
        return self._last_logits()
