"""The comparison table as rows of strings, shared by the console and Markdown renderers.
Every figure comes from results.derived (derive.py): this module only formats."""

from __future__ import annotations

import math

from .. import defaults
from ..derived_types import MethodFigures
from ..results import RunResults
from .units import duration_ms, rate, size_bytes

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
    mark = "" if entry.significant else " (n.s.)"
    if entry.value < 1:  # slower: read as a slowdown, not as a speedup below one
        return f"{1 / entry.value:.2f}x slower [{1 / entry.high:.2f}-{1 / entry.low:.2f}]{mark}"
    return f"{entry.value:.2f}x [{entry.low:.2f}-{entry.high:.2f}]{mark}"


def derived(results: RunResults, method: str) -> MethodFigures:
    """A method's derived figures; empty ones for a method derive.py did not see."""
    return results.derived.method(method) or MethodFigures(figures={})


def figure(results: RunResults, method: str, name: str) -> dict | None:
    return derived(results, method).figure(name)


def tails(fig: dict) -> str:
    """median/p90/p99 in ms; a percentile that too few samples cannot give is shown as 'max'."""
    cells = [ms(fig.median)]
    for q in ("p90", "p99"):
        value = getattr(fig, q)
        cells.append(ms(value) if value is not None else f"max {ms(fig.max)}")
    return "/".join(cells)


def agreement(results: RunResults, m) -> str:
    if m.method == defaults.REFERENCE_METHOD:
        return "reference"
    if not m.tokens:
        return "-"
    first = derived(results, m.method).first_divergence
    if first is None:
        return "no reference"
    n = len(m.tokens)
    return f"{n}/{n} same" if first >= n else f"differs at token {first}"


def verdict(m) -> str:
    q = m.quality
    if q is None:
        return "-"
    v = q.verdict
    if q.marginal and v in ("PASS", "FAIL"):
        v += " (marginal)"
    return v if not q.reasons or v == "not meaningful" else f"{v}: {'; '.join(q.reasons)}"


def with_interval(value, ci, fmt: str) -> str:
    text = fmt.format(value)
    return f"{text} [{fmt.format(ci[0])}, {fmt.format(ci[1])}]" if ci else text


def efficiency(roof: dict | None) -> str:
    """Decode efficiency against the run's bandwidth ceiling, with the floor it divides."""
    if not roof or roof.get("decode_efficiency") is None:
        return "-"
    return f"{roof['decode_efficiency']:.0%} of {roof['decode_floor_ms']:.1f} ms"


def _f(fig: dict | None, scale=1e3, fmt="{:.1f}"):
    return "-" if fig is None else fmt.format(fig.median * scale)


def _measured(get):
    """A getter that shows '-' for a method that did not finish."""
    return lambda results, m: get(results, m, derived(results, m.method)) if m.ok else "-"


def _figure(name: str, scale=1e3, fmt="{:.1f}"):
    return _measured(lambda results, m, d: _f(d.figure(name), scale, fmt))


def _speedup_vs(against: str):
    return _measured(lambda results, m, d: speedup(d.speedups.get(f"speedup_e2e_vs_{against}"),
                                                   m.method == against and bool(m.runs)))


def _size(attr: str):
    return _measured(lambda results, m, d: mbytes(getattr(m, attr)))


def _e2e(results: RunResults, m, d) -> str:
    e2e = d.figure("e2e_s")
    return "-" if e2e is None else f"{ms(e2e.median)} ± {ms(e2e.scaled_mad)}"


def _itl(results: RunResults, m, d) -> str:
    itl = d.figure("itl_s")
    return "-" if itl is None else tails(itl)


def _prefill_rate(results: RunResults, m, d) -> str:
    rate = d.prefill_tokens_per_s
    return "-" if rate is None else f"{rate:.0f}"


