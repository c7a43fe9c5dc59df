"""report.md (and the console table) from a RunResults. Reads results only; never measures."""

from __future__ import annotations

from .. import defaults
from ..results import RunResults
from .tables import (
    COLD_COLUMNS,
    COLUMNS,
    KEY_COLUMNS,
    QUALITY_COLUMNS,
    WITNESS_COLUMNS,
    detail_lines,
    quality_rows,
    ranking,
    rows_of,
    setup_in_ttft,
    time_line,
    versus_llama_cpp,
    witness_rows,
)


def md_table(columns, rows) -> str:
    def esc(cell):
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def console_table(results: RunResults) -> str:
    """A compact fixed-width table for the terminal."""
    shown = ("method", "status", "TTFT ms", "TPOT ms", "decode tok/s", "E2E ms (median ± scaled MAD)",
             f"E2E speedup vs {defaults.REFERENCE_METHOD}", "weights MB", "peak RSS MB", "quality")
    columns = [(name, get) for name, get in COLUMNS if name in shown]
    cols = [name for name, _ in columns]
    rows = rows_of(results, columns)
    widths = [max(len(str(x)) for x in [c] + [r[i] for r in rows]) for i, c in enumerate(cols)]
    fmt = lambda row: "  ".join(str(x).ljust(w) for x, w in zip(row, widths))  # noqa: E731
    return "\n".join([fmt(cols), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def reference_note(gguf_type: str | None, exact_methods: list[str]) -> list[str]:
    """A reference converted from a quantized GGUF already carries that format's rounding."""
    if not gguf_type or gguf_type in ("ALL_F32", "F16", "BF16"):
        return []
    one = len(exact_methods) == 1
    exact = (f" So {'does' if one else 'do'} {', '.join(exact_methods)}: {'its' if one else 'their'} "
             "quantizer found the weights on its grid and stores them exactly (what differs is "
             "the arithmetic, e.g. int8 activations)." if exact_methods else "")
    return [f"The fp32 reference is the model's GGUF {gguf_type} weights, dequantized: a method "
            f"running the {gguf_type} file itself reads exactly these weights.{exact} Every other "
            "quantized format re-quantizes already rounded weights and pays an error that a native "
            "fp16 checkpoint would not.", ""]


PROTOCOL_TEXT = {
    "interleaved": "interleaved (every method stayed loaded and the methods took turns, one "
                   "timed run each: drift spreads over all of them)",
    "sequential": "sequential (one method after the other: drift between methods is not controlled)",
}


def quality_section(results: RunResults, chart: str | None = None) -> list[str]:
    """The quality table beside its chart, how it was measured folded (a run's and a sweep's
    report)."""
    qrows = quality_rows(results)
    if not qrows:
        return []
    model = results.model
    qs = results.quality_setup or {}
    b = qs.get("budget", {})
    how = [
        f"Text: {qs.get('text_source')}; {qs.get('windows')} non-overlapping windows of "
        f"{qs.get('context')} tokens (stride {qs.get('context')}), each scored as the method "
        f"generates: its first {qs.get('prefix')} tokens in one call, the rest one token at a "
        f"time; perplexity over every next-token prediction in them (exp of mean NLL, natural "
        f"log, per token). Intervals: 95 %, bootstrap over blocks of "
        f"{defaults.QUALITY_BLOCK} positions; a verdict is marked marginal when an interval "
        f"contains its budget line. KL is "
        f"KL(reference || method) in nats per position. Greedy: {qs.get('greedy_prompts')} "
        f"prompts x {qs.get('greedy_new_tokens')} tokens, index of the first token that "
        f"differs from the reference's. Budget for PASS: perplexity at most "
        f"+{b.get('max_ppl_increase', 0):.0%}, mean KL at most {b.get('max_kl_mean')} nats, "
        f"top-1 agreement at least {b.get('min_top1', 0):.0%}.",
    ]
    return ["## Quality against the fp32 reference", "",
            *reference_note(model.get("gguf_type"),
                            [m.method for m in results.methods if m.details.weights_exact]),
            *beside(md_table([c for c, _ in QUALITY_COLUMNS], qrows), chart),
            *folded("How quality was measured", how)]


def environment_section(results: RunResults) -> list[str]:
    """Model, machine, libraries and where the time went (a run's and a sweep's report): the
    machine that measured (the driver's, where a sweep spans several kinds: each kind is in
    'Where the cells ran')."""
    several = len(results.machines) > 1
    mach, model = results.machine if several else results.measuring_machine(), results.model
    return [
        "## Environment",
        "",
        f"- model: `{model['spec']}` ({model['source']}), content hash {model['content_hash']}",
        *([f"- measured on {len(results.machines)} kinds of machine (see 'Where the cells ran'); this "
           "machine drove the sweep:"] if several else []),
        f"- CPU: {mach.get('cpu')}, {mach.get('usable_cpus')} usable of {mach.get('logical_cpus')} "
        f"logical CPUs; flags: {', '.join(mach.get('cpu_flags', []))}",
        f"- memory: {(mach.get('memory_bytes') or 0) / 2**30:.1f} GiB; OS: {mach.get('os')}; "
        f"Python {mach.get('python')}",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in mach.get("libraries", {}).items() if v),
        f"- thread variables: {results.machine.get('thread_env') or 'none set'}",
        "- where the run's wall time went, in seconds (writing this report aside): "
        + time_line(results, with_report=False),
        "",
    ]


def beside(table: str, chart: str | None) -> list[str]:
    """A table with the chart that illustrates it, side by side in HTML (one after the other in
    plain Markdown)."""
    if not chart:
        return [table, ""]
    return ['<div class="beside">', "", table, "", f"![{chart}]({chart})", "", "</div>", ""]


def folded(summary: str, lines: list[str]) -> list[str]:
    """A section folded until asked for (<details>; GitHub renders it too)."""
    return ["<details>", f"<summary>{summary}</summary>", "", *lines, "", "</details>", ""]


def protocol_text(results: RunResults) -> str:
    cfg, model = results.config, results.model
    return (
        f"Batch 1, greedy, exactly {cfg['new_tokens']} new tokens after a "
        f"{results.prompt_tokens}-token prompt"
        f"{' (chat template applied)' if model.get('chat_template_applied') else ''}, "
        f"{cfg['threads']} threads. Each method ran in its "
        f"own process: one untimed first call (+{max(cfg['warmup'] - 1, 0)} warmup), then timed "
        f"runs until at least {cfg['min_repeats']} runs and {cfg['min_time_s']:g} s (cap "
        f"{cfg['max_repeats']}), {PROTOCOL_TEXT.get(cfg.get('protocol'), 'protocol unknown')}. "
        "Figures are medians over runs; E2E shows ± the scaled MAD (1.4826 x MAD); speedups are ratios "
        f"of median E2E with a {int(100 * defaults.CONFIDENCE)} % bootstrap interval, '(n.s.)' when "
        "the interval includes 1. TTFT is engine-level (token ids in, first token id out: no "
        "tokenization, HTTP or queueing, so below a serving benchmark's client-level TTFT); TPOT is "
        "what GenAI-Perf calls inter-token latency, ITL is vLLM's per-gap ITL. Definitions: "
        "METRICS.md.")


def render(results: RunResults, charts: list[str] | None = None) -> str:
    """Answer first: the sentence, the key figures beside their chart, what to beware of, the
    quality; then everything else folded."""
    from .answer import run_answer

    charts = charts or []

    def chart(name):
        return name if name in charts else None

    model = results.model
    parts = [f"# inferlab report: {model['name']}", "", f"> {run_answer(results)}", "",
             f"Run {results.created}, status **{results.status}**, inferlab {results.inferlab_version}; "
             f"{results.prompt_tokens}-token prompt, {results.config['new_tokens']} new tokens, "
             f"{results.config['threads']} threads, batch 1 (how: below).", ""]
    parts += beside(md_table([c for c, _ in KEY_COLUMNS], rows_of(results, KEY_COLUMNS)), chart("e2e_latency.png"))
    ranked = ranking(results)
    if ranked:
        judged = results.derived.ranking.judged
        parts += ["## Ranking" + (" (fastest first, among methods that pass the quality budget)"
                                   if judged else " (fastest first; quality not judged)"), ""]
        parts += ranked + [""]
    parts += versus_llama_cpp(results)
    warns = results.derived.warnings
    parts += ["## Warnings", ""] + ([f"- {w}" for w in warns] or ["- none"]) + [""]
    parts += quality_section(results, chart("speed_vs_quality.png"))
    every = ["", md_table([c for c, _ in COLUMNS], rows_of(results, COLUMNS)), ""]
    ceil = results.derived.ceiling
    if ceil:
        every += [f"Bandwidth probed {ceil['probes']} times in this run (before and after the "
                  f"measurements): {ceil['bandwidth_low'] / 1e9:.1f}-{ceil['bandwidth_high'] / 1e9:.1f} "
                  f"GB/s. 'decode vs bandwidth floor' divides the floor (weight and KV-cache bytes "
                  f"read per step / {ceil['bandwidth'] / 1e9:.1f} GB/s, the highest rate seen, from "
                  f"{ceil['bandwidth_source']}) by the median TPOT.", ""]
    witness = witness_rows(results)
    if witness:
        every += ["Witness: the engine's own performance counters over the same timed runs "
                  "(medians). Our clocks also cover the Python loop, the logits copy and the argmax, "
                  "so a ratio slightly above 1 is expected.", "",
                  md_table([c for c, _ in WITNESS_COLUMNS], witness), ""]
    every += [f"![{c}]({c})" for c in ("itl_by_position.png", "speed_vs_size.png") if c in charts]
    parts += folded("Every figure, per method (latency tails, floors, sizes, speedups)", every)
    parts += folded("How it was measured", [protocol_text(results), "", *setup_in_ttft(results)])
    parts += folded("Cold start: conversion, load and first call", [md_table([c for c, _ in COLD_COLUMNS], rows_of(results, COLD_COLUMNS))])
    built = []
    for m in results.methods:
        built.append(f"- **{m.method}**: {m.summary}")
        built += [f"  - {line}" for line in detail_lines(m)]
    parts += folded("What each method built", built)
    text = [f"- **{m.method}**: {(m.text.replace(chr(10), ' ').strip() or '(not decodable)')[:300]}"
            for m in results.methods if m.ok]
    parts += folded("Generated text (first timed run)", text)
    parts += folded("Environment", environment_section(results)[2:])
    return "\n".join(parts)
