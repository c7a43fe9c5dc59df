"""The results model: plain dataclasses, versioned JSON, atomic writes. Rendering only reads it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from . import defaults
from .derived_types import Derived
from .fsutil import write_json_atomic


# where the wall time of a run goes (RunResults.timings): resolving the model, the prompt and the
# quality plan; building artifacts; the bandwidth probes; the reference's own process; loading;
# first calls and warm-up; timed generations; a sweep's cells (their loads, first calls and
# timed generations together); the quality pass; profiling; writing the reports
RUN_PHASES = ("resolve", "prepare", "probes", "reference", "load", "warmup", "timed", "cells",
              "quality", "profile", "report")


class ResultsError(ValueError):
    """A results file that cannot be read (CLI: one line, exit 2)."""


@dataclass
class EngineDetails:
    """What an engine built, in one schema for every engine: the roofline and the advice read
    the typed fields; `extra` keeps the engine's own facts (paths, versions, node counts) for
    the report, never for arithmetic."""

    dtype: str = ""  # in words, for a reader
    weight_bits: int | None = None  # bits per weight of the matrices a decode step reads (32, 16, 8, 4)
    activation_bits: int | None = None  # bits of the matrix products' inputs (32 fp32, 16 bf16, 8 int8)
    kv_bytes_per_value: float | None = None  # bytes per cached key or value; 0: no cache
    bytes_read_per_step: int | None = None  # weight bytes a decode step reads (lookup-only tables aside)
    weights_exact: bool = False  # the quantizer found the reference's weights on its grid
    threads: int | None = None
    # the instruction sets the engine's kernels were built for or chose at run time, where it
    # says (native-int4: its kernel path; llama.cpp: the CPU options of its build)
    instruction_set: str = ""
    setup_in_ttft: str = ""  # what the engine does per new sequence inside TTFT (Engine.setup_in_ttft)
    extra: dict[str, Any] = field(default_factory=dict)

    # results of schema 3 and engines' info() used these names for two of the fields
    RENAMED = {"kv_cache_bytes_per_value": "kv_bytes_per_value",
               "weight_bytes_read_per_step": "bytes_read_per_step"}

    @classmethod
    def from_dict(cls, d: dict | None) -> "EngineDetails":
        d = {cls.RENAMED.get(k, k): v for k, v in (d or {}).items()}
        known = {f.name for f in fields(cls)} - {"extra"}
        out = cls(**{k: v for k, v in d.items() if k in known},
                  extra={**d.get("extra", {}), **{k: v for k, v in d.items() if k not in known and k != "extra"}})
        if out.weight_bits is None and out.dtype:  # a schema-3 file: its words are all there is
            out.weight_bits, out.activation_bits = bits_from_words(out.dtype)
        return out


def bits_from_words(dtype: str) -> tuple[int | None, int | None]:
    """Weight and activation bits of a results file written before they were fields (schema 3),
    read from its dtype text. Only for old files: engines now state their bits."""
    text = dtype.lower()
    weight = next((b for b, words in ((4, ("int4", "q4", "4-bit")), (8, ("int8", "q8", "8-bit")),
                                      (32, ("float32",))) if any(w in text for w in words)), None)
    act = 8 if "int8 compute" in text or "int8 activations" in text or "dynamically quantized" in text \
        else 16 if "bf16 matmul" in text else 32 if weight else None
    return weight, act


@dataclass
class QualityResult:
    """A method's quality against the fp32 reference (quality.py measures it; METRICS.md
    "Quality"). A pass that could not run keeps verdict 'error' and its reason."""

    meaningful: bool = True  # False: random weights, where perplexity and KL mean nothing
    text_source: str = ""
    context: int = 0  # tokens per scored window
    stride: int = 0
    scored_tokens: int = 0
    ppl: float | None = None
    ref_ppl: float | None = None
    ppl_increase: float | None = None  # ppl / ref_ppl - 1
    kl_mean: float | None = None
    kl_p99: float | None = None
    top1: float | None = None
    # 95 % intervals [low, high] (block bootstrap over positions, METRICS.md)
    ppl_increase_ci: list[float] | None = None
    kl_mean_ci: list[float] | None = None
    top1_ci: list[float] | None = None
    # mean KL and positions by regime: the prefix call vs one token at a time
    regimes: dict = field(default_factory=dict)
    prefix: int = 0  # tokens of a window scored in one call
    greedy_first_divergence: list[int] = field(default_factory=list)
    greedy_new_tokens: int = 0
    greedy_identical_share: float | None = None
    verdict: str = "n/a"  # PASS | FAIL | not meaningful | error
    marginal: list[str] = field(default_factory=list)  # budget lines an interval straddles
    reasons: list[str] = field(default_factory=list)
    budget: dict = field(default_factory=lambda: dict(defaults.QUALITY_BUDGET))

    @classmethod
    def from_dict(cls, d: dict | None) -> "QualityResult | None":
        if d is None:
            return None
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TopOp:
    op: str
    category: str
    self_ms: float  # per call of the phase
    calls_per_phase: float
    share: float  # of the phase's wall time


@dataclass
class PhaseProfile:
    """One phase (prefill or decode) of a profile, per call (profiling/breakdown.py)."""

    calls: int
    wall_ms: float
    categories_ms: dict[str, float]  # overhead included: the shares add to 1
    categories_share: dict[str, float]
    top_ops: list[TopOp] = field(default_factory=list)
    parts_ms: dict[str, float] = field(default_factory=dict)  # by model part (profiling/parts.py)
    parts_step_ms: float | None = None  # the step the parts were measured in (a separate pass)

    @classmethod
    def from_dict(cls, d: dict) -> "PhaseProfile":
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in known})
        out.top_ops = [TopOp(**o) if isinstance(o, dict) else o for o in out.top_ops]
        return out


@dataclass
class ContextStep:
    """The profile's context sweep: one decode step after `context` cached tokens."""

    context: int
    step_ms: float
    attention_share: float


