"""The results model: plain dataclasses, versioned JSON, atomic writes. Rendering only reads it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import defaults
from .fsutil import write_json_atomic


class ResultsError(ValueError):
    """A results file that cannot be read (CLI: one line, exit 2)."""


@dataclass
class RunSample:
    """One timed generation's raw clocks (seconds)."""

    ttft_s: float
    e2e_s: float
    itl_s: list[float]

    @property
    def tpot_s(self) -> float:
        n = len(self.itl_s)
        return (self.e2e_s - self.ttft_s) / n if n else float("nan")

    @property
    def decode_tps(self) -> float:
        n = len(self.itl_s)
        return n / (self.e2e_s - self.ttft_s) if n else float("nan")


@dataclass
class MethodResult:
    method: str
    status: str  # ok | skipped | failed | timeout | interrupted (| running while being measured)
    error: str | None = None
    summary: str = ""
    # cold start
    prepare_s: float | None = None  # export / conversion, None when served from the cache
    prepare_cache_hit: bool | None = None
    load_s: float | None = None
    first_call_s: float | None = None
    # steady state
    warmup_runs: int = 0
    runs: list[RunSample] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    deterministic: bool | None = None
    # size and memory
    weight_bytes: int | None = None
    file_bytes: int | None = None
    parameters: int | None = None
    steady_rss_bytes: int | None = None  # resident after loading and the warmup (VmRSS)
    peak_rss_bytes: int | None = None  # the worker's own high-water mark through its timed runs
    threads: int | None = None
    # what else the machine did while this method was timed (procstat.py)
    timed_wall_s: float | None = None  # sum of the timed runs' E2E
    other_cpu_s: float | None = None  # machine CPU time minus this run's own processes'
    steal_s: float | None = None  # CPU time the hypervisor gave to other machines
    engine_counters: list[dict[str, Any]] = field(default_factory=list)  # per timed run, if kept
    details: dict[str, Any] = field(default_factory=dict)
    # against the reference
    first_divergence: int | None = None  # index of the first token differing (N if none)
    quality: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None  # profiling/breakdown.py per phase, sweep, trace
    profile_error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def samples(self, figure: str) -> list[float]:
        if figure == "itl_s":
            return [x for r in self.runs for x in r.itl_s]
        return [getattr(r, figure) for r in self.runs]

    def other_load(self, cpus: int | None = None) -> float | None:
        """Other processes' CPU time as a share of the machine's CPU time during the timed runs."""
        import os

        if not self.timed_wall_s or self.other_cpu_s is None:
            return None
        return max(self.other_cpu_s, 0.0) / (self.timed_wall_s * (cpus or os.cpu_count() or 1))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MethodResult":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["runs"] = [RunSample(**r) for r in d.get("runs", [])]
        return cls(**d)


@dataclass
class RunResults:
    config: dict[str, Any]
    machine: dict[str, Any]
    model: dict[str, Any]
    prompt_tokens: int
    methods: list[MethodResult] = field(default_factory=list)
    reference_tokens: list[int] | None = None
    quality_setup: dict[str, Any] | None = None  # text, windows, budget (quality.py)
    probes: list[dict[str, Any]] = field(default_factory=list)  # bandwidth / GEMM peak (probe.py)
    derived: dict[str, Any] = field(default_factory=dict)  # derive.py: refreshed at every save
    status: str = "running"  # running | complete | interrupted
    created: str = ""
    schema_version: int = defaults.SCHEMA_VERSION
    inferlab_version: str = ""

    def method(self, name: str) -> MethodResult | None:
        return next((m for m in self.methods if m.method == name), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["methods"] = [m.to_dict() for m in self.methods]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunResults":
        version = d.get("schema_version")
        if version != defaults.SCHEMA_VERSION:
            raise ResultsError(
                f"results schema version {version!r} is not supported "
                f"(this inferlab reads version {defaults.SCHEMA_VERSION})"
            )
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["methods"] = [MethodResult.from_dict(m) for m in d.get("methods", [])]
        return cls(**d)


def save(results: RunResults, path: str) -> None:
    """Derive every figure from the measurements so far, then write the file atomically."""
    from .derive import derive

    results.derived = derive(results)
    write_json_atomic(path, results.to_dict())


def load(path: str) -> RunResults:
    """Load a results.json back; raises ResultsError with a one-line reason."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"results file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"results file is corrupt (not valid JSON): {path}: {e}") from None
    if not isinstance(data, dict) or "methods" not in data:
        raise ResultsError(f"not an inferlab results file: {path}")
    try:
        return RunResults.from_dict(data)
    except (TypeError, KeyError) as e:
        raise ResultsError(f"results file is malformed: {path}: {e}") from None
