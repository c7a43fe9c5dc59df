"""Everything derived from the measurements, computed in one place after them and stored in
results.json under "derived": summaries, speedups, prefill rate, competing load, roofline and
bottleneck verdicts, ranking and warnings. Renderers (report/) only format it, and a CSV
export or another reader needs no arithmetic."""

from __future__ import annotations

from dataclasses import asdict

from . import defaults
from .analysis import comparisons
from .derive_cells import cell_rows, crossovers, first_divergences, knees
from .derived_types import Bottleneck, Derived, MethodFigures, Ranked, Ranking
from .profiling.roofline import ceiling_warnings, rooflines, sweep_growth, verdict
from .stats import summarize, too_few_runs

# the figures summarized per method (seconds, except decode tokens per second)
FIGURES = ("ttft_s", "tpot_s", "itl_s", "e2e_s", "decode_tps")


def method_figures(results) -> dict:
    """{method: {figure: Summary or None}}: the one place a run's figures are summarized."""
    return {m.method: {name: summarize(m.samples(name), f"{m.method} {name}") for name in FIGURES}
            for m in results.methods}


def derive(results) -> Derived:
    cpus = results.measuring_machine().get("logical_cpus")
    comps = comparisons(results)
    summaries = method_figures(results)
    roofs, ceiling = rooflines(results, summaries)
    divergences = first_divergences(results)
    methods = {}
    for m in results.methods:
        figures = summaries[m.method]
        ttft = figures["ttft_s"]
        entry = MethodFigures(
            figures=figures,
            prefill_tokens_per_s=results.prompt_tokens / ttft.median if ttft and ttft.median else None,
            speedups=comps.get(m.method, {}),
            other_load=m.other_load(cpus),
            roofline=roofs.get(m.method),
            witness=witness(m, figures["tpot_s"], ttft),
            # a run's greedy tokens against the reference's (a sweep's: per cell, in its rows)
            first_divergence=None if results.sweep else divergences.get((results.run_cell().key, m.method)),
            itl_by_position_ms=None if results.sweep else itl_by_position(m),
            decode_parts=decode_parts(m) if m.ok else None,
        )
        if m.ok and m.profile:
            entry.bottleneck = Bottleneck(*verdict(m, roofs.get(m.method), sweep_growth(m),
                                                   results.measuring_machine().get("cpu_flags", [])))
        methods[m.method] = entry
    out = Derived(methods=methods, ceiling=ceiling, ranking=ranking(results, methods),
                  versus_llama_cpp=versus_llama_cpp(results, methods),
                  warnings=warnings(results, methods, ceiling), context_sweep=context_sweep(results))
    if results.cells:
        rows = cell_rows(results, divergences)
        failed = {m.method for m in results.methods if verdict_of(m) == "FAIL"}
        out.cells, out.crossovers, out.knees = rows, crossovers(rows, failed), knees(rows)
        asked = (results.config or {}).get("min_repeats", defaults.WARN_MIN_SAMPLES)
        if w := too_few_runs(asked, "each method in each cell"):
            out.warnings.append(w)
        out.warnings += [w for r in rows for w in r["warnings"]]
        out.warnings += [f"{r['method']} [{r['key']}]: {r['status']}: {r['error']}"
                         for r in rows if r["status"] not in ("ok", "skipped")]
    return out


def decode_parts(m) -> dict | None:
    """A profiled decode step split by model part: (part, ms, share of the step) for each part,
    and the time outside any operator when it is more than half a per cent of the step."""
    from .profiling.parts import PARTS

    d = m.profile.decode if m.profile else None
    if d is None or not d.parts_ms:
        return None
    step = d.parts_step_ms or d.wall_ms
    rows = [(p, d.parts_ms.get(p, 0.0), d.parts_ms.get(p, 0.0) / step) for p in PARTS]
    outside = step - sum(ms for _, ms, _ in rows)
    if outside > 0.005 * step:
        rows.append(("outside any operator", outside, outside / step))
    return {"step_ms": step, "parts": rows}


def context_sweep(results) -> dict | None:
    """The profiled decode step after each swept context, per method, and with two methods
    the second's step over the first's at each context."""
    by_method = {m.method: {s.context: s for s in m.profile.sweep}
                 for m in results.methods if m.profile and m.profile.sweep}
    if not by_method:
        return None
    names = list(by_method)
    rows = []
    for c in sorted({c for d in by_method.values() for c in d}):
        steps = [by_method[n].get(c) for n in names]
        ratio = (steps[1].step_ms / steps[0].step_ms) if len(names) == 2 and all(steps) else None
        rows.append({"context": c, "steps": [asdict(s) if s else None for s in steps], "ratio": ratio})
    return {"methods": names, "rows": rows}


def itl_by_position(m) -> list[float] | None:
    """The median over timed runs of each decode position's gap, ms (the ITL chart)."""
    import numpy as np

    if not m.runs or len({len(r.itl_s) for r in m.runs}) != 1:
        return None
    return (np.median(np.array([r.itl_s for r in m.runs]), axis=0) * 1e3).tolist()


def witness(m, tpot, ttft) -> dict | None:
    """The engine's own clocks beside the harness's (medians over the timed runs)."""
    runs = [c for c in m.engine_counters if c.get("decode_tokens") and c.get("decode_ms")]
    if not runs or tpot is None or ttft is None:
        return None
    import numpy as np

    decode = float(np.median([c["decode_ms"] / c["decode_tokens"] for c in runs]))
    prefill = float(np.median([c["prefill_ms"] for c in runs]))
    return {"decode_ms_per_token": decode, "prefill_ms": prefill,
            "tpot_over_engine": tpot.median * 1e3 / decode if decode else None,
            "ttft_over_engine": ttft.median * 1e3 / prefill if prefill else None}


