"""PyTorch fp32 with a static KV cache and the decode step compiled by torch.compile (inductor).

Only the one-token step is compiled (its shapes never change, so it compiles once); the prompt
runs eagerly into the same cache. The compile happens in the first decode step, so it shows as
the first call's time (cold start), never in the steady-state figures. Inductor's freezing (weights
folded into the graph, prepacked for the CPU's GEMM) is left off: measured on SmolLM2, 2 threads,
it decodes at 46-47 ms/token against 48-52 without it, but holds a second copy of the weights
(peak RSS 2.05 GB against 1.2-1.3 GB without it), since the eager prefill still needs the
originals."""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref

import torch

from .kv_cache import KVCache

MIN_CACHE_SLOTS = 256  # the quality windows (256 tokens) and a default run fit without regrowing


def cache_slots(needed: int) -> int:
    """Slots of a static cache that holds `needed` positions: a power of two, at least
    MIN_CACHE_SLOTS. Attention reads every slot each step, so the cache is kept small; a longer
    sequence moves to the next size, which compiles the step again."""
    slots = MIN_CACHE_SLOTS
    while slots < needed:
        slots *= 2
    return slots


def private_inductor_cache() -> str:
    """An empty inductor cache for this process, removed at exit: the first call then always
    pays the whole compile (an honest cold start), and no native code compiled on another CPU
    is ever loaded from a shared cache."""
    folder = tempfile.mkdtemp(prefix="inferlab-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    weakref.finalize(private_inductor_cache, shutil.rmtree, folder, True)
    return folder


class TorchCompile(KVCache):
    name = "torch-compile"
    summary = "PyTorch fp32, static KV cache, decode step compiled by torch.compile (inductor)"
    max_batch = 1  # its static cache and compiled step hold one sequence
    setup_in_ttft = ("its StaticCache reset (zeroed) for the prompt's size, or made anew for a new size "
                     "(compiled in the untimed first call)")
    # transformers' own form of the same idea: a static cache and the forward compiled
    usage_transform = ('model.generation_config.cache_implementation = "static"\n'
                       'model.forward = torch.compile(model.forward)\n')

    def load(self) -> None:
        super().load()
        private_inductor_cache()
        self.cache = None
        self.cache_sizes: set[int] = set()
        self.step = torch.compile(self._step, fullgraph=True, dynamic=False)

    def _use_cache(self, needed: int) -> None:
        """An empty static cache that holds `needed` positions. The step compiles once per cache
        size: dynamo keys its graphs by the tensors' shapes, so a size seen before (a new cache
        object included) runs the graph it already has."""
        from transformers import StaticCache

        slots = cache_slots(needed)
        if self.cache is not None and self.cache.max_cache_len == slots:
            self.cache.reset()
        else:
            self.cache = StaticCache(config=self.model.config, max_cache_len=slots)
            self.cache_sizes.add(slots)

    def _forward(self, ids: list[int], start: int, logits_to_keep: int):
        return self.model(input_ids=torch.tensor([ids]), past_key_values=self.cache,
                          cache_position=torch.arange(start, start + len(ids)), use_cache=True,
                          logits_to_keep=logits_to_keep).logits[0]

    def _step(self, ids: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids, past_key_values=self.cache, cache_position=position,
                          use_cache=True).logits[0, -1]

    @torch.inference_mode()
    def prefill(self, token_ids, all_logits=False):
        self.ids = list(token_ids)
        self._use_cache(len(self.ids) + 1)
        logits = self._forward(self.ids, 0, 0 if all_logits else 1)
        return logits if all_logits else logits[-1]

    @torch.inference_mode()
    def decode(self, token_id):
        position = len(self.ids)
        self.ids.append(int(token_id))
        if position >= self.cache.max_cache_len:  # full: a bigger cache, refilled eagerly
            self._use_cache(position + 1)
            self._forward(self.ids[:-1], 0, 1)
        return self.step(torch.tensor([[int(token_id)]]), torch.tensor([position]))

    @torch.inference_mode()
    def append(self, token_ids):
        """Several tokens after the sequence so far, run eagerly like the prompt."""
        start = len(self.ids)
        self.ids.extend(int(t) for t in token_ids)
        if len(self.ids) > self.cache.max_cache_len:  # a bigger cache, refilled eagerly
            self._use_cache(len(self.ids) + 1)
            return self._forward(self.ids, 0, 1)[-1]
        return self._forward(self.ids[start:], start, 1)[-1]

    def rewind(self, length):
        # slots past `length` are written again before they are read: attention is masked by
        # the cache positions given with each call
        self.ids = self.ids[:length]
        return True

    def details(self) -> dict:  # read after load, before any sequence: the set-up, not its state
        return {**super().details(), "compiled": "decode step (torch.compile, inductor)",
                "static_cache": f"{MIN_CACHE_SLOTS} positions, doubled when a sequence outgrows "
                                "it (the step compiles once per size)"}
