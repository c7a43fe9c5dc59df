"""The engine contract. An engine loads one model one way and runs prefill and one decode step;
the harness owns the greedy loop and every clock, so all methods are measured alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..models import ModelRef


class EngineError(RuntimeError):
    """A method that cannot run (or built nothing): recorded as failed with this message."""


class EngineUnsupported(EngineError):
    """The method does not apply to this model (llama.cpp needs a GGUF file, a builder that
    lacks the architecture): recorded as skipped, not failed, with this message."""


@dataclass
class Usage:
    """How to run a method's model outside inferlab, with that engine's own API: the file or
    folder to copy, the packages it needs, and lines that load it and generate greedily."""

    path: str
    requires: str  # pip packages
    code: str  # Python, complete: runs as it is
    shell: str = ""  # the same from a command line, where the engine has one
    note: str = ""
    also: list[str] = field(default_factory=list)  # other files the lines read (a tokenizer)


class Engine(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help and the report
    # True when every decode step recomputes the whole sequence (no cache): one call over a
    # window then gives each step's logits, and quality scores it that way (quality.py)
    steps_are_full_forwards: ClassVar[bool] = False
    # the profiler of its framework (profiling/run.py: "torch", "onnxruntime", "native"); None:
    # inferlab has none for it, and `inferlab profile` says so
    profiler: ClassVar[str | None] = None
    # sequences one prefill or decode call can carry; a sweep's cell of a larger batch is
    # skipped for the method, with that reason
    max_batch: ClassVar[int] = 1
    # what the engine does for each new sequence inside the prefill's clock (TTFT): a cache
    # allocated, reset or zeroed, a state made anew; the report states it beside the figures
    setup_in_ttft: ClassVar[str] = "not stated"

    def __init__(self, model: ModelRef, threads: int):
        self.model_ref = model
        self.threads = threads

    @classmethod
    def applies_to(cls, model: ModelRef) -> bool:
        """A cheap check, without building anything, of whether the method can run this model
        (the default method list takes the next of a family when not); prepare() still raises
        EngineUnsupported for what only the build finds out."""
        return True

    @classmethod
    def unavailable(cls, model: ModelRef) -> str | None:
        """Why this method cannot run this model on this machine, in words; None when it can
        (as far as a cheap check tells: `inferlab doctor` and the method list read it)."""
        return None if cls.applies_to(model) else "does not apply to this model"

    def usage(self, prompt: str, new_tokens: int) -> Usage | None:
        """How to run this method outside inferlab (`inferlab plan` shows the winner's);
        None when it has no standalone form. Builds nothing: call it after prepare()."""
        return None

    def prepare(self) -> bool:
        """Build and cache what `load` needs (export, conversion). Returns True on a cache hit.

        Runs in its own process before the measuring one, so its memory never counts."""
        return True

    @abstractmethod
    def load(self) -> None:
        """Load into memory, ready to generate (timed as load time)."""

    @abstractmethod
    def prefill(self, token_ids: list[int], all_logits: bool = False) -> Any:
        """Start a new sequence; return the next-token logits (1-D, vocabulary), computing
        the LM head for the last position only. With all_logits (the quality pass), return
        the logits of every position, [len(token_ids), vocabulary]."""

    @abstractmethod
    def decode(self, token_id: int) -> Any:
        """Append one token to the sequence; return the next-token logits (1-D)."""

    def append(self, token_ids: list[int]) -> Any:
        """Continue the current sequence with several tokens in one call (a prompt after a
        context already in the cache: a sweep's depth); return the next-token logits (1-D)."""
        raise EngineUnsupported(f"{self.name} cannot continue a sequence with several tokens")

    def rewind(self, length: int) -> bool:
        """Keep the first `length` tokens of the current sequence(s) and drop the rest, as if
        only those had been given (a sweep's depth: the context is filled once per cell, not
        once per run). False when the engine cannot: the caller fills the context again."""
        return False

    # a batch (engines whose max_batch > 1): sequences of equal length, so no padding
    def prefill_batch(self, sequences: list[list[int]]) -> Any:
        """Start len(sequences) new sequences at once; return the logits [batch, vocabulary]
        of each one's last position."""
        raise EngineUnsupported(f"{self.name} decodes one sequence at a time")

    def append_batch(self, sequences: list[list[int]]) -> Any:
        """Continue every sequence of the batch with its row of tokens (one token each: a
        decode step); return the logits [batch, vocabulary] of each one's last position."""
        raise EngineUnsupported(f"{self.name} decodes one sequence at a time")

    def reset_counters(self) -> None:
        """Zero the engine's own performance counters, if it keeps any (before a generation)."""

    def counters(self) -> dict | None:
        """The engine's own clocks of the last generation (prefill_ms, prefill_tokens,
        decode_ms, decode_tokens), a witness for the harness's; None when it keeps none."""
        return None

    @abstractmethod
    def info(self) -> dict:
        """What was actually built: weight_bytes, file_bytes, and engine details
        (layers quantized, providers, threads). Called after `load`."""
