"""The one greedy decode loop and every clock (METRICS.md). Engines never time themselves."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

from .engines.base import Engine

clock = time.perf_counter


def argmax(logits) -> int:
    return int(logits.argmax())  # works for torch tensors and numpy arrays alike


@dataclass
class Generation:
    tokens: list[int]
    ttft_s: float  # prefill + first argmax
    itl_s: list[float]  # N-1 gaps between consecutive new tokens
    e2e_s: float  # start to the N-th token

    @property
    def tpot_s(self) -> float:
        n = len(self.tokens)
        return (self.e2e_s - self.ttft_s) / (n - 1) if n > 1 else float("nan")

    @property
    def decode_tps(self) -> float:
        n = len(self.tokens)
        return (n - 1) / (self.e2e_s - self.ttft_s) if n > 1 else float("nan")


def generate(engine: Engine, prompt_ids: list[int], new_tokens: int) -> Generation:
    """Exactly `new_tokens` greedy tokens, no early stop on EOS."""
    t0 = clock()
    token = argmax(engine.prefill(prompt_ids))
    stamps = [clock()]
    tokens = [token]
    for _ in range(new_tokens - 1):
        token = argmax(engine.decode(token))
        stamps.append(clock())
        tokens.append(token)
    return Generation(
        tokens=tokens,
        ttft_s=stamps[0] - t0,
        itl_s=[b - a for a, b in zip(stamps, stamps[1:])],
        e2e_s=stamps[-1] - t0,
    )


@dataclass
class Measurement:
    first_call_s: float  # the first (cold) generation, kept apart from steady state
    warmup_runs: int
    runs: list[Generation]
    deterministic: bool  # every timed run produced the same tokens as the first call


def measure(
    engine: Engine,
    prompt_ids: list[int],
    new_tokens: int,
    warmup: int,
    min_repeats: int,
    min_time_s: float,
    max_repeats: int,
    progress: Callable[[str], None] = lambda msg: None,
) -> Measurement:
    """Warm up, then repeat until both min_repeats and min_time_s are reached (cap max_repeats)."""
    gc.collect()
    progress("first call")
    first = generate(engine, prompt_ids, new_tokens)
    for i in range(1, warmup):  # the first call counts as the first warmup run
        progress(f"warmup {i + 1}/{warmup}")
        generate(engine, prompt_ids, new_tokens)
    runs: list[Generation] = []
    timed = 0.0
    while len(runs) < max_repeats and (len(runs) < min_repeats or timed < min_time_s):
        progress(f"repeat {len(runs) + 1} (min {min_repeats}, {timed:.1f}/{min_time_s:.0f} s)")
        gc.collect()
        gc.disable()  # a collection inside a timed run would be charged to one token
        try:
            run = generate(engine, prompt_ids, new_tokens)
        finally:
            gc.enable()
        runs.append(run)
        timed += run.e2e_s
    return Measurement(
        first_call_s=first.e2e_s,
        warmup_runs=max(warmup, 1),
        runs=runs,
        deterministic=all(r.tokens == first.tokens for r in runs),
    )
