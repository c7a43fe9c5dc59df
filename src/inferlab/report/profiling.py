"""profiling_report.md and its charts, from the profile data in a RunResults."""

from __future__ import annotations

import os

import numpy as np

from ..profiling.categories import CATEGORIES
from ..results import RunResults
from .markdown import md_table
from .tables import derived, versus_llama_cpp


def profiled(results: RunResults):
    return [m for m in results.methods if m.ok and m.profile]


def sweep_table(results: RunResults) -> tuple[list[str], list[list[str]]] | None:
    sweep = results.derived.context_sweep
    if not sweep:
        return None
    names = sweep["methods"]
    cols = ["context tokens"]
    for n in names:
        cols += [f"{n} step ms", f"{n} attention share"]
    if len(names) == 2:
        cols.append(f"{names[1]} / {names[0]}")
    rows = []
    for r in sweep["rows"]:
        row = [str(r["context"])]
        for s in r["steps"]:
            row += [f"{s['step_ms']:.1f}", f"{s['attention_share']:.0%}"] if s else ["-", "-"]
        if len(names) == 2:
            row.append("-" if r["ratio"] is None else f"{r['ratio']:.1f}x")
        rows.append(row)
    return cols, rows


def render(results: RunResults, charts: list[str]) -> str:
    ceil = results.derived.ceiling
    parts = [f"# inferlab profiling report: {results.model['name']}", ""]
    if ceil:
        int8 = (f", int8 dot products **{ceil['int8_peak'] / 1e9:.0f} GOPS** ({ceil['int8_path']})"
                if ceil.get("int8_peak") else ", no int8 dot-product probe")
        parts += [
            f"Hardware limits at {results.config['threads']} threads, probed {ceil['probes']} times "
            f"in this run: streaming bandwidth **{ceil['bandwidth_low'] / 1e9:.1f}-"
            f"{ceil['bandwidth_high'] / 1e9:.1f} GB/s**, fp32 GEMM peak **{ceil['gemm_peak'] / 1e9:.0f} "
            f"GFLOP/s**{int8} ({ceil['method']}). Decode floors use the highest bandwidth seen in the "
            f"run, {ceil['bandwidth'] / 1e9:.1f} GB/s (from {ceil['bandwidth_source']}); a prefill's "
            "roof is the peak of its arithmetic: int8 dot products for methods whose products take "
            "int8 activations, fp32 GEMM for the others.",
            "",
        ]
    parts += ["Profiles cover one prefill and a few decode steps per method, in a process of their "
              "own, after one untimed prefill + decode; they are never timed together with the "
              "benchmark. Category shares of a phase add up to 100 %: `overhead` is the phase's "
              "wall time that no operator covers (Python, dispatch, framework bookkeeping).", ""]
    parts += ["## Bottlenecks", ""]
    roof_rows = []
    for m in profiled(results):
        d = derived(results, m.method)
        b = d.bottleneck
        parts += [f"- **{m.method}**: {b.sentence}. Next: {b.next_step}." if b else f"- **{m.method}**: no verdict"]
        roof = d.roofline
        if roof:
            lo, hi = roof["decode_floor_range_ms"]
            roof_rows.append([
                m.method, f"{roof['weight_mb_per_step']:.0f}", f"{roof['kv_mb_per_step']:.1f}",
                f"{roof['decode_floor_ms']:.1f} ({lo:.1f}-{hi:.1f})",
                f"{roof['tpot_ms']:.1f}", f"{roof['decode_efficiency']:.0%}",
                f"{roof['achieved_gb_s']:.1f}",
                f"{roof.get('prefill_floor_ms', float('nan')):.1f}",
                f"{roof.get('ttft_ms', float('nan')):.1f}",
                f"{roof['prefill_efficiency']:.0%}" if roof.get("prefill_efficiency") else "-",
                roof.get("compute_roof", "-"), roof["time_source"],
            ])
    parts.append("")
    parts += versus_llama_cpp(results)
    if roof_rows:
        arch = results.model.get("architecture") or {}
        parts += ["## Roofline", "",
                  f"Decode floor = (weight bytes read per step + KV cache read at the mean decode "
                  f"context) / bandwidth, with the range over the probes in brackets; prefill floor "
                  f"= (2 x {arch.get('block_parameters', '?')} block parameters x "
                  f"{results.prompt_tokens} prompt tokens + 2 x {arch.get('lm_head_parameters', '?')} "
                  f"LM-head parameters for one position + causal attention) / the peak of the "
                  f"method's arithmetic (its compute roof). Efficiency = floor / measured time.", "",
                  md_table(["method", "weights MB/step", "KV cache MB/step", "decode floor ms",
                            "TPOT ms", "decode efficiency", "achieved GB/s", "prefill floor ms",
                            "TTFT ms", "prefill efficiency", "compute roof", "times from"], roof_rows), ""]
    sweep = sweep_table(results)
    if sweep:
        parts += ["## What the KV cache changes: decode step against context length", "",
                  "One decode step after a context of N tokens (median of 3), and the share of "
                  "the step spent in the attention blocks (forward hooks).", "",
                  md_table(*sweep), ""]
    for m in profiled(results):
        prof = m.profile
        parts += [f"## {m.method}", "",
                  f"{prof.profiler}; trace `traces/{prof.trace_file}` "
                  f"({prof.trace_bytes / 1e6:.1f} MB, opens in Perfetto or chrome://tracing).", ""]
        if prof.unprofiled_decode_step_ms and prof.decode:
            prefill = prof.phases.get("prefill")
            parts += [f"Profiler cost: a profiled decode step took {prof.decode.wall_ms:.1f} ms, "
                      f"the same step unprofiled {prof.unprofiled_decode_step_ms:.1f} ms (prefill "
                      f"{prefill.wall_ms if prefill else float('nan'):.1f} vs "
                      f"{prof.unprofiled_prefill_ms:.1f} ms). Shares below are of the profiled time; the "
                      "bottleneck sentence above corrects for the difference.", ""]
        phases = prof.phases
        cat_rows = [[c] + [f"{phases[p].categories_ms[c]:.2f} ({phases[p].categories_share[c]:.0%})"
                           for p in phases] for c in CATEGORIES]
        cat_rows.append(["**total (wall)**"] + [f"{phases[p].wall_ms:.2f}" for p in phases])
        parts += ["Time per call by category, ms (share):", "",
                  md_table(["category"] + [f"{p} (x{phases[p].calls})" for p in phases], cat_rows), ""]
        if prof.decode:
            parts += ["Top operators of a decode step by self time:", "",
                      md_table(["operator", "category", "self ms", "calls/step", "share"],
                               [[o.op, o.category, f"{o.self_ms:.3f}",
                                 f"{o.calls_per_phase:.0f}", f"{o.share:.1%}"]
                                for o in prof.decode.top_ops]), ""]
            split = derived(results, m.method).decode_parts
            if split:
                part_rows = [[p, f"{ms:.2f}", f"{share:.0%}"] for p, ms, share in split["parts"]]
                parts += [f"By model part, per decode step of {split['step_ms']:.1f} ms ({prof.parts_note}):",
                          "", md_table(["part", "ms", "share"], part_rows), ""]
    if charts:
        parts += ["## Charts", ""] + [f"![{c}]({c})" for c in charts] + [""]
    return "\n".join(parts)