@dataclass
class ProfileResult:
    """A method's profiling pass (profiling/run.py): where a prefill and a few decode steps
    went, by category, operator and model part, the trace's file, and the same steps timed
    without the profiler."""

    profiler: str
    decode_steps: int
    phases: dict[str, PhaseProfile]
    trace_file: str = ""
    trace_bytes: int = 0
    sweep: list[ContextStep] = field(default_factory=list)
    parts_note: str = ""
    unprofiled_prefill_ms: float | None = None
    unprofiled_decode_step_ms: float | None = None

    @classmethod
    def from_dict(cls, d: dict | None) -> "ProfileResult | None":
        if d is None:
            return None
        d = dict(d)
        unprofiled = d.pop("unprofiled", None) or {}  # the profiler's dict keeps them together
        known = {f.name for f in fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in known})
        out.phases = {k: PhaseProfile.from_dict(v) if isinstance(v, dict) else v for k, v in out.phases.items()}
        out.sweep = [ContextStep(**s) if isinstance(s, dict) else s for s in out.sweep]
        out.unprofiled_prefill_ms = d.get("unprofiled_prefill_ms", unprofiled.get("prefill_ms"))
        out.unprofiled_decode_step_ms = d.get("unprofiled_decode_step_ms", unprofiled.get("decode_step_ms"))
        return out

    @property
    def decode(self) -> PhaseProfile | None:
        return self.phases.get("decode")


@dataclass
class RunSample:
    """One timed generation's raw clocks (seconds); TPOT and the decode rate are defined here
    and nowhere else (METRICS.md)."""

    ttft_s: float
    e2e_s: float
    itl_s: list[float]
    # a sweep's: the streaming bandwidth read just before this run (cells.py), its decode floor's
    bandwidth_bytes_per_s: float | None = None

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
    details: EngineDetails = field(default_factory=EngineDetails)
    # a sweep's batch > 1: per sequence, its first token differing from the same method's
    # tokens for that sequence alone (batch 1); N if none
    batch_divergence: list[int] | None = None
    quality: QualityResult | None = None
    profile: ProfileResult | None = None
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
        d["details"] = EngineDetails.from_dict(d.get("details"))
        d["quality"] = QualityResult.from_dict(d.get("quality"))
        d["profile"] = ProfileResult.from_dict(d.get("profile"))
        return cls(**d)


