"""`inferlab compare`: two results sets (two runs, two sweeps, or two methods of one), method by
method and cell by cell: the ratio of medians with its bootstrap interval, a label that only
calls a change what its interval shows beyond the threshold, quality side by side, what
differs between the two environments, and a gate with an exit code for CI (METRICS.md
"Comparing two results").

Ratios are new / base of times (E2E, TTFT, TPOT): above 1 is slower."""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, field

from . import defaults
from .records import model_key, workload
from .analysis import first_divergence
from .results import MethodResult, QualityResult, RunResults
from .stats import ratio_of_medians

# the timed figures compared, with the name a reader knows them by
FIGURES = (("e2e_s", "E2E"), ("ttft_s", "TTFT"), ("tpot_s", "TPOT"))

IMPROVED, REGRESSED, NO_CHANGE, INCONCLUSIVE = "improved", "regressed", "no change", "inconclusive"
NOT_JUDGED = "not judged"  # a figure outside --figures: shown, never labelled
PASS, REGRESSION, UNDECIDED = "pass", "regression", "inconclusive"
EXIT_CODES = {PASS: 0, REGRESSION: 1, UNDECIDED: 3}


class CompareError(ValueError):
    """Two results that cannot be compared as asked (CLI: one line, exit 2)."""


@dataclass(frozen=True)
class Gate:
    """What fails the comparison: slower by more than `slower` (a fraction) in any compared
    figure, a peak RSS larger by more than `larger`, a new quality verdict of FAIL."""

    slower: float | None = None
    larger: float | None = None
    quality: bool = False
    figures: tuple[str, ...] = tuple(name for name, _ in FIGURES)  # the timed figures judged

    @property
    def active(self) -> bool:
        return self.slower is not None or self.larger is not None or self.quality

    @property
    def band(self) -> float:
        """The smallest change in time that counts: the gate's own threshold, else the default."""
        return self.slower if self.slower is not None else defaults.COMPARE_MIN_CHANGE


@dataclass
class Difference:
    """One way the two results' environments or workloads differ. `refuses`: the figures
    would not measure the same work (another model, prompt or workload)."""

    what: str
    base: str
    new: str
    refuses: bool = False


@dataclass
class FigureChange:
    figure: str  # e2e_s | ttft_s | tpot_s
    base_s: float  # medians
    new_s: float
    ratio: float  # new / base
    low: float  # its interval (defaults.CONFIDENCE, bootstrap over runs)
    high: float
    label: str
    runs_needed: int | None = None  # inconclusive: timed runs per side that would decide it

    @property
    def name(self) -> str:
        return dict(FIGURES)[self.figure]

    def words(self) -> str:
        """'2.10x faster [2.05-2.16]' or '1.12x slower [1.08-1.16]', speedups read as speedups."""
        if round(self.ratio, 2) == 1:
            return f"1.00x [{self.low:.2f}-{self.high:.2f}]"
        if self.ratio < 1:
            return f"{1 / self.ratio:.2f}x faster [{1 / self.high:.2f}-{1 / self.low:.2f}]"
        return f"{self.ratio:.2f}x slower [{self.low:.2f}-{self.high:.2f}]"


@dataclass
class Line:
    """One method in one cell, base against new."""

    cell: str  # the workload (llama-bench's test name, threads, batch)
    base_method: str
    new_method: str
    label: str
    figures: list[FigureChange] = field(default_factory=list)
    base_peak_rss: int | None = None
    new_peak_rss: int | None = None
    base_quality: QualityResult | None = None
    new_quality: QualityResult | None = None
    same_tokens_until: int | None = None  # first greedy token that differs (N when none)
    tokens: int = 0
    note: str = ""  # a side that did not run, a quality budget broken
    failures: list[str] = field(default_factory=list)  # the gate's, in words
    undecided: list[str] = field(default_factory=list)

    @property
    def method(self) -> str:
        return self.new_method if self.base_method == self.new_method else \
            f"{self.base_method} -> {self.new_method}"

    def figure(self, name: str) -> FigureChange | None:
        return next((f for f in self.figures if f.figure == name), None)

    @property
    def memory_ratio(self) -> float | None:
        if self.base_peak_rss and self.new_peak_rss:
            return self.new_peak_rss / self.base_peak_rss
        return None


