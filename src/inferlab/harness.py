"""The one greedy decode loop and every clock (METRICS.md). Engines never time themselves."""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass
from typing import Callable, ContextManager

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


def generate(engine: Engine, prompt_ids: list[int], new_tokens: int,
             around: Callable[[str], ContextManager] | None = None,
             after_context: bool = False) -> Generation:
    """Exactly `new_tokens` greedy tokens, no early stop on EOS. `around(phase)` ("prefill" or
    "decode") wraps each engine call: how profilers label and observe the same loop. With
    after_context the prompt continues the sequence already in the engine's cache (a sweep's
    depth: the context was filled before, untimed) instead of starting a new one."""
    wrap = around or _nothing
    first_call = engine.append if after_context else engine.prefill
    t0 = clock()
    with wrap("prefill"):
        token = argmax(first_call(prompt_ids))
    stamps = [clock()]
    tokens = [token]
    for _ in range(new_tokens - 1):
        with wrap("decode"):
            token = argmax(engine.decode(token))
        stamps.append(clock())
        tokens.append(token)
    return Generation(
        tokens=tokens,
        ttft_s=stamps[0] - t0,
        itl_s=[b - a for a, b in zip(stamps, stamps[1:])],
        e2e_s=stamps[-1] - t0,
    )


def _nothing(phase: str) -> ContextManager:
    return contextlib.nullcontext()


def generate_timed(engine: Engine, prompt_ids: list[int], new_tokens: int,
                   timed: bool = True, after_context: bool = False) -> Generation:
    """`generate`, with the garbage collector paused in a timed run: a collection inside it
    would be charged to one token."""
    gc.collect()
    if not timed:
        return generate(engine, prompt_ids, new_tokens, after_context=after_context)
    gc.disable()
    try:
        return generate(engine, prompt_ids, new_tokens, after_context=after_context)
    finally:
        gc.enable()
