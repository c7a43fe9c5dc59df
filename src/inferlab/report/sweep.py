"""A sweep's report: its cells as a table (console and Markdown), the crossovers in words, and
charts of each rate against the axis that was swept, one line per method. Reads
derived.cells and derived.crossovers only."""

from __future__ import annotations

import os

from .. import defaults
from ..results import RunResults
from .tables import mbytes, setup_in_ttft

def _num(key: str, fmt="{:.1f}"):
    return lambda r: "-" if r.get(key) is None else fmt.format(r[key])


def _interval(key: str, fmt: str):
    return lambda r: "-" if r.get(key) is None else \
        f"{fmt.format(r[key])} [{fmt.format(r[key + '_lo'])}-{fmt.format(r[key + '_hi'])}]"


# a derived cell row (derive_cells.cell_rows) as text: one (column, getter(row)) pair each
CELL_COLUMNS = (
    ("test", lambda r: r["test"]), ("threads", lambda r: str(r["n_threads"])),
    ("batch", lambda r: str(r["n_batch"])), ("method", lambda r: r["method"]),
    ("status", lambda r: r["status"]), ("pp tok/s", _num("pp_tps", "{:.0f}")), ("tg tok/s", _num("tg_tps")),
    ("tg tok/s total", _num("tg_tps_total")), ("TTFT ms [95 % CI]", _interval("ttft_ms", "{:.1f}")),
    ("TPOT ms [95 % CI]", _interval("tpot_ms", "{:.2f}")), ("E2E ms", _num("e2e_ms")),
    ("peak RSS MB", _num("peak_rss_mb", "{:.0f}")), ("runs", lambda r: str(r["runs"])),
)
CELL_NAMES = tuple(name for name, _ in CELL_COLUMNS)

# a derived row's distance to the hardware limits (roofline.cell_limits)
LIMIT_COLUMNS = (
    ("test", lambda r: r["test"]), ("threads", lambda r: str(r["n_threads"])),
    ("batch", lambda r: str(r["n_batch"])), ("method", lambda r: r["method"]),
    ("decode floor ms", _num("decode_floor_ms", "{:.2f}")),
    ("TPOT / floor", lambda r: f"{1 / r['decode_efficiency']:.2f}x"),
    ("read GB/s", _num("achieved_gb_s")), ("ceiling GB/s", _num("bandwidth_gb_s")),
    ("prefill floor ms", _num("prefill_floor_ms", "{:.1f}")),
    ("prefill of roof", lambda r: "-" if r.get("prefill_efficiency") is None else f"{r['prefill_efficiency']:.0%}"),
    ("compute roof", lambda r: r.get("compute_roof") or "-"),
)


def limits_section(results: RunResults) -> list[str]:
    """Each cell's methods against the bandwidth floor and the compute roof (nothing when no
    cell has a floor)."""
    from .markdown import md_table

    rows = [r for r in results.derived.cells if r.get("decode_efficiency")]
    if not rows:
        return []
    machines = any(r.get("machine") for r in rows)
    table = [[r.get("machine", "")] * machines + [get(r) for _, get in LIMIT_COLUMNS] for r in rows]
    return ["## Distance to the hardware limits", "",
            "Decode floor: the bytes a step reads (the weights once, each sequence's KV cache at the "
            "cell's mean context) over the bandwidth: each timed run against the streaming bandwidth read "
            "just before it (the machine can change state between two runs), or its own rate where it read "
            "faster; TPOT / floor is the median over the runs, 'ceiling' the median reading. Prefill floor: "
            "its FLOPs over the compute roof of its arithmetic (the run's probes). Definitions: METRICS.md.", "",
            md_table(["machine"] * machines + [name for name, _ in LIMIT_COLUMNS], table), ""]


def cell_table(results: RunResults, reasons: bool = True) -> tuple[list[str], list[list[str]]]:
    """The cells' column names and figures as text, a machine column first where the sweep
    spans several kinds of machine; `reasons` adds why a method did not run to its status."""
    machines = any(r.get("machine") for r in results.derived.cells)
    rows = []
    for r in results.derived.cells:
        row = [get(r) for _, get in CELL_COLUMNS]
        if reasons and r.get("error"):
            row[CELL_NAMES.index("status")] += f": {r['error']}"
        rows.append([r.get("machine", "")] * machines + row)
    return ["machine"] * machines + list(CELL_NAMES), rows


def console_cells(results: RunResults) -> str:
    names, rows = cell_table(results, reasons=False)
    widths = [max(len(x) for x in [c] + [r[i] for r in rows]) for i, c in enumerate(names)]

    def fmt(row):
        return "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip()

    lines = [fmt(names), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]
    lines += [""] + [f"crossover: {c}" for c in results.derived.crossovers]
    lines += [f"batch knee: {k}" for k in results.derived.knees]
    return "\n".join(lines).rstrip()