# every figure per method, one (column, getter(results, method result)) pair each
COLUMNS = (
    ("method", lambda results, m: m.method),
    ("status", lambda results, m: "ok" if m.ok else m.status.upper()),
    ("TTFT ms", _figure("ttft_s")),
    ("prefill tok/s", _measured(_prefill_rate)),
    ("TPOT ms", _figure("tpot_s")),
    ("ITL p50/p90/p99 ms", _measured(_itl)),
    ("decode tok/s", _figure("decode_tps", scale=1)),
    ("decode vs bandwidth floor", _measured(lambda results, m, d: efficiency(d.roofline))),
    ("E2E ms (median ± scaled MAD)", _measured(_e2e)),
    (f"E2E speedup vs {defaults.BASELINE_METHOD}", _speedup_vs(defaults.BASELINE_METHOD)),
    (f"E2E speedup vs {defaults.REFERENCE_METHOD}", _speedup_vs(defaults.REFERENCE_METHOD)),
    ("weights MB", _size("weight_bytes")),
    ("file MB", _size("file_bytes")),
    ("steady RSS MB", _size("steady_rss_bytes")),
    ("peak RSS MB", _size("peak_rss_bytes")),
    ("greedy tokens vs reference", _measured(lambda results, m, d: agreement(results, m))),
    ("quality", lambda results, m: verdict(m) if m.ok else (m.error or "")),
)


def rows_of(results: RunResults, columns) -> list[list[str]]:
    """A table's rows, one per method, from its (column, getter) pairs."""
    return [[get(results, m) for _, get in columns] for m in results.methods]


def _median(name: str, fmt):
    def get(results: RunResults, m) -> str:
        f = figure(results, m.method, name)
        return "-" if f is None else fmt(f.median)
    return get


def _versus_reference(results: RunResults, m) -> str:
    if m.method == defaults.REFERENCE_METHOD:
        return "reference"
    entry = derived(results, m.method).speedups.get(f"speedup_e2e_vs_{defaults.REFERENCE_METHOD}")
    return speedup(entry)


def _quality_short(results: RunResults, m) -> str:
    q = m.quality
    if q is None:
        return "-"
    kl = f", KL {q.kl_mean:.2g}" if q.kl_mean is not None else ""
    return f"{q.verdict}{' (marginal)' if q.marginal else ''}{kl}"


# the report's first table: what a reader compares, in human units; (column, getter(results, m))
KEY_COLUMNS = (
    ("method", lambda results, m: m.method),
    ("status", lambda results, m: "ok" if m.ok else m.status.upper()),
    ("TTFT", _median("ttft_s", lambda s: duration_ms(s * 1e3))),
    ("TPOT", _median("tpot_s", lambda s: duration_ms(s * 1e3))),
    ("decode", _median("decode_tps", rate)),
    ("E2E", _median("e2e_s", lambda s: duration_ms(s * 1e3))),
    (f"E2E vs {defaults.REFERENCE_METHOD} [95 % CI]", _versus_reference),
    ("peak RSS", lambda results, m: size_bytes(m.peak_rss_bytes)),
    ("quality", _quality_short),
)


def _prepare(results: RunResults, m) -> str:
    if m.prepare_cache_hit:
        return "cached"
    return "-" if m.prepare_s is None else f"{m.prepare_s:.1f}"


COLD_COLUMNS = (
    ("method", lambda results, m: m.method),
    ("export/convert s", _prepare),
    ("load s", lambda results, m: "-" if m.load_s is None else f"{m.load_s:.2f}"),
    ("first call ms", lambda results, m: ms(m.first_call_s)),
    ("warmup runs", lambda results, m: str(m.warmup_runs)),
    ("timed runs", lambda results, m: str(len(m.runs))),
)