def draw(results: RunResults, folder: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .charts import _save

    written = []
    methods = profiled(results)
    if not methods:
        return written
    bars = [(f"{m.method}\n{p}", m.profile.phases[p]) for m in methods for p in ("prefill", "decode")
            if p in m.profile.phases]
    fig, ax = plt.subplots(figsize=(max(8, len(bars) * 0.9), 5))
    bottom = np.zeros(len(bars))
    colors = plt.get_cmap("tab20").colors
    for i, c in enumerate(CATEGORIES):
        vals = np.array([ph.categories_share[c] * 100 for _, ph in bars])
        ax.bar(range(len(bars)), vals, bottom=bottom, label=c, color=colors[i % len(colors)])
        bottom += vals
    ax.set_xticks(range(len(bars)), [b for b, _ in bars], fontsize=8, rotation=30, ha="right")
    ax.set_ylabel("share of phase wall time, %")
    ax.set_title("Where time goes, by operator category (overhead = outside any operator)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    _save(fig, os.path.join(folder, "profile_categories.png"))
    written.append("profile_categories.png")
    sweeps = [(m.method, m.profile.sweep) for m in methods if m.profile.sweep]
    if sweeps:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for name, sw in sweeps:
            x = [s.context for s in sw]
            a1.plot(x, [s.step_ms for s in sw], marker="o", label=name)
            a2.plot(x, [s.attention_share * 100 for s in sw], marker="o", label=name)
        a1.set_xlabel("context tokens")
        a1.set_ylabel("decode step, ms")
        a1.set_title("Step time vs context")
        a2.set_xlabel("context tokens")
        a2.set_ylabel("attention share of the step, %")
        a2.set_title("Attention share vs context")
        for a in (a1, a2):
            a.set_xscale("log", base=2)
            a.legend()
        _save(fig, os.path.join(folder, "profile_context_sweep.png"))
        written.append("profile_context_sweep.png")
    return written
