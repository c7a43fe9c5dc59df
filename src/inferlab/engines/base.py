"""The engine contract. An engine loads one model one way and runs prefill and one decode step;
the harness owns the greedy loop and every clock, so all methods are measured alike."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from ..models import ModelRef


class EngineError(RuntimeError):
    """A method that cannot run (or built nothing): recorded as failed with this message."""


class Engine(ABC):
    name: ClassVar[str]
    summary: ClassVar[str]  # one line for --help and the report

    def __init__(self, model: ModelRef, threads: int):
        self.model_ref = model
        self.threads = threads

    def prepare(self) -> bool:
        """Build and cache what `load` needs (export, conversion). Returns True on a cache hit.

        Runs in its own process before the measuring one, so its memory never counts."""
        return True

    @abstractmethod
    def load(self) -> None:
        """Load into memory, ready to generate (timed as load time)."""

    @abstractmethod
    def prefill(self, token_ids: list[int]) -> Any:
        """Start a new sequence; return the next-token logits (1-D, vocabulary)."""

    @abstractmethod
    def decode(self, token_id: int) -> Any:
        """Append one token to the sequence; return the next-token logits (1-D)."""

    @abstractmethod
    def window_logits(self, token_ids: list[int]):
        """Logits for every position of a fresh window: numpy float32 [len(token_ids), vocab]."""

    def profile(self, prompt_ids: list[int], steps: int, trace_path: str, detail: bool,
                sweep_lengths: tuple[int, ...] = ()) -> dict:
        """Profile a prefill and `steps` decode steps (after `load`); write a Chrome trace to
        trace_path; return the per-phase breakdown (profiling/breakdown.py)."""
        raise EngineError(f"{self.name} cannot be profiled")

    @abstractmethod
    def info(self) -> dict:
        """What was actually built: weight_bytes, file_bytes, and engine details
        (layers quantized, providers, threads). Called after `load`."""
