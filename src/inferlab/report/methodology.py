"""docs/methodology.md: the prose of docs/methodology.template.md with every figure read from a
results file kept beside it (docs/runs/ALIAS/results.json), so the document cannot go stale:
`inferlab report --methodology` writes it again, and a test fails when the committed document
differs from what its runs give.

A placeholder is {{ALIAS:FIGURE:ARGUMENT}}:
- e2e_ms, ttft_ms, tpot_ms: a method's median (`{{gpt2:e2e_ms:kv-cache}}`);
- speedup, speedup_ci: median E2E of one method over another's, and its 95 % interval
  (`{{gpt2:speedup:eager-nocache/kv-cache}}` reads "eager-nocache / kv-cache");
- kl, top1, verdict: a method's quality against the reference; weights_mb: its weight bytes;
- machine, date, model, new_tokens, prompt_tokens, threads (no argument): the run's own."""

from __future__ import annotations

import os
import re
import shutil
import statistics

from ..results import RunResults, load
from ..stats import ratio_of_medians

PLACEHOLDER = re.compile(r"\{\{([a-z0-9_-]+):([a-z0-9_]+)(?::([^}]+))?\}\}")
TEMPLATE, OUTPUT, RUNS = "methodology.template.md", "methodology.md", "runs"


class MethodologyError(ValueError):
    """A placeholder that names no run, figure or method, or a figure the run does not have."""


def _method(results: RunResults, name: str):
    m = results.method(name)
    if m is None or not m.ok:
        raise MethodologyError(f"{name} has no successful record in this run")
    return m


def _median_ms(results: RunResults, name: str, figure: str) -> float:
    return statistics.median(_method(results, name).samples(figure)) * 1e3


def figure(results: RunResults, name: str, arg: str | None) -> str:
    if name in ("e2e_ms", "ttft_ms", "tpot_ms"):
        return f"{_median_ms(results, arg, name[:-3] + '_s'):.1f} ms"
    if name in ("speedup", "speedup_ci"):
        slow, fast = arg.split("/")
        r = ratio_of_medians(_method(results, slow).samples("e2e_s"), _method(results, fast).samples("e2e_s"))
        return f"{r.value:.2f}x" if name == "speedup" else f"[{r.low:.2f}, {r.high:.2f}]"
    if name in ("kl", "top1", "verdict"):
        q = _method(results, arg).quality
        if name == "verdict":
            return str(q.verdict if q else None)
        value = getattr(q, "kl_mean" if name == "kl" else "top1") if q else None
        if value is None:
            raise MethodologyError(f"{arg} has no {name} in this run (quality off?)")
        return f"{value:.4f}" if name == "kl" else f"{value:.1%}"
    if name == "weights_mb":
        return f"{_method(results, arg).weight_bytes / 1e6:.0f} MB"
    mach = results.measuring_machine()
    own = {"machine": lambda: f"{mach.get('cpu')}, {mach.get('logical_cpus')} logical CPUs",
           "date": lambda: results.created[:10], "model": lambda: results.model.get("name"),
           "new_tokens": lambda: str(results.config.get("new_tokens")),
           "prompt_tokens": lambda: str(results.prompt_tokens),
           "threads": lambda: str(results.config.get("threads"))}
    if name in own:
        return own[name]()
    raise MethodologyError(f"unknown figure '{name}'")


def render(template: str, runs: dict[str, RunResults]) -> str:
    def replace(match):
        alias, name, arg = match.groups()
        if alias not in runs:
            raise MethodologyError(f"{match.group(0)}: no run '{alias}' (runs: {', '.join(sorted(runs))})")
        try:
            return figure(runs[alias], name, arg)
        except MethodologyError as e:
            raise MethodologyError(f"{match.group(0)}: {e}") from None
    return PLACEHOLDER.sub(replace, template)


def read_runs(docs: str) -> dict[str, RunResults]:
    folder = os.path.join(docs, RUNS)
    return {alias: load(os.path.join(folder, alias, "results.json")) for alias in sorted(os.listdir(folder))
            if os.path.isfile(os.path.join(folder, alias, "results.json"))}


def write(docs: str, new_runs: dict[str, str] | None = None) -> str:
    """Keep each new run's results.json as docs/runs/ALIAS, then write docs/methodology.md from
    the template and every kept run. Returns the document's path."""
    for alias, source in (new_runs or {}).items():
        path = source if source.endswith(".json") else os.path.join(source, "results.json")
        load(path)  # refuses a file that is not a results file, before anything is replaced
        os.makedirs(os.path.join(docs, RUNS, alias), exist_ok=True)
        shutil.copyfile(path, os.path.join(docs, RUNS, alias, "results.json"))
    with open(os.path.join(docs, TEMPLATE), encoding="utf-8") as f:
        text = render(f.read(), read_runs(docs))
    out = os.path.join(docs, OUTPUT)
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)
    return out
