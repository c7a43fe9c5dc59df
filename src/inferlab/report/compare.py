"""A Comparison (compare.py) as console text, Markdown and a chart of ratios with intervals.
Formatting only: every figure and label comes from the Comparison."""

from __future__ import annotations

import os

from ..compare import IMPROVED, INCONCLUSIVE, NO_CHANGE, NOT_JUDGED, REGRESSED, Comparison, Line
from ..results import QualityResult
from .markdown import md_table


def _figure(name: str):
    def cell(line: Line) -> str:
        f = line.figure(name)
        if f is None:
            return "-"
        return f.words() + ("" if f.label in (NO_CHANGE, NOT_JUDGED) else f" {f.label}")
    return cell


def _memory(line: Line) -> str:
    r = line.memory_ratio
    return "-" if r is None else f"{line.base_peak_rss / 1e6:.0f} -> {line.new_peak_rss / 1e6:.0f} MB"


def _quality_side(q: QualityResult | None) -> str:
    if q is None:
        return "not judged"
    return q.verdict if q.kl_mean is None else f"{q.verdict} KL {q.kl_mean:.2g}"


def _quality(line: Line) -> str:
    return f"{_quality_side(line.base_quality)} -> {_quality_side(line.new_quality)}"


def _tokens(line: Line) -> str:
    if line.same_tokens_until is None:
        return "-"
    if line.same_tokens_until >= line.tokens:
        return f"{line.tokens}/{line.tokens} same"
    return f"differ from {line.same_tokens_until}"


def _result(line: Line) -> str:
    gate = " (gate fails)" if line.failures else " (gate undecided)" if line.undecided else ""
    return line.label + gate + (f": {line.note}" if line.note else "")


# one list of (column, getter): the console and the Markdown read the same
COLUMNS = (("cell", lambda line: line.cell), ("method", lambda line: line.method),
           ("E2E", _figure("e2e_s")), ("TTFT", _figure("ttft_s")), ("TPOT", _figure("tpot_s")),
           ("peak RSS", _memory), ("quality", _quality), ("greedy tokens", _tokens),
           ("result", _result))


def rows(c: Comparison, columns=COLUMNS) -> list[list[str]]:
    mark = f" [{c.warning}]" if c.warning else ""
    return [[get(line) + (mark if name == "result" else "") for name, get in columns] for line in c.lines]


def gate_lines(c: Comparison) -> list[str]:
    """Why the gate fails or cannot decide, one line per reason."""
    return [f"{line.method} [{line.cell}]: {'FAILS' if why in line.failures else 'undecided'}: {why}"
            for line in c.lines for why in line.failures + line.undecided]


def answer(c: Comparison) -> str:
    """The comparison in one sentence: what changed, by how much, and whether the gate passes."""
    counts = {lab: sum(line.label == lab for line in c.lines) for lab in (REGRESSED, IMPROVED, INCONCLUSIVE, NO_CHANGE)}
    same_env = not [d for d in c.differences if d.what not in ("protocol",)]
    where = "same machine and libraries" if same_env else \
        "environments differ: " + ", ".join(d.what for d in c.differences)
    if len(c.lines) == 1:
        line = c.lines[0]
        e2e = line.figure("e2e_s")
        what = f"{line.new_method} against {line.base_method}" if line.base_method != line.new_method \
            else line.method
        head = f"{what}: {e2e.words()} end to end, {line.label}" if e2e else f"{what}: {line.label}"
        if line.note:
            head += f" ({line.note})"
        head += f"; quality {_quality(line)}"
    elif counts[REGRESSED] == counts[IMPROVED] == counts[INCONCLUSIVE] == 0:
        head = f"no significant change in {len(c.lines)} method{'s' * (len(c.lines) > 1)} and cells"
    else:
        head = ", ".join(f"{n} {lab}" for lab, n in counts.items() if n) + f" of {len(c.lines)}"
        worst = [line for line in c.lines if line.label == REGRESSED]
        if worst:
            head += " (regressed: " + ", ".join(
                f"{line.method} [{line.cell}] " + (line.figure('e2e_s').words() if line.figure('e2e_s') else line.note)
                for line in worst[:3]) + ")"
    gate = {"pass": "gate passes", "regression": "gate FAILS", "inconclusive": "gate undecided"}[c.outcome]
    tail = f"; {gate}" if c.gate.active else ""
    warn = f" [{c.warning}]" if c.warning else ""
    return f"{head}; {where}{tail}{warn}."


def drift_line(c: Comparison) -> str | None:
    """Two sittings: what the intervals do not cover."""
    if c.apart_s is None:
        return None
    from ..progress import duration

    return (f"measured {duration(c.apart_s)} apart: each interval covers its runs' own spread, not "
            "the machine's drift between the two sittings (two methods of one run, interleaved, "
            "are free of it)")