@dataclass
class Comparison:
    base: str  # what each side is (a path, a history id)
    new: str
    kind: str  # run | sweep
    gate: Gate
    differences: list[Difference] = field(default_factory=list)
    forced: bool = False  # compared although a difference refuses
    lines: list[Line] = field(default_factory=list)
    only_base: list[str] = field(default_factory=list)  # "method [cell]" measured on one side
    only_new: list[str] = field(default_factory=list)
    apart_s: float | None = None  # between the two results' start times; None: one results set

    @property
    def outcome(self) -> str:
        if any(line.failures for line in self.lines):
            return REGRESSION
        if any(line.undecided for line in self.lines):
            return UNDECIDED
        return PASS

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.outcome] if self.gate.active else 0

    @property
    def warning(self) -> str:
        """What every line carries when the comparison was forced past a refusal."""
        refused = [d.what for d in self.differences if d.refuses]
        return f"not the same {' and '.join(refused)}" if self.forced and refused else ""

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(outcome=self.outcome, exit_code=self.exit_code, warning=self.warning)
        return d


# --- what differs between the two sides ---------------------------------------------------------

def _protocol(r: RunResults) -> str:
    c = r.config or {}
    return (f"warmup {c.get('warmup')}, runs {c.get('min_repeats')}-{c.get('max_repeats')}, "
            f"min {c.get('min_time_s')} s, {c.get('protocol') or 'interleaved (sweep)'}")


def _budget(r: RunResults) -> str:
    c = r.config or {}
    return f"ppl +{c.get('max_ppl_increase')}, KL {c.get('max_kl_mean')}, top-1 {c.get('min_top1')}"


def environment(r: RunResults) -> list[tuple[str, str, bool]]:
    """(what, value, refuses when it differs) of everything a comparison checks. The machine is
    the one that measured (a cluster's one kind, else this run's); a sweep over several kinds
    lists them by the ids its cells' keys end with (cells pair only with their own kind's)."""
    from .machine import kind_names

    kinds = r.machines or {}
    out = [("model", model_key(r), True), ("workload", workload(r), True)]
    mach = r.measuring_machine()
    if len(kinds) > 1:
        out.append(("kinds of machine", "; ".join(f"{k}: {n}" for k, n in sorted(kind_names(kinds).items())), False))
    else:
        out += [("CPU", str(mach.get("cpu")), False),
                ("CPU flags", " ".join(mach.get("cpu_flags") or []), False),
                ("logical CPUs", str(mach.get("logical_cpus")), False),
                ("usable CPUs", str(mach.get("usable_cpus")), False),
                ("memory", f"{(mach.get('memory_bytes') or 0) / 2**30:.1f} GiB", False),
                ("OS", str(mach.get("os")), False), ("Python", str(mach.get("python")), False)]
    out += [("inferlab", f"{r.inferlab_version} {mach.get('inferlab_commit') or ''}".strip(), False),
            ("threads", str((r.config or {}).get("threads") or
                            (r.sweep or {}).get("axes", {}).get("threads")), False),
            ("thread variables", str((r.machine or {}).get("thread_env") or {}), False),
            ("protocol", _protocol(r), False), ("quality budget", _budget(r), False)]
    libs = mach.get("libraries") or {}
    out += [(lib, str(version), False) for lib, version in sorted(libs.items())]
    return out


def differences(base: RunResults, new: RunResults) -> list[Difference]:
    theirs = {what: value for what, value, _ in environment(new)}
    out = []
    for what, value, refuses in environment(base):
        other = theirs.pop(what, "-")
        if value != other:
            out.append(Difference(what, value, other, refuses))
    out += [Difference(what, "-", value) for what, value in theirs.items()]
    return out