@dataclass(frozen=True)
class Cell:
    """One workload point of a sweep: plain data, the unit of measuring, storing, resuming and
    of sending to another host. `depth` tokens are in the cache before the prompt;
    `batch` sequences run at once. `machine`: the kind of machine (cluster.machine_kind) that
    measures it, where a sweep spans several kinds; empty where it runs on one."""

    prompt_tokens: int
    new_tokens: int
    depth: int = 0
    threads: int = 1
    batch: int = 1
    methods: tuple[str, ...] = ()
    machine: str = ""

    @property
    def key(self) -> str:
        """Unique within a sweep: what resuming, comparing and the derived rows match cells by."""
        return self.point + (f" on {self.machine}" if self.machine else "")

    @property
    def point(self) -> str:
        """The workload point, whatever machine measures it: 'pp512+tg32 t2 b1'."""
        return f"{self.test} t{self.threads} b{self.batch}"

    @property
    def test(self) -> str:
        """llama-bench's name of the work: 'pp512+tg32', with ' @ d1024' after a context."""
        depth = f" @ d{self.depth}" if self.depth else ""
        return f"pp{self.prompt_tokens}+tg{self.new_tokens}{depth}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["methods"] = list(self.methods)
        if not self.machine:  # one kind of machine: the record a local sweep has always had
            del d["machine"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Cell":
        return cls(**{**d, "methods": tuple(d.get("methods", ()))})


@dataclass
class CellResult:
    """What one cell measured: per method the same record a run keeps (its timed runs, memory,
    other load, counters, status), and the machine's state around it."""

    cell: Cell
    # running | complete | interrupted | failed (no node could measure it: a cluster's)
    status: str = "running"
    methods: list[MethodResult] = field(default_factory=list)
    conditions: dict[str, Any] = field(default_factory=dict)  # machine.conditions() before/after
    seconds: float | None = None  # wall time the cell took, loading excluded
    # where it was measured: id ("local", or the Ray node's), host, hostname, and kind, the key
    # of its machine's record in RunResults.machines
    node: dict[str, Any] = field(default_factory=dict)

    def method(self, name: str) -> MethodResult | None:
        return next((m for m in self.methods if m.method == name), None)

    def to_dict(self) -> dict:
        return {"cell": self.cell.to_dict(), "status": self.status,
                "methods": [m.to_dict() for m in self.methods], "conditions": self.conditions,
                "seconds": self.seconds, "node": self.node}

    @classmethod
    def from_dict(cls, d: dict) -> "CellResult":
        return cls(cell=Cell.from_dict(d["cell"]), status=d.get("status", "running"),
                   methods=[MethodResult.from_dict(m) for m in d.get("methods", [])],
                   conditions=d.get("conditions") or {}, seconds=d.get("seconds"), node=d.get("node") or {})


@dataclass
class RunResults:
    config: dict[str, Any]
    machine: dict[str, Any]
    model: dict[str, Any]
    prompt_tokens: int
    methods: list[MethodResult] = field(default_factory=list)
    # a sweep: its axes (SweepConfig.axes) and its cells; a run has neither
    sweep: dict[str, Any] | None = None
    cells: list[CellResult] = field(default_factory=list)
    # a sweep: the record of each kind of machine its cells were measured on (CellResult.node's
    # kind: cluster.machine_kind); `machine` is the driver's
    machines: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference_tokens: list[int] | None = None
    quality_setup: dict[str, Any] | None = None  # text, windows, budget (quality.py)
    probes: list[dict[str, Any]] = field(default_factory=list)  # bandwidth / GEMM peak (probe.py)
    # wall seconds by phase (RUN_PHASES), and the whole run's as "total"
    timings: dict[str, float] = field(default_factory=dict)
    derived: Derived = field(default_factory=Derived)  # derive.py: refreshed at every save
    status: str = "running"  # running | complete | interrupted
    created: str = ""
    schema_version: int = defaults.SCHEMA_VERSION
    inferlab_version: str = ""

    def method(self, name: str) -> MethodResult | None:
        return next((m for m in self.methods if m.method == name), None)

    def run_cell(self) -> Cell:
        """A run's workload as the one cell it is (a run is a sweep of one cell)."""
        c = self.config or {}
        return Cell(prompt_tokens=self.prompt_tokens, new_tokens=c.get("new_tokens", 0),
                    threads=c.get("threads") or 1, methods=tuple(m.method for m in self.methods))

    def measuring_machine(self) -> dict[str, Any]:
        """The record of the machine that measured: a cluster's one kind's, else this run's own;
        {} where a sweep spans several kinds (machine_of then says, cell by cell)."""
        if len(self.machines) > 1:
            return {}
        return next(iter(self.machines.values())) if self.machines else self.machine or {}

    def machine_of(self, cell: Cell) -> dict[str, Any]:
        """The record of the machine that measured `cell`."""
        return (self.machines.get(cell.machine) or {}) if cell.machine else self.measuring_machine()

    def measured(self) -> list[tuple[Cell, MethodResult]]:
        """Every (cell, method) record: a sweep's cells, or a run's methods in its one cell.
        What compare, the history and the exports iterate."""
        if self.sweep:
            return [(c.cell, m) for c in self.cells for m in c.methods]
        cell = self.run_cell()
        return [(cell, m) for m in self.methods]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["methods"] = [m.to_dict() for m in self.methods]
        d["cells"] = [c.to_dict() for c in self.cells]
        d["derived"] = self.derived.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunResults":
        version = d.get("schema_version")
        if version not in defaults.READABLE_SCHEMA_VERSIONS:
            raise ResultsError(
                f"results schema version {version!r} is not supported (this inferlab reads "
                f"versions {', '.join(map(str, defaults.READABLE_SCHEMA_VERSIONS))})"
            )
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["methods"] = [MethodResult.from_dict(m) for m in d.get("methods", [])]
        d["cells"] = [CellResult.from_dict(c) for c in d.get("cells", [])]
        d["derived"] = Derived.from_dict(d.get("derived"))
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