def difference_lines(c: Comparison) -> list[str]:
    out = []
    for d in c.differences:
        tag = " (refused without --force)" if d.refuses else ""
        out.append(f"{d.what}: {d.base} -> {d.new}{tag}")
    return out


def console(c: Comparison) -> str:
    out = [f"base: {c.base}", f"new:  {c.new}"]
    diffs = difference_lines(c)
    out += (["differences:"] + [f"  {d}" for d in diffs]) if diffs else ["same machine, libraries, model and workload"]
    if drift := drift_line(c):
        out.append(drift)
    columns = [(name, get) for name, get in COLUMNS if name != "cell" or c.kind == "sweep"]
    cols = [name for name, _ in columns]
    table = rows(c, columns)
    widths = [max(len(x) for x in [col] + [r[i] for r in table]) for i, col in enumerate(cols)]

    def fmt(row):
        return "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()

    out += ["", fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in table]
    out += _one_side_lines(c)
    if lines := gate_lines(c):
        out += ["", "gate:"] + [f"  {g}" for g in lines]
    out += ["", answer(c)]
    return "\n".join(out)


def _one_side_lines(c: Comparison) -> list[str]:
    out = []
    if c.only_base:
        out.append("only in base: " + ", ".join(c.only_base))
    if c.only_new:
        out.append("only in new: " + ", ".join(c.only_new))
    return out


def render(c: Comparison, chart: str | None) -> str:
    band = c.gate.band
    lines = ["# Comparison", "", f"> {answer(c)}", ""]
    if chart:
        lines += [f"![ratios with intervals]({chart})", ""]
    lines += [md_table([name for name, _ in COLUMNS], rows(c)), ""]
    lines += _one_side_lines(c) + [""]
    if g := gate_lines(c):
        lines += ["## The gate", ""] + [f"- {x}" for x in g] + [""]
    lines += ["## What differs between the two", ""]
    lines += [f"- {d}" for d in difference_lines(c)] or ["- nothing: same machine, libraries, model and workload"]
    if drift := drift_line(c):
        lines += [f"- {drift}"]
    lines += ["", "## How to read it", "",
              f"- base: `{c.base}`; new: `{c.new}`.",
              "- Each ratio is new / base of the medians over the timed runs, with its 95 % "
              "percentile-bootstrap interval (runs resampled on both sides), shown as a speedup "
              "when below 1.",
              (f"- The gate's threshold: *regressed* when the whole interval lies above {1 + band:.2f}, "
               f"*inconclusive* when it crosses {1 + band:.2f} (more runs would decide), *improved* when "
               f"the interval lies below 1 and the median below {1 / (1 + band):.2f}, else *no change*."
               if c.gate.slower is not None else
               f"- A change is significant only when its interval excludes 1, and is called one only "
               f"when the median ratio also lies beyond {band:.0%} (runs of one configuration drift "
               f"that much between sittings): *regressed* above {1 + band:.2f}, *improved* below "
               f"{1 / (1 + band):.2f}, else *no change*."),
              "- A method whose quality verdict turns to FAIL is regressed whatever its speed.", ""]
    return "\n".join(lines)


def draw(c: Comparison, folder: str) -> str | None:
    """Horizontal bars of speedup (base / new) per line and figure, log axis, intervals as
    whiskers, the band shaded; None when no line has a figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .charts import _save

    items = [(f"{line.method} [{line.cell}] {f.name}", f) for line in c.lines for f in line.figures]
    if not items:
        return None
    colors = {IMPROVED: "#54a24b", REGRESSED: "#e45756", NO_CHANGE: "#9d9d9d", INCONCLUSIVE: "#f2a93b",
              NOT_JUDGED: "#d0d0d0"}
    fig, ax = plt.subplots(figsize=(9, 0.32 * len(items) + 1.6))
    for i, (_, f) in enumerate(items):
        speed, lo, hi = 1 / f.ratio, 1 / f.high, 1 / f.low
        ax.barh(i, speed - 1, left=1, color=colors[f.label], alpha=0.85)  # from 1: no change
        ax.errorbar(speed, i, xerr=[[speed - lo], [hi - speed]], color="black", capsize=3, lw=1)
    band = c.gate.band
    ax.axvspan(1 / (1 + band), 1 + band, color="#dddddd", alpha=0.6, zorder=0)
    ax.axvline(1, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(items)), [name for name, _ in items], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speedup of new over base (base / new time; log; grey: no-change band)")
    ax.set_title("new against base: green improved, red regressed, orange inconclusive")
    _save(fig, os.path.join(folder, "compare.png"))
    return "compare.png"
