"""What a sweep's cells give, computed once per save and stored under derived.cells and
derived.crossovers: one row per cell and method (the figures of cells.csv and the report's
table), and where the fastest method changes along an axis, in words."""

from __future__ import annotations

from itertools import groupby

from .analysis import first_divergence
from .stats import median_interval, summarize

# the axes a crossover is looked for along, and the figure that ranks methods there:
# end to end over prompt lengths; the decode step over context depth and thread count
CROSSOVER_AXES = (("n_prompt", "e2e_ms", "prompt tokens", "end to end"),
                  ("n_depth", "tpot_ms", "tokens of context", "per decoded token"),
                  ("n_threads", "tpot_ms", "threads", "per decoded token"))
# "machine": the kind of machine's name where a sweep spans several (else ""), held like an axis
AXES = ("machine", "n_prompt", "n_gen", "n_depth", "n_threads", "n_batch")


def first_divergences(results) -> dict[tuple[str, str], int]:
    """(cell key, method) -> the index of the first greedy token that differs from the fp32
    reference's in the same cell (N when none): a sweep's cells against their own reference
    run, a run against the reference's tokens for its prompt."""
    from . import defaults

    out = {}
    if results.sweep:
        for c in results.cells:
            ref = c.method(defaults.REFERENCE_METHOD)
            if ref is not None and ref.ok and ref.tokens:
                out.update({(c.cell.key, m.method): first_divergence(m.tokens, ref.tokens)
                            for m in c.methods if m.ok and m.tokens})
    elif results.reference_tokens:
        key = results.run_cell().key
        out.update({(key, m.method): first_divergence(m.tokens, results.reference_tokens)
                    for m in results.methods if m.tokens})
    return out


def cell_rows(results, divergences: dict | None = None) -> list[dict]:
    from .machine import kind_names
    from .profiling.roofline import cell_limits

    asked = (results.config or {}).get("min_repeats", 0)
    divergences = first_divergences(results) if divergences is None else divergences
    names = kind_names(results.machines)
    rows = []
    for c in results.cells:
        cell = c.cell
        mine = []
        for m in c.methods:
            row = {"method": m.method, "test": cell.test, "key": cell.key,
                   "machine": names.get(cell.machine, cell.machine) if cell.machine else "",
                   "n_prompt": cell.prompt_tokens, "n_gen": cell.new_tokens, "n_depth": cell.depth,
                   "n_threads": cell.threads, "n_batch": cell.batch, "status": m.status,
                   "error": m.error, "runs": len(m.runs), "warnings": [],
                   # where it was measured: "local", or a cluster node's id; its machine's kind
                   "node": c.node.get("id"), "machine_kind": c.node.get("kind")}
            if m.ok and m.runs:
                row.update(cell_figures(m, cell, asked), first_divergence=divergences.get((cell.key, m.method)))
            mine.append(row)
        for method, limits in cell_limits(results, c, mine).items():
            row = next(r for r in mine if r["method"] == method)
            row.update({k: limits.get(k) for k in LIMIT_FIGURES})
            if (limits.get("prefill_efficiency") or 0) > 1:
                row["warnings"].append(
                    f"{method} [{cell.key}]: prefill at {limits['prefill_efficiency']:.0%} of its compute roof "
                    f"({limits['compute_roof']}): a probe that understates the machine, or arithmetic the count misses")
        rows += mine
    return rows


# a row's distance to the hardware limits (profiling/roofline.cell_limits)
LIMIT_FIGURES = ("bandwidth_gb_s", "weight_mb_per_step", "kv_mb_per_step", "decode_floor_ms", "decode_efficiency",
                 "achieved_gb_s", "compute_roof", "compute_roof_gops", "prefill_floor_ms", "prefill_efficiency")