def verdict_of(m) -> str | None:
    return m.quality.verdict if m.quality else None


def ranking(results, methods: dict) -> Ranking:
    """Methods by median E2E among those that pass the quality budget (all timed ones when
    quality was not judged); a FAIL is listed apart and never ranked."""
    timed = [m for m in results.methods if m.ok and m.runs]
    judged = any(verdict_of(m) in ("PASS", "FAIL") for m in timed)
    pool = [m for m in timed if verdict_of(m) == "PASS"] if judged else timed

    def e2e(m):
        return methods[m.method].median("e2e_s")

    ranked = [Ranked(m.method, e2e(m), methods[m.method].median("decode_tps"),
                     bool(m.quality and m.quality.marginal))
              for m in sorted(pool, key=e2e)]
    return Ranking(judged, ranked, [m.method for m in timed if m not in pool])


def versus_llama_cpp(results, methods: dict) -> dict | None:
    """The fastest quality-passing method against the fastest quality-passing llama.cpp type,
    by median TPOT, and against the fastest llama.cpp type of any quality; how far the winner
    decodes from its own bandwidth floor, beside the targets in defaults.py. None unless both
    sides ran and passed."""
    timed = [m for m in results.methods if m.ok and m.runs]
    passing = [m for m in timed if verdict_of(m) == "PASS"]
    llama = [m for m in passing if m.method.startswith(defaults.LLAMA_CPP_PREFIX)]
    others = [m for m in passing if not m.method.startswith(defaults.LLAMA_CPP_PREFIX)]
    if not llama or not others:
        return None

    def tpot(m):
        return methods[m.method].median("tpot_s")

    best, ref = min(others, key=tpot), min(llama, key=tpot)
    fastest = min((m for m in timed if m.method.startswith(defaults.LLAMA_CPP_PREFIX)), key=tpot)
    floor_ms = (methods[best.method].roofline or {}).get("decode_floor_ms")
    over_floor = tpot(best) * 1e3 / floor_ms if floor_ms else None
    return {"method": best.method, "tpot_s": tpot(best),
            "llama_cpp": ref.method, "llama_cpp_tpot_s": tpot(ref),
            "llama_cpp_fastest": fastest.method, "llama_cpp_fastest_tpot_s": tpot(fastest),
            "llama_cpp_fastest_verdict": verdict_of(fastest),
            "speedup": tpot(ref) / tpot(best), "target_speedup": defaults.TARGET_VS_LLAMA_CPP,
            "floor_ms": floor_ms, "over_floor": over_floor, "target_over_floor": defaults.TARGET_OVER_FLOOR,
            "met": tpot(ref) / tpot(best) >= defaults.TARGET_VS_LLAMA_CPP
            and over_floor is not None and over_floor <= defaults.TARGET_OVER_FLOOR}


def warnings(results, methods: dict, ceiling: dict | None) -> list[str]:
    """Everything a reader should not trust or should know, each with what to do about it."""
    out = []
    for m in results.methods:
        d = methods[m.method]
        if not m.ok:
            out.append(f"{m.method}: {m.status}: {m.error}")
            continue
        if m.runs:
            if w := too_few_runs(len(m.runs), m.method):
                out.append(w)
            for name in ("e2e_s", "ttft_s", "tpot_s"):
                out.extend(d.figures[name].warnings if d.figures[name] else [])
        w = d.witness
        if w and w["tpot_over_engine"] and abs(w["tpot_over_engine"] - 1) > defaults.WARN_WITNESS:
            out.append(f"{m.method}: TPOT {d.median('tpot_s') * 1e3:.2f} ms differs from "
                       f"the engine's own {w['decode_ms_per_token']:.2f} ms per token by more than "
                       f"{defaults.WARN_WITNESS:.0%}: time is spent outside the engine's decode")
        if m.deterministic is False:
            out.append(f"{m.method}: repeated runs produced different tokens")
        load = d.other_load
        if load is not None and load >= defaults.WARN_OTHER_CPU:
            out.append(f"{m.method}: other processes took {m.other_cpu_s:.1f} CPU-s during its "
                       f"{m.timed_wall_s:.1f} s of timed runs ({load:.0%} of the machine's CPU time): "
                       "its figures are slowed by competing load; close other programs")
        first = d.first_divergence
        if first is not None and first < len(m.tokens):
            out.append(f"{m.method}: greedy tokens differ from {defaults.REFERENCE_METHOD}'s from "
                       f"token {first} of {len(m.tokens)}")
        q = m.quality
        if q is None:
            continue
        if q.verdict in ("FAIL", "error"):
            out.append(f"{m.method}: quality {q.verdict}: {'; '.join(q.reasons)}")
        for line in q.marginal:
            out.append(f"{m.method}: quality verdict {q.verdict} is marginal: {line}; "
                       "score more text (--text-file) before relying on it")
    out.extend(ceiling_warnings(ceiling))
    failed_probes = [p["error"] for p in results.probes if p.get("error")]
    out.extend(failed_probes)
    if not results.model.get("quality_meaningful", True):
        out.append("random-weight model: generated text is meaningless; only token equality is valid")
    if results.status != "complete":
        out.append(f"run status: {results.status}; the figures cover the methods that finished")
    return out
