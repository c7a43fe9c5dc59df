"""A scenario's requirements against what a plan measured: each configuration (method x
threads x batch) met, missed or indeterminate on each requirement, the recommendation (the
cheapest configuration that meets them all), the runners-up, or the nearest miss; and the
original study's baselines beside the winner. Reads results only; plan.py measures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from . import defaults
from .results import CellResult, MethodResult, RunResults
from .scenario import Requirement, Scenario
from .stats import ratio_of_medians, run_bootstrap_interval

MET, MISSED, INDETERMINATE = "met", "missed", "indeterminate"
EXIT_MET, EXIT_NONE_MET, EXIT_ONLY_INDETERMINATE = 0, 3, 4
BASELINES = (defaults.BASELINE_METHOD, defaults.REFERENCE_METHOD)  # the original study's, fp32


@dataclass
class Figure:
    """A requirement's figure in one cell (in the requirement's base unit), with its 95 %
    interval; low == high when the figure has no spread (memory, file size)."""

    value: float
    low: float
    high: float
    runs: int = 0


@dataclass
class Check:
    requirement: Requirement
    status: str  # met | missed | indeterminate
    figure: Figure | None = None
    cell: str = ""  # the cell that decided (the worst one)
    note: str = ""  # why, in words, when the figure alone does not say

    def to_dict(self) -> dict:
        return {"requirement": self.requirement.describe(), "status": self.status,
                "figure": vars(self.figure) if self.figure else None, "cell": self.cell, "note": self.note}


@dataclass
class Configuration:
    method: str
    threads: int
    batch: int
    checks: list[Check] = field(default_factory=list)
    peak_rss_bytes: int | None = None  # the largest over its cells
    e2e_s: float | None = None  # its cells' median E2E, the slowest cell
    # where a sweep spans several kinds of machine: the kind (Cell.machine) and what reports
    # call it (machine.kind_names); a configuration is then a method on one kind of machine
    machine: str = ""
    machine_name: str = ""

    @property
    def name(self) -> str:
        return f"{self.method} t{self.threads} b{self.batch}" + (f" on {self.machine_name}" if self.machine else "")

    @property
    def status(self) -> str:
        statuses = {c.status for c in self.checks}
        return MISSED if MISSED in statuses else INDETERMINATE if INDETERMINATE in statuses else MET

    def miss(self) -> float:
        """How far it is from meeting everything: the largest relative miss of a figure
        (0.2 = 20 % beyond a limit); a missed requirement without a figure counts as 1."""
        worst = 0.0
        for c in self.checks:
            if c.status == MET:
                continue
            if c.figure is None:
                worst = max(worst, 1.0 if c.status == MISSED else 0.0)
            else:
                limit = c.requirement.limit
                worst = max(worst, abs(c.figure.value - limit) / limit if c.status == MISSED else 0.0)
        return worst

    def to_dict(self) -> dict:
        return {"method": self.method, "threads": self.threads, "batch": self.batch, "machine": self.machine,
                "machine_name": self.machine_name, "status": self.status,
                "peak_rss_bytes": self.peak_rss_bytes, "e2e_s": self.e2e_s,
                "checks": [c.to_dict() for c in self.checks]}


@dataclass
class Speedup:
    baseline: str
    cell: str
    ratio: float  # baseline's median E2E / the winner's
    low: float
    high: float


@dataclass
class Verdict:
    scenario: Scenario
    configurations: list[Configuration]
    recommended: Configuration | None
    runners_up: list[Configuration]
    nearest: Configuration | None  # when nothing meets every requirement
    speedups: list[Speedup]
    usage: dict | None = None  # how to run the winner outside inferlab (engines.base.Usage)
    bottleneck: dict | None = None  # why the nearest misses (plan.bottleneck)

    @property
    def exit_code(self) -> int:
        if self.recommended is not None:
            return EXIT_MET
        if any(c.status == INDETERMINATE for c in self.configurations):
            return EXIT_ONLY_INDETERMINATE
        return EXIT_NONE_MET

    def to_dict(self) -> dict:
        def name(c):
            return c.name if c else None
        return {"scenario": self.scenario.to_dict(), "recommended": name(self.recommended),
                "runners_up": [c.name for c in self.runners_up], "nearest": name(self.nearest),
                "exit_code": self.exit_code, "speedups": [vars(s) for s in self.speedups],
                "usage": self.usage, "bottleneck": self.bottleneck,
                "configurations": [c.to_dict() for c in self.configurations]}


# --- figures ----------------------------------------------------------------------------------
def figure(req: Requirement, cell: CellResult, m: MethodResult, results: RunResults) -> Figure | None:
    """The requirement's figure for method m in the cell; None when not measured there."""
    kind = req.metric
    if kind == "peak_rss":
        return None if m.peak_rss_bytes is None else Figure(m.peak_rss_bytes, m.peak_rss_bytes, m.peak_rss_bytes)
    if kind == "weights":
        record = results.method(m.method)
        size = record.file_bytes if record and record.file_bytes else (record.weight_bytes if record else None)
        return None if not size else Figure(size, size, size)
    if not m.runs:
        return None
    c = cell.cell
    per_run = {
        "ttft": lambda r: [r.ttft_s],
        "e2e": lambda r: [r.e2e_s],
        "tpot": lambda r: list(r.itl_s),
        "prefill_rate": lambda r: [c.batch * c.prompt_tokens / r.ttft_s],
        "decode_rate": lambda r: [r.decode_tps],
        "total_rate": lambda r: [c.batch * r.decode_tps],
    }[kind]
    groups = [np.asarray(per_run(r), dtype=float) for r in m.runs]
    q = req.percentile or 50

    def statistic(x):
        return float(np.percentile(x, q))
    value = statistic(np.concatenate(groups))
    low, high = run_bootstrap_interval(groups, statistic)
    return Figure(value, low, high, len(m.runs))


