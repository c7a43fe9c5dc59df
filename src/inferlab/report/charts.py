"""PNG charts from a RunResults (matplotlib, no display needed)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .. import defaults  # noqa: E402
from ..results import RunResults  # noqa: E402
from .tables import derived, figure  # noqa: E402


def _ok(results: RunResults):
    return [m for m in results.methods if m.ok and m.runs]


def e2e_chart(results: RunResults, path: str) -> None:
    methods = _ok(results)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, m in enumerate(methods):
        x = np.array(m.samples("e2e_s")) * 1e3
        f = figure(results, m.method, "e2e_s")
        med, lo, hi = f.median * 1e3, f.min * 1e3, f.max * 1e3
        ax.bar(i, med, color="#4c78a8", alpha=0.8)
        ax.errorbar(i, med, yerr=[[med - lo], [hi - med]], color="black", capsize=6)
        ax.scatter(np.full(x.size, i) + np.linspace(-0.2, 0.2, x.size), x, s=8, color="#e45756", zorder=3)
    ax.set_xticks(range(len(methods)), [m.method for m in methods], rotation=20, ha="right")
    # a log axis: the no-cache baseline is often 10-50x the others, which would be slivers
    ax.set_yscale("log")
    ax.set_ylabel(f"E2E latency, ms, log scale ({results.config['new_tokens']} new tokens)")
    ax.set_title("End-to-end latency per method: median bar, min-max whisker, runs as dots")
    _save(fig, path)


def itl_chart(results: RunResults, path: str) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for m in _ok(results):
        per_pos = derived(results, m.method).itl_by_position_ms
        if per_pos:
            ax.plot(np.arange(1, len(per_pos) + 1), per_pos, label=m.method, lw=1.5)
    ax.set_xlabel("decode step (new token index)")
    ax.set_ylabel("inter-token latency, ms (median over runs)")
    ax.set_title(f"ITL per decode position (prompt {results.prompt_tokens} tokens)")
    ax.set_ylim(bottom=0)
    ax.legend()
    _save(fig, path)


def size_chart(results: RunResults, path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for m in _ok(results):
        if m.weight_bytes is None:
            continue
        tps = figure(results, m.method, "decode_tps").median
        ax.scatter(m.weight_bytes / 1e6, tps, s=60)
        ax.annotate(m.method, (m.weight_bytes / 1e6, tps), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("weight bytes held, MB")
    ax.set_ylabel("decode tokens/s (median)")
    ax.set_title("Decode speed against weight size")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    _save(fig, path)


def quality_chart(results: RunResults, path: str) -> bool:
    """Speedup against the reference vs KL: one point per method, the KL budget as a line."""
    points = []
    for m in _ok(results):
        q = m.quality
        sp = derived(results, m.method).speedups.get(f"speedup_e2e_vs_{defaults.REFERENCE_METHOD}")
        value = 1.0 if m.method == defaults.REFERENCE_METHOD else (sp.value if sp else None)
        if q is None or q.kl_mean is None or value is None:
            continue
        points.append((m.method, q.kl_mean, value, q.verdict))
    if not points:
        return False
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for name, kl, sp, verdict in points:
        color = "#54a24b" if verdict == "PASS" else "#e45756"
        ax.scatter(max(kl, 1e-8), sp, s=70, color=color, zorder=3)
        ax.annotate(f"{name} ({verdict})", (max(kl, 1e-8), sp), textcoords="offset points",
                    xytext=(6, 4))
    budget = (results.quality_setup or {}).get("budget", {}).get("max_kl_mean")
    if budget:
        ax.axvline(budget, color="gray", ls="--", label=f"KL budget {budget} nats")
        ax.legend(loc="lower right")
    ax.set_xscale("log")
    ax.axhline(1.0, color="black", lw=0.5)
    ax.set_xlabel("mean KL(reference || method), nats per position (log; 1e-8 = identical)")
    ax.set_ylabel(f"E2E speedup vs {defaults.REFERENCE_METHOD}")
    ax.set_title("Speed against quality loss (green: passes the budget)")
    _save(fig, path)
    return True


def _save(fig, path: str) -> None:
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


CHARTS = {"e2e_latency.png": e2e_chart, "itl_by_position.png": itl_chart,
          "speed_vs_size.png": size_chart}


def draw_all(results: RunResults, folder: str) -> list[str]:
    written = []
    if not _ok(results):
        return written
    for name, draw in CHARTS.items():
        draw(results, os.path.join(folder, name))
        written.append(name)
    if quality_chart(results, os.path.join(folder, "speed_vs_quality.png")):
        written.append("speed_vs_quality.png")
    return written
