"""One flat record per method and cell of a results set: the columns the history (history.py)
stores and the exports (export.py) write, defined once as (column, SQL type, getter) so the
two can never drift apart. A run is one cell; a sweep has many."""

from __future__ import annotations

import hashlib
import json

from .derive_cells import cell_figures, first_divergences
from .machine import LIBRARIES
from .results import Cell, MethodResult, RunResults


def model_key(r: RunResults) -> str:
    m = r.model or {}
    return f"{m.get('name') or m.get('spec')} ({m.get('content_hash') or 'no hash'})"


def workload(r: RunResults) -> str:
    """The work measured, in words: a run's prompt (its token ids hashed) and new tokens, or a
    sweep's axes. Two results compare only when this (and the model) is the same."""
    if r.sweep:
        return f"sweep of {r.sweep.get('prompt_text')}: " + ", ".join(
            f"{k} {v}" for k, v in (r.sweep.get("axes") or {}).items())
    ids = (r.model or {}).get("prompt_ids") or []
    return (f"prompt of {len(ids)} tokens (ids hash {_hash(','.join(map(str, ids)))}), "
            f"{(r.config or {}).get('new_tokens')} new tokens")


def configuration(r: RunResults) -> str:
    """What 'the last run of this configuration' matches: model, workload, threads, methods."""
    c = r.config or {}
    return _hash(json.dumps([model_key(r), workload(r), c.get("threads"), c.get("methods")]))


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _lib(name: str):
    return lambda r, cell, m, fig, where: (r.machine_of(cell).get("libraries") or {}).get(name)


def _q(key: str):
    return lambda r, cell, m, fig, where: getattr(m.quality, key) if m.quality else None


def _fig(key: str):
    return lambda r, cell, m, fig, where: fig.get(key)


def _machine(key: str):  # of the machine that measured the cell (a cluster's node's kind)
    return lambda r, cell, m, fig, where: r.machine_of(cell).get(key)


# (column, SQLite type, getter(results, cell, method result, its figures, samples' location))
COLUMNS = (
    ("created", "TEXT", lambda r, cell, m, fig, where: r.created),
    ("kind", "TEXT", lambda r, cell, m, fig, where: "sweep" if r.sweep else "run"),
    ("run_status", "TEXT", lambda r, cell, m, fig, where: r.status),
    ("model", "TEXT", lambda r, cell, m, fig, where: model_key(r)),
    ("configuration", "TEXT", lambda r, cell, m, fig, where: configuration(r)),
    ("method", "TEXT", lambda r, cell, m, fig, where: m.method),
    ("cell", "TEXT", lambda r, cell, m, fig, where: cell.key),
    ("test", "TEXT", lambda r, cell, m, fig, where: cell.test),
    ("n_prompt", "INTEGER", lambda r, cell, m, fig, where: cell.prompt_tokens),
    ("n_gen", "INTEGER", lambda r, cell, m, fig, where: cell.new_tokens),
    ("n_depth", "INTEGER", lambda r, cell, m, fig, where: cell.depth),
    ("n_threads", "INTEGER", lambda r, cell, m, fig, where: cell.threads),
    ("n_batch", "INTEGER", lambda r, cell, m, fig, where: cell.batch),
    ("status", "TEXT", lambda r, cell, m, fig, where: m.status),
    ("error", "TEXT", lambda r, cell, m, fig, where: m.error),
    ("runs", "INTEGER", lambda r, cell, m, fig, where: len(m.runs)),
    *((k, "REAL", _fig(k)) for k in ("ttft_ms", "ttft_ms_lo", "ttft_ms_hi", "tpot_ms", "tpot_ms_lo",
                                      "tpot_ms_hi", "e2e_ms", "pp_tps", "tg_tps", "tg_tps_total",
                                      "steady_rss_mb", "peak_rss_mb")),
    ("weight_mb", "REAL", lambda r, cell, m, fig, where: m.weight_bytes / 1e6 if m.weight_bytes else None),
    ("quality_verdict", "TEXT", _q("verdict")),
    ("ppl_increase", "REAL", _q("ppl_increase")),
    ("kl_mean", "REAL", _q("kl_mean")),
    ("top1", "REAL", _q("top1")),
    ("first_divergence", "INTEGER", _fig("first_divergence")),
    ("other_load", "REAL", lambda r, cell, m, fig, where: m.other_load(r.machine_of(cell).get("logical_cpus"))),
    ("cpu", "TEXT", _machine("cpu")),
    ("cpu_flags", "TEXT", lambda r, cell, m, fig, where: " ".join(r.machine_of(cell).get("cpu_flags") or [])),
    ("logical_cpus", "INTEGER", _machine("logical_cpus")),
    ("usable_cpus", "INTEGER", _machine("usable_cpus")),
    ("memory_bytes", "INTEGER", _machine("memory_bytes")),
    ("hostname", "TEXT", _machine("hostname")),
    ("os", "TEXT", _machine("os")),
    ("python", "TEXT", _machine("python")),
    ("inferlab_version", "TEXT", lambda r, cell, m, fig, where: r.inferlab_version),
    ("inferlab_commit", "TEXT", _machine("inferlab_commit")),
    *((lib.replace("-", "_"), "TEXT", _lib(lib)) for lib in LIBRARIES),
    ("samples", "TEXT", lambda r, cell, m, fig, where: where),
)
NAMES = tuple(name for name, _, _ in COLUMNS)


def located(results: RunResults) -> list[tuple[Cell, MethodResult, str]]:
    """Every (cell, method) with where its raw samples are in results.json (a JSON pointer)."""
    if results.sweep:
        return [(c.cell, m, f"/cells/{i}/methods/{j}/runs")
                for i, c in enumerate(results.cells) for j, m in enumerate(c.methods)]
    cell = results.run_cell()
    return [(cell, m, f"/methods/{j}/runs") for j, m in enumerate(results.methods)]


def records(results: RunResults, path: str) -> list[dict]:
    """One dict per method and cell (keys: NAMES); `path` is the results.json the samples are in."""
    asked = (results.config or {}).get("min_repeats", 0)
    divergences = first_divergences(results)
    out = []
    for cell, m, pointer in located(results):
        fig = cell_figures(m, cell, asked) if m.ok and m.runs else {}
        fig["first_divergence"] = divergences.get((cell.key, m.method))
        out.append({name: get(results, cell, m, fig, f"{path}#{pointer}") for name, _, get in COLUMNS})
    return out


def token_records(results: RunResults, path: str) -> list[dict]:
    """Per-token timings: one dict per method, cell, timed run and generated token (token 0 is
    the first, at TTFT; token i > 0 came itl_ms after token i - 1)."""
    out = []
    for cell, m, _ in located(results):
        for run_index, run in enumerate(m.runs):
            at = run.ttft_s
            base = {"method": m.method, "cell": cell.key, "run": run_index}
            out.append({**base, "token": 0, "itl_ms": None, "since_start_ms": at * 1e3})
            for i, gap in enumerate(run.itl_s, start=1):
                at += gap
                out.append({**base, "token": i, "itl_ms": gap * 1e3, "since_start_ms": at * 1e3})
    return out


TOKEN_COLUMNS = (("method", "TEXT"), ("cell", "TEXT"), ("run", "INTEGER"), ("token", "INTEGER"),
                 ("itl_ms", "REAL"), ("since_start_ms", "REAL"))