def judge_figure(req: Requirement, f: Figure) -> str:
    good = (lambda x: x <= req.limit) if req.bound == "max" else (lambda x: x >= req.limit)
    if good(f.low) and good(f.high):
        return MET
    if not good(f.low) and not good(f.high):
        return MISSED
    return INDETERMINATE


def more_runs(f: Figure, req: Requirement) -> int | None:
    """Runs to add before the interval would clear the limit, if the figure stayed where it
    is (an interval narrows about as 1/sqrt(runs)); None when it sits on the limit."""
    gap = abs(f.value - req.limit)
    half = max(f.high - f.value, f.value - f.low)
    if gap == 0 or f.runs == 0:
        return None
    return max(1, math.ceil(f.runs * (half / gap) ** 2) - f.runs)


def undecided(f: Figure, req: Requirement) -> str:
    n = more_runs(f, req)
    if n is not None and n <= defaults.PLAN_DECIDABLE_RUNS:
        return f"the 95 % interval straddles the limit: about {n} more runs would decide"
    return (f"the figure sits {abs(f.value - req.limit) / req.limit:.1%} from the limit, well inside "
            "its interval: more runs would hardly decide; treat it as at the limit")


# --- one configuration against every requirement ----------------------------------------------
def _check(req: Requirement, cells: list[tuple[CellResult, MethodResult]], results: RunResults) -> Check:
    if req.metric == "quality":
        return _quality_check(req, results.method(cells[0][1].method))
    if req.metric == "completes":
        bad = [(c, m) for c, m in cells if not m.ok]
        if bad:
            c, m = bad[0]
            return Check(req, MISSED, cell=c.cell.key, note=f"{m.status}: {m.error or ''}".strip(": "))
        return Check(req, MET)
    if req.metric == "deterministic":
        bad = [c for c, m in cells if m.deterministic is False]
        return Check(req, MISSED, cell=bad[0].cell.key, note="a timed run's tokens differed") if bad \
            else Check(req, MET)
    order = {MET: 0, INDETERMINATE: 1, MISSED: 2}

    def badness(ch: Check) -> tuple:  # worse status first, then further past the limit
        past = math.inf if ch.figure is None else \
            (ch.figure.value - req.limit) * (1 if req.bound == "max" else -1)
        return order[ch.status], past

    worst: Check | None = None
    for cell, m in cells:
        f = figure(req, cell, m, results)
        if f is None:
            check = Check(req, MISSED, cell=cell.cell.key, note=f"not measured ({m.status})")
        else:
            check = Check(req, judge_figure(req, f), f, cell.cell.key)
            if check.status == INDETERMINATE:
                check.note = undecided(f, req)
        if worst is None or badness(check) > badness(worst):
            worst = check
    return worst


