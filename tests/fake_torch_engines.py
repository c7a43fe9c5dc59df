"""A PyTorch engine that misbehaves on purpose (its own module: the others stay torch-free)."""

import os
import signal

from inferlab.engines.kv_cache import KVCache


class QualityCrash(KVCache):
    """Generates like kv-cache, but its process dies in the quality pass."""

    name = "quality-crash"

    def prefill(self, token_ids, all_logits=False):
        if all_logits:
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().prefill(token_ids)


class SlowedKVCache(KVCache):
    """kv-cache with a 20 ms sleep in every decode step: a regression a gate must catch."""

    def decode(self, token_id):
        import time

        time.sleep(0.02)
        return super().decode(token_id)
