"""Turn profiler events into per-phase tables: time by operator and by category, the time no
operator covers (framework overhead), all in milliseconds per call of the phase.

Input is framework-neutral: a list of phase windows (name, start, end) and a list of operator
records (name, start, self duration, model part), all in microseconds."""

from __future__ import annotations

from dataclasses import dataclass

from .categories import CATEGORIES, categorize
from .parts import PARTS

TOP_N = 15


@dataclass
class OpRecord:
    name: str
    start_us: float
    self_us: float
    part: str = "other"


def breakdown(windows: list[tuple[str, float, float]], ops: list[OpRecord], top_n: int = TOP_N) -> dict:
    """Per phase: wall time, time by category (overhead included: shares add to 100 %),
    top operators by self time, and time by model part, averaged per call of the phase."""
    phases: dict[str, dict] = {}
    for name, start, end in windows:
        p = phases.setdefault(name, {"calls": 0, "wall_us": 0.0, "ops": {}, "parts": {}})
        p["calls"] += 1
        p["wall_us"] += end - start
    ordered = sorted(windows, key=lambda w: w[1])
    for op in ops:
        window = _window_of(ordered, op.start_us)
        if window is None:
            continue  # outside any labelled phase (warmup, session set-up)
        p = phases[window]
        entry = p["ops"].setdefault(op.name, [0.0, 0])
        entry[0] += op.self_us
        entry[1] += 1
        p["parts"][op.part] = p["parts"].get(op.part, 0.0) + op.self_us
    return {name: _summarize(p, top_n) for name, p in phases.items()}


def _window_of(ordered, t):
    # windows are few (1 prefill + a few decode steps): a linear scan is clear and fast enough
    for name, start, end in ordered:
        if start <= t < end:
            return name
    return None


def _summarize(p: dict, top_n: int) -> dict:
    calls = p["calls"]
    wall = p["wall_us"] / calls
    by_cat = {c: 0.0 for c in CATEGORIES}
    covered = 0.0
    for name, (us, _) in p["ops"].items():
        by_cat[categorize(name)] += us / calls
        covered += us / calls
    by_cat["overhead"] = max(wall - covered, 0.0)
    total = max(sum(by_cat.values()), 1e-9)  # = wall unless ops overlap the window's edge
    top = sorted(p["ops"].items(), key=lambda kv: kv[1][0], reverse=True)[:top_n]
    parts = {k: p["parts"].get(k, 0.0) / calls for k in PARTS}
    return {
        "calls": calls,
        "wall_ms": wall / 1e3,
        "categories_ms": {c: v / 1e3 for c, v in by_cat.items()},
        "categories_share": {c: v / total for c, v in by_cat.items()},
        "top_ops": [
            {"op": name, "category": categorize(name), "self_ms": us / calls / 1e3,
             "calls_per_phase": n / calls, "share": us / calls / total}
            for name, (us, n) in top
        ],
        "parts_ms": {k: v / 1e3 for k, v in parts.items()},
    }
