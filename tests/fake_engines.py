"""Engines that misbehave on purpose, to check that a run isolates them."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from inferlab.engines.base import Engine


class _Fake(Engine):
    summary = "test engine"

    def load(self):
        pass

    def prefill(self, token_ids, all_logits=False):
        return np.zeros((len(token_ids), 8) if all_logits else 8, dtype=np.float32)

    def decode(self, token_id):
        return np.zeros(8, dtype=np.float32)

    def info(self):
        return {"weight_bytes": 0, "file_bytes": 0, "details": {}}


class Raising(_Fake):
    name = "raising"

    def load(self):
        raise RuntimeError("this engine always fails to load")


class Crashing(_Fake):
    name = "crashing"

    def decode(self, token_id):
        os.kill(os.getpid(), signal.SIGSEGV)


class Hanging(_Fake):
    """Hangs in its first decode step; with INFERLAB_TEST_HANGING_MARK set, it first creates
    that file, so a test knows the step has begun."""

    name = "hanging"

    def decode(self, token_id):
        if mark := os.environ.get("INFERLAB_TEST_HANGING_MARK"):
            open(mark, "w").close()
        time.sleep(3600)


class Hog(_Fake):
    """Loads ~200 MB of touched memory, frees half of it, then runs: its peak must show it."""

    name = "hog"

    def load(self):
        big = np.ones(25 << 20)  # 200 MB, every page touched
        self.kept = big[: 12 << 20].copy()  # ~100 MB stay resident
        del big



class OneAtATime(_Fake):
    """Runs (always token 0), but cannot batch: a sweep skips it at batch > 1."""

    name = "one-at-a-time"

    def append(self, token_ids):
        return np.zeros(8, dtype=np.float32)


class Positional(_Fake):
    """Its next token is (length + sum of the ids) mod 7 of the sequence in its cache: the
    tokens show what the cache holds."""

    name = "positional"

    def load(self):
        self.seq = []

    def _logits(self):
        out = np.zeros(8, dtype=np.float32)
        out[(len(self.seq) + sum(self.seq)) % 7] = 1.0
        return out

    def prefill(self, token_ids, all_logits=False):
        self.seq = list(token_ids)
        return self._logits()

    def decode(self, token_id):
        self.seq.append(int(token_id))
        return self._logits()

    def append(self, token_ids):
        self.seq += list(token_ids)
        return self._logits()

    def rewind(self, length):
        self.seq = self.seq[:length]
        return True


class SlowFill(Positional):
    """A depth's fill costs it CPU time (it cannot rewind: every fill is a prefill of the
    context), its generations almost none."""

    name = "slow-fill"

    def prefill(self, token_ids, all_logits=False):
        end = time.process_time() + 0.4
        while time.process_time() < end:
            pass
        return super().prefill(token_ids, all_logits)

    def rewind(self, length):
        return False