def cell_figures(m, cell, asked: int) -> dict:
    """A method's figures in one cell (a run's one cell too: records.py)."""
    ttft, tpot = m.samples("ttft_s"), m.samples("tpot_s")
    s = {name: summarize(m.samples(name), f"{m.method} {name} [{cell.key}]")
         for name in ("ttft_s", "tpot_s", "e2e_s", "decode_tps")}
    ttft_ci, tpot_ci = median_interval(ttft), median_interval(tpot)
    warnings = [w for name in ("ttft_s", "tpot_s", "e2e_s") for w in s[name].warnings]
    if len(m.runs) < asked:  # fewer than --repeats asked (the sweep says once if that is few)
        warnings.append(f"{m.method} [{cell.key}]: {len(m.runs)} timed runs of the {asked} asked")
    changed = [(i, d) for i, d in enumerate(m.batch_divergence or []) if d < cell.new_tokens]
    if changed:
        warnings.append(f"{m.method} [{cell.key}]: batching changed the greedy tokens of "
                        f"{len(changed)} of {cell.batch} sequences (from token "
                        f"{min(d for _, d in changed)}): the batched arithmetic differs from batch 1")
    if m.deterministic is False:
        warnings.append(f"{m.method} [{cell.key}]: repeated runs produced different tokens")
    return {
        "ttft_ms": s["ttft_s"].median * 1e3, "ttft_ms_lo": ttft_ci[0] * 1e3, "ttft_ms_hi": ttft_ci[1] * 1e3,
        "tpot_ms": s["tpot_s"].median * 1e3, "tpot_ms_lo": tpot_ci[0] * 1e3, "tpot_ms_hi": tpot_ci[1] * 1e3,
        "e2e_ms": s["e2e_s"].median * 1e3,
        # llama-bench's pp: prompt tokens per second of the prefill (TTFT; a batch: all its
        # sequences' prompt tokens); its tg: decode of one sequence, and of the whole batch
        "pp_tps": cell.prompt_tokens * cell.batch / s["ttft_s"].median,
        "tg_tps": s["decode_tps"].median,
        "tg_tps_total": s["decode_tps"].median * cell.batch,
        "steady_rss_mb": m.steady_rss_bytes / 1e6 if m.steady_rss_bytes else None,
        "peak_rss_mb": m.peak_rss_bytes / 1e6 if m.peak_rss_bytes else None,
        "batch_divergence": min(m.batch_divergence) if m.batch_divergence else None,
        "warnings": warnings,
    }


def knees(rows: list[dict]) -> list[str]:
    """Per method, where total decode throughput stops growing with the batch: in each
    workload (the other axes held), the first batch after which the next one adds less than
    defaults.KNEE_GAIN. One sentence per method."""
    from . import defaults

    measured = [r for r in rows if r.get("tg_tps_total") is not None]
    held = ("machine", "n_prompt", "n_gen", "n_depth", "n_threads")
    out = []
    for method in dict.fromkeys(r["method"] for r in measured):
        found, growing = [], []
        mine = sorted((r for r in measured if r["method"] == method), key=lambda r: [r[a] for a in held])
        for fixed, group in groupby(mine, key=lambda r: tuple(r[a] for a in held)):
            line = sorted((r["n_batch"], r["tg_tps_total"]) for r in group)
            if len(line) < 2:
                continue
            where = "pp{} tg{} d{} t{}".format(*fixed[1:]) + (f" on {fixed[0]}" if fixed[0] else "")
            knee = next((b for (b, t), (_, t_next) in zip(line, line[1:])
                         if t_next < t * (1 + defaults.KNEE_GAIN)), None)
            if knee is None:
                growing.append((fixed[0], line[-1][0], line[-1][1]))
            else:
                found.append(f"batch {knee} at {where} ({max(t for _, t in line):.0f} tok/s at best)")
        parts = []
        if found:
            parts.append("stops growing at " + "; ".join(found))
        for kind in dict.fromkeys(k for k, _, _ in growing):  # rates of one kind of machine each
            mine_growing = [(b, t) for k, b, t in growing if k == kind]
            rates = [t for _, t in mine_growing]
            parts.append(f"still grows at the largest batch ({max(b for b, _ in mine_growing)}) in "
                         f"{len(mine_growing)} workload{'s' if len(mine_growing) > 1 else ''}"
                         + (f" on {kind}" if kind else "") + f" ({min(rates):.0f}-{max(rates):.0f} tok/s there)")
        if parts:
            out.append(f"{method}: total decode throughput " + "; ".join(parts))
    return out


def crossovers(rows: list[dict], excluded: set[str]) -> list[str]:
    """Sentences naming, along each swept axis with the other axes held, where the fastest
    method changes: 'pp…: native-int4 is fastest end to end up to 512 prompt tokens; from
    1024, openvino-int8'. Methods in `excluded` (failed the quality gate) never win."""
    measured = [r for r in rows if r.get("e2e_ms") is not None and r["method"] not in excluded]
    out = []
    for axis, figure, unit, how in CROSSOVER_AXES:
        held = [a for a in AXES if a != axis]

        def key(r, held=held):
            return tuple(r[a] for a in held)

        for fixed, group in groupby(sorted(measured, key=key), key=key):
            group = list(group)
            points = sorted({r[axis] for r in group})
            if len(points) < 2:
                continue
            winners = [(x, min((r for r in group if r[axis] == x), key=lambda r: r[figure])["method"])
                       for x in points]
            runs = [(w, [x for x, _ in g]) for w, g in groupby(winners, key=lambda t: t[1])]
            if len(runs) < 2:
                continue
            where = ", ".join(f"{a} {v}" for a, v in zip(held, fixed) if a != "machine" or v)
            parts = [f"{runs[0][0]} is fastest {how} up to {runs[0][1][-1]} {unit}"]
            parts += [f"from {xs[0]}, {w}" for w, xs in runs[1:]]
            out.append(f"{'; '.join(parts)} ({where})")
    return out