def _quality_check(req: Requirement, record: MethodResult | None) -> Check:
    """The method's quality verdict (judged once per plan); indeterminate when a budget line
    it fails lies inside that line's interval."""
    q = record.quality if record else None
    if q is None:
        return Check(req, MISSED, note="quality not judged")
    if q.verdict == "PASS":
        return Check(req, MET, note="; ".join(q.marginal))
    if q.verdict == "not meaningful":
        return Check(req, MET, note="random weights: only token agreement was checked")
    if q.verdict == "FAIL" and q.marginal:
        return Check(req, INDETERMINATE, note="; ".join(q.reasons + q.marginal))
    return Check(req, MISSED, note="; ".join(q.reasons) or "quality not judged")


def configurations(scenario: Scenario, results: RunResults) -> list[Configuration]:
    from .machine import kind_names

    by_config: dict[tuple[str, int, int, str], list[tuple[CellResult, MethodResult]]] = {}
    for cell in results.cells:
        for m in cell.methods:
            if m.status == "skipped":
                continue  # not a configuration this method offers (no batched decode)
            by_config.setdefault((m.method, cell.cell.threads, cell.cell.batch, cell.cell.machine),
                                 []).append((cell, m))
    names = kind_names(results.machines)
    out = []
    for (method, threads, batch, kind), cells in by_config.items():
        config = Configuration(method, threads, batch, machine=kind, machine_name=names.get(kind, kind))
        config.checks = [_check(req, cells, results) for req in scenario.requirements]
        rss = [m.peak_rss_bytes for _, m in cells if m.peak_rss_bytes]
        config.peak_rss_bytes = max(rss) if rss else None
        e2e = [float(np.median([r.e2e_s for r in m.runs])) for _, m in cells if m.runs]
        config.e2e_s = max(e2e) if e2e else None
        out.append(config)
    return out


def cost_key(scenario: Scenario):
    def slowest(c):
        return c.e2e_s if c.e2e_s is not None else math.inf

    def memory(c):
        return c.peak_rss_bytes if c.peak_rss_bytes is not None else math.inf
    return {"cores": lambda c: (c.threads, slowest(c)),
            "memory": lambda c: (memory(c), slowest(c)),
            "speed": lambda c: (slowest(c), c.threads)}[scenario.cost]


def speedups(winner: Configuration, results: RunResults) -> list[Speedup]:
    """The winner's E2E against each baseline's in the same cells (ratio of medians with its
    bootstrap interval): the workflow's last step."""
    out = []
    for cell in results.cells:
        if (cell.cell.threads, cell.cell.batch, cell.cell.machine) != (winner.threads, winner.batch, winner.machine):
            continue
        mine = cell.method(winner.method)
        for base in BASELINES:
            theirs = cell.method(base)
            if base == winner.method or not (mine and theirs and mine.runs and theirs.runs):
                continue
            r = ratio_of_medians([x.e2e_s for x in theirs.runs], [x.e2e_s for x in mine.runs])
            if r is not None:
                out.append(Speedup(base, cell.cell.key, r.value, r.low, r.high))
    return out


def judge(scenario: Scenario, results: RunResults) -> Verdict:
    configs = configurations(scenario, results)
    key = cost_key(scenario)
    meeting = sorted((c for c in configs if c.status == MET), key=key)
    recommended = meeting[0] if meeting else None
    nearest = None
    if recommended is None and configs:
        order = {INDETERMINATE: 0, MISSED: 1}
        nearest = min(configs, key=lambda c: (order[c.status], sum(ch.status != MET for ch in c.checks),
                                              c.miss(), key(c)))
    return Verdict(scenario, configs, recommended, meeting[1:4], nearest,
                   speedups(recommended, results) if recommended else [])