# --- one figure, one line ---------------------------------------------------------------------

def label(ratio: float, low: float, high: float, band: float, gated: bool) -> str:
    """Without a gate, the significance rule of METRICS.md with a smallest change that counts:
    regressed when the interval excludes 1 and the median ratio is beyond 1 + band (improved
    the other way), else no change. With a gate (band = its threshold), slower is judged as
    the gate judges it: regressed only when the whole interval lies beyond 1 + band,
    inconclusive when it crosses that edge."""
    if gated:
        if low > 1 + band:
            return REGRESSED
        if high > 1 + band:
            return INCONCLUSIVE
    elif low > 1 and ratio > 1 + band:
        return REGRESSED
    if high < 1 and ratio < 1 / (1 + band):
        return IMPROVED
    return NO_CHANGE


def runs_needed(ratio: float, low: float, high: float, band: float, runs: int) -> int | None:
    """Timed runs per side that would narrow the interval (it shrinks as 1/sqrt(runs)) until it
    no longer crosses the threshold 1 + band; None when the median sits on the threshold (more
    than defaults.PLAN_DECIDABLE_RUNS runs would be needed)."""
    half = (math.log(high) - math.log(low)) / 2
    edge = math.log(1 + band)
    if not math.log(low) <= edge < math.log(high) or half <= 0:
        return None
    distance = abs(math.log(ratio) - edge)
    if distance == 0:
        return None
    needed = math.ceil(runs * (half / distance) ** 2)
    return needed if needed <= defaults.PLAN_DECIDABLE_RUNS else None


def figure_change(name: str, base: MethodResult, new: MethodResult, gate: Gate) -> FigureChange | None:
    a, b = new.samples(name), base.samples(name)
    r = ratio_of_medians(a, b)
    if r is None or not all(map(math.isfinite, (r.value, r.low, r.high))) or r.low <= 0:
        return None
    lab = label(r.value, r.low, r.high, gate.band, gate.slower is not None) if name in gate.figures else NOT_JUDGED
    need = runs_needed(r.value, r.low, r.high, gate.band, min(len(base.runs), len(new.runs))) \
        if lab == INCONCLUSIVE else None
    return FigureChange(name, float(statistics.median(b)), float(statistics.median(a)), r.value, r.low, r.high,
                        lab, need)


def _verdict(q: QualityResult | None) -> str | None:
    return q.verdict if q else None


def compare_line(cell: str, base: MethodResult, new: MethodResult, gate: Gate) -> Line | None:
    if base.status == "skipped" and new.status == "skipped":
        return None
    line = Line(cell, base.method, new.method, NO_CHANGE, base_peak_rss=base.peak_rss_bytes,
                new_peak_rss=new.peak_rss_bytes, base_quality=base.quality, new_quality=new.quality,
                same_tokens_until=first_divergence(new.tokens, base.tokens) if base.tokens and new.tokens else None,
                tokens=min(len(base.tokens), len(new.tokens)))
    if not (base.ok and base.runs) or not (new.ok and new.runs):
        if new.ok and new.runs:
            line.label, line.note = IMPROVED, f"base {base.status}: {base.error or 'no timed runs'}"
        elif base.ok and base.runs:
            line.label, line.note = REGRESSED, f"new {new.status}: {new.error or 'no timed runs'}"
            if gate.active:
                line.failures.append(line.note)
        else:
            line.label, line.note = INCONCLUSIVE, f"neither side measured ({base.status}, {new.status})"
        return line
    line.figures = [f for name, _ in FIGURES if (f := figure_change(name, base, new, gate))]
    labels = {f.label for f in line.figures}
    if REGRESSED in labels:
        line.label = REGRESSED
    elif INCONCLUSIVE in labels:
        line.label = INCONCLUSIVE
    elif IMPROVED in labels:
        line.label = IMPROVED
    now, before = _verdict(line.new_quality), _verdict(line.base_quality)
    if now in ("FAIL", "error") and before not in ("FAIL", "error"):  # a speedup that breaks the budget
        line.label, line.note = REGRESSED, f"quality {now} (base {before or 'not judged'})"
    apply_gate(line, gate)
    return line