def detail_lines(m) -> list[str]:
    """What the engine says it actually built."""
    d = m.details
    lines = [f"{d.dtype}" if d.dtype else "number format not stated"]
    if d.weight_bits or d.activation_bits:
        lines.append(f"arithmetic: {d.weight_bits or '?'}-bit weights, {d.activation_bits or '?'}-bit "
                     "matrix-product inputs")
    if d.bytes_read_per_step:
        lines.append(f"weights read per decode step: {size_bytes(d.bytes_read_per_step)}")
    if d.kv_bytes_per_value is not None:
        lines.append("KV cache: none (recomputed every step)" if d.kv_bytes_per_value == 0
                     else f"KV cache: {d.kv_bytes_per_value:g} bytes per value")
    if d.weights_exact:
        lines.append("weights exactly the reference's (on the quantizer's grid)")
    if d.threads:
        lines.append(f"threads: {d.threads}")
    if d.instruction_set:
        lines.append(f"instruction set: {d.instruction_set}")
    return lines + [f"{k.replace('_', ' ')}: {_plain(v)}" for k, v in sorted(d.extra.items()) if v not in (None, "")]


def _plain(value) -> str:
    """A value of an engine's own details in words: lists joined, dicts as 'key value' pairs."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return "; ".join(map(_plain, value))
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _q(get):
    """A quality column: '-' without a judged quality, 'n/a' where perplexity was not scored."""
    def cell(results: RunResults, m) -> str:
        q = m.quality
        if q is None:
            return "-"
        return get(q) if q.ppl is not None else "n/a"
    return cell


def _greedy_share(results: RunResults, m) -> str:
    q = m.quality
    if q is None or q.greedy_identical_share is None:
        return "-"
    return f"{q.greedy_identical_share:.0%} of {len(q.greedy_first_divergence)}"


QUALITY_COLUMNS = (
    ("method", lambda results, m: m.method),
    ("perplexity", _q(lambda q: f"{q.ppl:.3f}")),
    ("vs reference [95 % CI]", _q(lambda q: with_interval(q.ppl_increase, q.ppl_increase_ci, "{:+.2%}"))),
    ("KL mean [95 % CI]", _q(lambda q: with_interval(q.kl_mean, q.kl_mean_ci, "{:.5f}"))),
    ("KL p99", _q(lambda q: f"{q.kl_p99:.4f}")),
    ("top-1 [95 % CI]", _q(lambda q: with_interval(q.top1, q.top1_ci, "{:.2%}"))),
    ("KL prefix / one at a time", _q(lambda q: regimes(q))),
    ("greedy: prompts identical", _greedy_share),
    ("greedy: first divergence per prompt",
     lambda results, m: ", ".join(str(d) for d in m.quality.greedy_first_divergence) or "-" if m.quality else "-"),
    ("verdict", lambda results, m: verdict(m)),
)


def quality_rows(results: RunResults) -> list[list[str]]:
    """The quality table: the methods that finished and were judged."""
    judged = [m for m in results.methods if m.ok and m.quality]
    return [[get(results, m) for _, get in QUALITY_COLUMNS] for m in judged]


def regimes(q) -> str:
    r = q.regimes or {}
    pre, dec = r.get("prefill") or {}, r.get("decode") or {}
    if pre.get("kl_mean") is None or dec.get("kl_mean") is None:
        return "-"
    return f"{pre['kl_mean']:.5f} / {dec['kl_mean']:.5f}"


def _witness(key: str, fmt: str):
    return lambda results, m: fmt.format(derived(results, m.method).witness[key])


# the engine's own clocks beside ours, for the engines that keep them (llama.cpp)
WITNESS_COLUMNS = (
    ("method", lambda results, m: m.method),
    ("engine decode ms/token", _witness("decode_ms_per_token", "{:.2f}")),
    ("our TPOT / engine's", _witness("tpot_over_engine", "{:.3f}")),
    ("engine prefill ms", _witness("prefill_ms", "{:.1f}")),
    ("our TTFT / engine's", _witness("ttft_over_engine", "{:.3f}")),
)


def witness_rows(results: RunResults) -> list[list[str]]:
    kept = [m for m in results.methods if (w := derived(results, m.method).witness) and w.get("tpot_over_engine")]
    return [[get(results, m) for _, get in WITNESS_COLUMNS] for m in kept]


def ranking(results: RunResults) -> list[str]:
    """The derived ranking as lines: fastest first among methods that pass the budget."""
    r = results.derived.ranking
    ranked = [f"{i}. {x.method} {duration_ms(x.e2e_s * 1e3)}" + (" (marginal)" if x.marginal else "")
              for i, x in enumerate(r.ranked, 1)]
    lines = ["; ".join(ranked) + " (median E2E)"] if ranked else []
    for name in r.not_ranked:
        lines.append(f"- not ranked: {name} ({verdict(results.method(name))})")
    return lines


def versus_llama_cpp(results: RunResults) -> list[str]:
    """The derived comparison with llama.cpp as sentences, with the targets and, where the
    winner was profiled and a target is missed, its bottleneck verdict: why, and what next."""
    v = results.derived.versus_llama_cpp
    if not v:
        return []
    speed_ok = v["speedup"] >= v["target_speedup"]
    lines = [f"The fastest method that passes the quality gate, **{v['method']}** "
             f"(TPOT {v['tpot_s'] * 1e3:.2f} ms), decodes **{v['speedup']:.2f}x** as fast as the fastest "
             f"passing llama.cpp type, {v['llama_cpp']} ({v['llama_cpp_tpot_s'] * 1e3:.2f} ms): target "
             f">= {v['target_speedup']:g}x {'met' if speed_ok else '**missed**'}."]
    if v.get("llama_cpp_fastest", v["llama_cpp"]) != v["llama_cpp"]:
        lines.append(f"Against the fastest llama.cpp type of any quality, {v['llama_cpp_fastest']} "
                     f"({v['llama_cpp_fastest_tpot_s'] * 1e3:.2f} ms, quality {v['llama_cpp_fastest_verdict']}): "
                     f"**{v['llama_cpp_fastest_tpot_s'] / v['tpot_s']:.2f}x**.")
    if v["over_floor"] is not None:
        floor_ok = v["over_floor"] <= v["target_over_floor"]
        lines.append(f"It decodes at {v['over_floor']:.2f}x its own bandwidth floor "
                     f"({v['floor_ms']:.2f} ms): target <= {v['target_over_floor']:g}x "
                     f"{'met' if floor_ok else '**missed**'}.")
    if not v["met"]:
        b = derived(results, v["method"]).bottleneck
        lines.append(f"Why, from {v['method']}'s profile: {b.sentence}. What would close it: "
                     f"{b.next_step}." if b else
                     f"Run with --profile (or `inferlab profile --methods {v['method']}`) for "
                     "where its step goes.")
    return [" ".join(lines), ""]


def setup_in_ttft(results: RunResults) -> list[str]:
    """What each method does per new sequence inside its TTFT, as its engine states it."""
    stated = [(m.method, m.details.setup_in_ttft) for m in results.methods if m.details.setup_in_ttft]
    if not stated:
        return []
    return ["Set-up each method does for a new sequence inside TTFT (a cache made, reset or kept):", "",
            *(f"- **{name}**: {text}" for name, text in stated), ""]


def time_line(results: RunResults, with_report: bool = True) -> str:
    """Where the run's wall time went, one line: 'time 12.3 s: resolve 0.5, load 0.3, ...'.
    A report leaves out its own writing (with_report=False): redrawn, it reads the same."""
    from ..results import RUN_PHASES

    t = dict(results.timings)
    if not with_report:
        t["total"] = t.get("total", 0.0) - t.pop("report", 0.0)
    parts = [f"{name} {t[name]:.1f}" for name in RUN_PHASES if t.get(name)]
    return f"time {t.get('total', 0.0):.1f} s: " + ", ".join(parts)
