"""The one sentence a report opens with: which method wins this run (or each workload of a
sweep), by how much against the fp32 reference, the original baseline and llama.cpp, and at
what quality cost. Formatting only: every figure comes from results.derived."""

from __future__ import annotations

from collections import Counter

from .. import defaults
from ..results import RunResults
from .units import duration_ms


def _speedup(entry: dict | None, what: str) -> str | None:
    if not entry:
        return None
    sig = "" if entry.significant else ", not significant"
    return f"{entry.value:.2f}x faster than {what} [{entry.low:.2f}-{entry.high:.2f}{sig}]"


def _quality(m) -> str:
    q = m.quality
    if q is None:
        return "quality not judged"
    if q.kl_mean is None:
        return f"quality {q.verdict}"
    return f"quality {q.verdict} against the fp32 reference (KL {q.kl_mean:.2g} nats, top-1 {q.top1:.1%})"


def run_answer(results: RunResults) -> str:
    d = results.derived
    if not d.ranking.ranked:
        return "No method finished a timed run: see the warnings below."
    best = d.ranking.ranked[0]
    name, m = best.method, results.method(best.method)
    speedups = d.method(name).speedups
    parts = [f"**{name}** is the fastest method{' that passes the quality budget' if d.ranking.judged else ''}: "
             f"{duration_ms(best.e2e_s * 1e3)} end to end for "
             f"{results.config.get('new_tokens')} new tokens ({best.decode_tps:.0f} decode tok/s)"]
    versus = [s for s in (
        _speedup(speedups.get(f"speedup_e2e_vs_{defaults.REFERENCE_METHOD}"),
                 f"{defaults.REFERENCE_METHOD} (the fp32 reference)"),
        _speedup(speedups.get(f"speedup_e2e_vs_{defaults.BASELINE_METHOD}"),
                 f"{defaults.BASELINE_METHOD} (the original baseline)")) if s]
    llama = d.versus_llama_cpp
    if llama and llama["method"] == name:
        versus.append(f"decodes {llama['speedup']:.2f}x as fast as llama.cpp ({llama['llama_cpp']})")
    if versus:
        parts.append(", ".join(versus))
    parts.append(_quality(m))
    sentence = "; ".join(parts) + "."
    faster = [x for x in d.ranking.not_ranked if (e2e := d.method(x).median("e2e_s")) is not None
              and e2e < best.e2e_s]
    if faster:
        sentence += (f" Faster but failing the quality budget: {', '.join(faster)} (a fast wrong answer "
                     "is not a result).")
    return sentence


def sweep_answer(results: RunResults) -> str:
    rows = [r for r in results.derived.cells if r.get("e2e_ms") is not None]
    failed = {m.method for m in results.methods if m.quality and m.quality.verdict == "FAIL"}
    rows = [r for r in rows if r["method"] not in failed]
    if not rows:
        return "No cell finished a timed run: see the warnings below."
    cells = {}
    for r in rows:
        if r["key"] not in cells or r["e2e_ms"] < cells[r["key"]]["e2e_ms"]:
            cells[r["key"]] = r
    wins = Counter(r["method"] for r in cells.values())
    (top, n), *rest = wins.most_common()
    text = (f"**{top}** is fastest end to end in {n} of {len(cells)} cells"
            + ("; " + ", ".join(f"{m} in {k}" for m, k in rest) if rest else "") + ".")
    crossings = results.derived.crossovers
    if crossings:
        text += f" Where the ranking changes: {crossings[0]}" + (f" (and {len(crossings) - 1} more below)."
                                                                 if len(crossings) > 1 else ".")
    if failed:
        text += f" Not ranked (quality FAIL): {', '.join(sorted(failed))}."
    return text
