"""The comparison table as rows of strings, shared by the console and Markdown renderers."""

from __future__ import annotations

import math

from .. import defaults
from ..analysis import comparisons
from ..results import RunResults

MB = 1e6


def ms(seconds: float | None) -> str:
    return "-" if seconds is None or math.isnan(seconds) else f"{seconds * 1e3:.1f}"


def mbytes(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:.1f}"


def speedup(entry: dict | None, itself: bool = False) -> str:
    if itself:
        return "1 (itself)"
    if not entry:
        return "-"
    mark = "" if entry["significant"] else " (n.s.)"
    return f"{entry['value']:.2f}x [{entry['low']:.2f}-{entry['high']:.2f}]{mark}"


def agreement(results: RunResults, m) -> str:
    if m.method == defaults.REFERENCE_METHOD:
        return "reference"
    if m.first_divergence is None:
        return "no reference"
    n = len(m.tokens)
    return f"{n}/{n} same" if m.first_divergence >= n else f"differs at token {m.first_divergence}"


COLUMNS = (
    "method", "status", "TTFT ms", "TPOT ms", "ITL p50/p90/p99 ms", "decode tok/s", "E2E ms",
    f"E2E speedup vs {defaults.BASELINE_METHOD}", f"E2E speedup vs {defaults.REFERENCE_METHOD}",
    "weights MB", "file MB", "peak RSS MB", "greedy tokens vs reference",
)


def comparison_rows(results: RunResults) -> list[list[str]]:
    comp = comparisons(results)
    rows = []
    for m in results.methods:
        if not m.ok:
            rows.append([m.method, m.status.upper()] + ["-"] * (len(COLUMNS) - 3) + [m.error or ""])
            continue
        itl = m.figure("itl_s")
        tps = m.figure("decode_tps")
        c = comp.get(m.method, {})
        rows.append([
            m.method,
            "ok",
            ms(m.figure("ttft_s").median),
            ms(m.figure("tpot_s").median),
            f"{ms(itl.median)}/{ms(itl.p90)}/{ms(itl.p99)}",
            f"{tps.median:.1f}",
            f"{ms(m.figure('e2e_s').median)} ± {ms(m.figure('e2e_s').mad)}",
            speedup(c.get(f"speedup_e2e_vs_{defaults.BASELINE_METHOD}"),
                    m.method == defaults.BASELINE_METHOD),
            speedup(c.get(f"speedup_e2e_vs_{defaults.REFERENCE_METHOD}"),
                    m.method == defaults.REFERENCE_METHOD),
            mbytes(m.weight_bytes),
            mbytes(m.file_bytes),
            mbytes(m.peak_rss_bytes),
            agreement(results, m),
        ])
    return rows


def cold_start_rows(results: RunResults) -> list[list[str]]:
    rows = []
    for m in results.methods:
        if m.prepare_cache_hit:
            prep = "cached"
        elif m.prepare_s is not None:
            prep = f"{m.prepare_s:.1f}"
        else:
            prep = "-"
        load = "-" if m.load_s is None else f"{m.load_s:.2f}"
        first = ms(m.first_call_s)
        rows.append([m.method, prep, load, first, str(m.warmup_runs), str(len(m.runs))])
    return rows


COLD_COLUMNS = ("method", "export/convert s", "load s", "first call ms", "warmup runs", "timed runs")


def detail_lines(m) -> list[str]:
    """What the engine says it actually built."""
    return [f"{k}: {v}" for k, v in sorted(m.details.items())]