def render(results: RunResults, charts: list[str]) -> str:
    from .markdown import environment_section, md_table, quality_section

    cfg, axes = results.config, (results.sweep or {}).get("axes", {})
    done = sum(c.status == "complete" for c in results.cells)
    from .answer import sweep_answer
    from .markdown import folded

    how = (
        "Axes (every combination): " + "; ".join(f"{k} {', '.join(map(str, v))}" for k, v in axes.items())
        + f". Prompts of exactly that many tokens cut from {results.sweep.get('prompt_text')}; "
        "'@ dN': N tokens of the same text were in the cache before the prompt (filled untimed). "
        "Each method loaded once per thread count in its own process; in each cell one untimed "
        f"first call (the whole context and prompt, {defaults.CELL_WARMUP_NEW_TOKENS} new tokens), then rounds of one timed generation per method in rotating order, until "
        f"at least {cfg['min_repeats']} runs and {cfg['min_time_s']:g} s (cap {cfg['max_repeats']}). "
        "pp tok/s = prompt tokens / median TTFT (llama-bench's pp); tg tok/s = median decode rate "
        "of one sequence, 'total' over the batch. Intervals: 95 % bootstrap of the median. "
        "Definitions: METRICS.md.")
    parts = [
        f"# inferlab sweep: {results.model['name']}",
        "",
        f"> {sweep_answer(results)}",
        "",
        f"Sweep {results.created}, status **{results.status}**, {done} cells measured, inferlab "
        f"{results.inferlab_version}, results schema {results.schema_version}.",
        "",
        *folded("How it was measured", [how]),
    ]
    crossings = results.derived.crossovers
    parts += ["## Crossovers", ""] + ([f"- {c}" for c in crossings]
                                      or ["- none: the same method is fastest at every point swept"]) + [""]
    knees = results.derived.knees
    if knees:
        parts += ["## Batch: where total throughput stops growing", ""] + [f"- {k}" for k in knees] + [""]
    parts += ["## Cells", "", md_table(*cell_table(results)), ""]
    if charts:  # each chart one axis of the cells above
        parts += ['<div class="beside">', ""] + [f"![{c}]({c})" for c in charts] + ["", "</div>", ""]
    parts += limits_section(results)
    parts += nodes_section(results)
    parts += quality_section(results)
    sizes = [f"- **{m.method}**: weights {mbytes(m.weight_bytes)} MB, load {m.load_s or 0:.2f} s; "
             f"{m.summary}" for m in results.methods]
    parts += ["## Methods", ""] + sizes + [""] + setup_in_ttft(results)
    warns = results.derived.warnings
    parts += ["## Warnings", ""] + ([f"- {w}" for w in warns] or ["- none"]) + [""]
    parts += folded("Environment", environment_section(results)[2:])
    return "\n".join(parts)


def nodes_section(results: RunResults) -> list[str]:
    """Where each cell ran and on what machine, for a sweep on a cluster (nothing otherwise)."""
    from ..progress import node_name
    from .markdown import md_table

    if all(c.node.get("id", "local") == "local" for c in results.cells):
        return []
    rows = [[c.cell.key, node_name(c.node) if c.node else "-", c.node.get("host", "-"),
             c.node.get("kind", "-"), c.status, f"{c.seconds:.1f}" if c.seconds else "-"] for c in results.cells]
    kinds = [f"- kind `{k}`{f' ({n})' if (n := m.get('name')) else ''}: {m.get('cpu')}, {m.get('usable_cpus')} usable CPUs, "
             f"{(m.get('memory_bytes') or 0) / 2**30:.0f} GiB, Python {m.get('python')}, inferlab "
             f"{m.get('inferlab_commit') or '?'}" for k, m in results.machines.items()]
    return (["## Where the cells ran", "", md_table(["cell", "node", "host", "machine kind", "status", "seconds"], rows),
             ""] + kinds + [""])


# chart file -> (x axis, y figure, labels); the other axes are held at one value per line set
CHARTS = {
    "sweep_prefill_vs_prompt.png": ("n_prompt", "pp_tps", "prompt tokens", "prefill tokens/s"),
    "sweep_decode_vs_depth.png": ("n_depth", "tg_tps", "context depth (tokens in the cache)",
                                  "decode tokens/s per sequence"),
    "sweep_decode_vs_threads.png": ("n_threads", "tg_tps", "threads", "decode tokens/s per sequence"),
    "sweep_total_vs_batch.png": ("n_batch", "tg_tps_total", "batch size", "decode tokens/s, all sequences"),
    "sweep_tpot_vs_batch.png": ("n_batch", "tpot_ms", "batch size", "TPOT ms per sequence"),
}
AXES = ("n_prompt", "n_gen", "n_depth", "n_threads", "n_batch")


def draw(results: RunResults, folder: str) -> list[str]:
    """One chart per axis that has at least two values; the other axes at their first value
    (the smallest depth and batch, the largest thread count), one line per method (and kind
    of machine, where the sweep spans several)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .charts import _save

    rows = [r for r in results.derived.cells if r.get("e2e_ms") is not None]
    written = []
    for name, (axis, figure, xlabel, ylabel) in CHARTS.items():
        points = sorted({r[axis] for r in rows})
        if len(points) < 2:
            continue
        held = {a: _held_value(rows, a) for a in AXES if a != axis}
        chosen = [r for r in rows if all(r[a] == v for a, v in held.items())]
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for method, where in dict.fromkeys(_series(r) for r in chosen):
            line = sorted((r[axis], r[figure]) for r in chosen if _series(r) == (method, where))
            ax.plot([x for x, _ in line], [y for _, y in line], marker="o",
                    label=f"{method} on {where}" if where else method)
        ax.set_xticks(points)  # the values swept, not a scale's round numbers
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(", ".join(f"{a[2:]} {v}" for a, v in held.items()), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _save(fig, os.path.join(folder, name))
        written.append(name)
    return written


def _series(row: dict) -> tuple[str, str]:
    """A chart's line: a method, on one kind of machine where the sweep spans several."""
    return row["method"], row.get("machine", "")


def _held_value(rows: list[dict], axis: str):
    values = sorted({r[axis] for r in rows})
    return values[-1] if axis == "n_threads" else values[0]