def apply_gate(line: Line, gate: Gate) -> None:
    if gate.slower is not None:  # the figures' labels were judged at the gate's threshold
        for f in line.figures:
            if f.label == REGRESSED:
                line.failures.append(f"{f.name} {f.words()}: slower than the {gate.slower:.0%} allowed")
            elif f.label == INCONCLUSIVE:
                more = (f"about {f.runs_needed} timed runs a side would decide" if f.runs_needed
                        else f"its median lies so close to the threshold that more than "
                             f"{defaults.PLAN_DECIDABLE_RUNS} timed runs a side would be needed")
                line.undecided.append(f"{f.name} {f.words()}: cannot exclude slower than "
                                      f"{gate.slower:.0%}; {more}")
    if gate.larger is not None and (r := line.memory_ratio) is not None and r > 1 + gate.larger:
        line.failures.append(f"peak RSS {r:.2f}x the base's: larger than the {gate.larger:.0%} allowed")
    if gate.quality:
        verdict = _verdict(line.new_quality)
        if verdict in ("FAIL", "error"):
            line.failures.append(f"quality {verdict}")
        elif verdict is None and line.base_quality:
            line.undecided.append("quality not judged in the new results (the base's was)")


def seconds_apart(base: RunResults, new: RunResults) -> float | None:
    import datetime as dt

    try:
        return abs((dt.datetime.fromisoformat(new.created) - dt.datetime.fromisoformat(base.created)).total_seconds())
    except (TypeError, ValueError):
        return None


# --- pairing ---------------------------------------------------------------------------------

def compare(base: RunResults, new: RunResults, base_name: str, new_name: str, gate: Gate = Gate(),
            methods: tuple[str, str] | None = None, force: bool = False) -> Comparison:
    """Every method (or the pair `methods`: base's first against new's second) in every cell
    both sides measured. Raises CompareError when the two cannot be compared (another model
    or workload, a run against a sweep) unless `force`."""
    if bool(base.sweep) != bool(new.sweep):
        raise CompareError(f"cannot compare a {'sweep' if base.sweep else 'run'} ({base_name}) with a "
                           f"{'sweep' if new.sweep else 'run'} ({new_name})")
    diffs = differences(base, new) if base is not new else []
    refused = [d for d in diffs if d.refuses]
    if refused and not force:
        d = refused[0]
        raise CompareError(f"not the same {d.what}: {d.base} against {d.new}; the figures would "
                           "not measure the same work (--force compares anyway, every line marked)")
    out = Comparison(base_name, new_name, "sweep" if base.sweep else "run", gate, diffs,
                     forced=bool(refused), apart_s=None if base is new else seconds_apart(base, new))
    # a run is one cell: its methods pair whatever the threads (a difference said above)
    def key(cell):
        return cell.key if base.sweep else ""

    theirs = {(key(c), m.method): m for c, m in new.measured()}
    mine = {(key(c), m.method): (c, m) for c, m in base.measured()}
    if methods:
        a, b = methods
        for k in dict.fromkeys(k for k, _ in mine):
            if (k, a) in mine and (k, b) in theirs:
                cell, m = mine[(k, a)]
                if line := compare_line(cell.key, m, theirs[(k, b)], gate):
                    out.lines.append(line)
        if not out.lines:
            raise CompareError(f"no cell where {a} ({base_name}) and {b} ({new_name}) were both measured")
        return out
    for (k, name), (cell, m) in mine.items():
        other = theirs.pop((k, name), None)
        if other is None:
            out.only_base.append(f"{name} [{cell.key}]")
        elif line := compare_line(cell.key, m, other, gate):
            out.lines.append(line)
    out.only_new = [f"{name} [{k or new.run_cell().key}]" for k, name in theirs]
    if not out.lines:
        raise CompareError(f"{base_name} and {new_name} have no method measured in the same cell")
    return out
