"""The one greedy decode loop and every clock (METRICS.md). Engines never time themselves."""

from __future__ import annotations

import contextlib
import gc
import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

from .engines.base import Engine
from .results import RunSample

clock = time.perf_counter


def argmax(logits) -> int:
    return int(logits.argmax())  # works for torch tensors and numpy arrays alike


@dataclass
class Generation(RunSample):
    """One generation's clocks (RunSample: TTFT, E2E, the N-1 gaps between new tokens, and
    the TPOT and decode rate defined there, once) with its tokens."""

    tokens: list[int] = field(default_factory=list)  # the sequence's new tokens (a batch: its first sequence's)
    sequences: list[list[int]] = field(default_factory=list)  # a batch: every sequence's tokens

    def sample(self) -> RunSample:
        return RunSample(ttft_s=self.ttft_s, e2e_s=self.e2e_s, itl_s=self.itl_s)


def generate(engine: Engine, prompt_ids: list[int], new_tokens: int,
             around: Callable[[str], ContextManager] | None = None,
             after_context: bool = False) -> Generation:
    """Exactly `new_tokens` greedy tokens, no early stop on EOS. `around(phase)` ("prefill" or
    "decode") wraps each engine call: how profilers label and observe the same loop. With
    after_context the prompt continues the sequence already in the engine's cache (a sweep's
    depth: the context was filled before, untimed) instead of starting a new one."""
    first_call = engine.append if after_context else engine.prefill
    return _greedy(lambda: argmax(first_call(prompt_ids)), lambda t: argmax(engine.decode(t)),
                   new_tokens, around)


def generate_batch(engine: Engine, prompts: list[list[int]], new_tokens: int,
                   after_context: bool = False) -> Generation:
    """The same loop over a batch of equally long prompts: one engine call per step for every
    sequence; each sequence's next token is its own row's argmax."""
    first_call = engine.append_batch if after_context else engine.prefill_batch

    def rows(logits) -> list[int]:
        return [argmax(row) for row in logits]

    g = _greedy(lambda: rows(first_call(prompts)),
                lambda tokens: rows(engine.append_batch([[t] for t in tokens])), new_tokens, None)
    g.sequences = [list(seq) for seq in zip(*g.tokens)]
    g.tokens = g.sequences[0]
    return g


def _greedy(first: Callable, step: Callable, new_tokens: int,
            around: Callable[[str], ContextManager] | None) -> Generation:
    """The loop and its clocks: first() gives the first token(s), step(last) the next."""
    wrap = around or _nothing
    t0 = clock()
    with wrap("prefill"):
        token = first()
    stamps = [clock()]
    tokens = [token]
    for _ in range(new_tokens - 1):
        with wrap("decode"):
            token = step(token)
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


def generate_timed(engine: Engine, prompts: list[list[int]], new_tokens: int,
                   timed: bool = True, after_context: bool = False) -> Generation:
    """`generate` (one prompt) or `generate_batch` (several), with the garbage collector paused
    in a timed run: a collection inside it would be charged to one token."""
    gc.collect()
    if len(prompts) == 1:
        def run():
            return generate(engine, prompts[0], new_tokens, after_context=after_context)
    else:
        def run():
            return generate_batch(engine, prompts, new_tokens, after_context=after_context)
    if not timed:
        return run()
    gc.disable()
    try:
        return run()
    finally:
        gc.enable()
