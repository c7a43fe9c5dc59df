"""The messages between the runner and a method's worker process, typed on both sides.

The runner sends one `Start`, then requests; the worker answers each request with exactly one
reply (or `Failed`). Every message travels as one JSON line: {"kind": class name, "body": fields}.
Nested dataclass fields (ModelRef, RunSample, EngineInfo) are rebuilt from their type hints."""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from .models import ModelRef
from .results import EngineDetails, QualityResult, RunSample


# --- requests (runner -> worker) -------------------------------------------------------------
@dataclass
class Start:
    """First message: which method this worker is, on which model, with how many threads."""

    method: str
    engine: str  # "package.module:Class"
    model: ModelRef
    threads: int


@dataclass
class Prepare:
    """Build and cache what loading needs (export, conversion); own process, never measured."""


@dataclass
class Load:
    pass


@dataclass
class Generate:
    """One greedy generation of exactly `new_tokens` tokens for each prompt of `prompts` (one:
    batch 1; several of equal length: a batch); `timed` ones run with the garbage collector
    paused (a collection would be charged to one token). With `contexts` (one per prompt) the
    cache is filled with them first, untimed, and each prompt continues its sequence (a sweep's
    depth). `reset_peak` starts the process's peak-memory mark anew (a sweep's cell)."""

    prompts: list[list[int]]
    new_tokens: int
    timed: bool = True
    contexts: list[list[int]] = field(default_factory=list)
    reset_peak: bool = False


@dataclass
class Evaluate:
    """The quality pass (quality.py) against the reference."""

    plan: dict[str, Any]
    is_reference: bool


@dataclass
class Profile:
    prompt_ids: list[int]
    steps: int
    detail: bool
    sweep: list[int]
    trace_path: str


@dataclass
class HowToRun:
    """The lines that run this method's model outside inferlab (Engine.usage); builds nothing."""

    prompt: str
    new_tokens: int


@dataclass
class Stop:
    pass


# --- replies (worker -> runner) --------------------------------------------------------------
@dataclass
class EngineInfo:
    """What the engine says it built (Engine.info)."""

    weight_bytes: int | None = None
    file_bytes: int | None = None
    parameters: int | None = None
    details: EngineDetails = field(default_factory=EngineDetails)


@dataclass
class Prepared:
    seconds: float | None  # None on a cache hit
    cache_hit: bool


@dataclass
class Loaded:
    load_s: float
    info: EngineInfo


@dataclass
class Generated:
    sample: RunSample
    tokens: list[int]  # a batch: its first sequence's
    sequences: list[list[int]]  # a batch: every sequence's tokens (empty at batch 1)
    cpu_s: float  # CPU time of the whole worker process (all threads) during the generation
    rss_bytes: int | None  # resident now (VmRSS)
    peak_rss_bytes: int | None  # the process's own high-water mark so far (VmHWM)
    counters: dict[str, Any] | None = None  # the engine's own clocks of this generation
    # the machine's busy and steal CPU-seconds over the same span as cpu_s (procstat); None
    # without /proc/stat
    machine_s: list[float] | None = None


@dataclass
class Evaluated:
    quality: QualityResult


@dataclass
class Profiled:
    profile: dict[str, Any]
    info: EngineInfo


@dataclass
class Recipe:
    usage: dict[str, Any] | None  # engines.base.Usage's fields; None: no form outside inferlab


@dataclass
class Failed:
    error: str  # one line: "ExceptionType: message"
    unsupported: bool = False  # the method does not apply to this model: skipped, not failed


MESSAGES = {cls.__name__: cls for cls in (Start, Prepare, Load, Generate, Evaluate, Profile, HowToRun, Stop,
                                          Prepared, Loaded, Generated, Evaluated, Profiled, Recipe, Failed)}


def encode(message) -> str:
    return json.dumps({"kind": type(message).__name__, "body": asdict(message)}) + "\n"


def decode(line: str):
    data = json.loads(line)
    cls = MESSAGES[data["kind"]]
    return _build(cls, data["body"])


def _build(cls, body: dict):
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in body:  # the field's default
            continue
        value = body[f.name]
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind) and isinstance(value, dict):
            value = _build(kind, value)
        values[f.name] = value
    return cls(**values)
