"""`inferlab plan SCENARIO`: the original study's workflow as one command. The scenario's
workload becomes a sweep's cells (sweep.py measures them, quality once per method), the
requirements are judged against what was measured (verdict.py), and the verdict is written
beside results.json (report/verdict.py)."""

from __future__ import annotations

import copy
import os
import shutil
from typing import Callable

from . import defaults
from . import protocol as p
from .engines import default_methods, engine_path
from .fsutil import write_json_atomic
from .models import ModelRef, resolve
from .progress import SweepProgress
from .results import CellResult, MethodResult, RunResults
from .scenario import Scenario
from .sweep import SweepConfig, run_sweep
from .verdict import BASELINES, MET, Configuration, Verdict, judge
from .worker_handle import WorkerError, WorkerHandle


def plan_methods(scenario: Scenario, methods: list[str] | None, show) -> list[str]:
    """The methods to measure: --methods, the scenario's, or one per engine family; with the
    fp32 reference (quality needs it) and the original study's baseline before them. The
    baseline has no KV cache: it recomputes the whole sequence for every new token, so past
    defaults.PLAN_NOCACHE_MAX_TOKENS it is measured only when named."""
    asked = methods or scenario.methods or []
    out = list(asked or default_methods(resolve(scenario.model)))
    for base in reversed(BASELINES):
        if base not in out:
            out.insert(0, base)
    w = scenario.workload
    longest = max(w.depth) + max(w.prompt_tokens) + max(w.new_tokens)
    if longest > defaults.PLAN_NOCACHE_MAX_TOKENS and defaults.BASELINE_METHOD not in asked:
        out.remove(defaults.BASELINE_METHOD)
        show(f"{defaults.BASELINE_METHOD} (the original baseline) not measured: without a KV cache "
             f"each of a {longest}-token sequence's new tokens runs the whole sequence again; name "
             "it in --methods to measure it anyway")
    return out


def plan_config(scenario: Scenario, methods: list[str], output_dir: str, timeout_s: float,
                cluster: str | None = None, nodes: str | None = None) -> SweepConfig:
    w = scenario.workload
    b = scenario.budget
    return SweepConfig(model=scenario.model, methods=methods, text_file=scenario.text_file,
                       output_dir=output_dir, timeout_s=timeout_s, quality=True,
                       min_repeats=scenario.repeats, min_time_s=scenario.min_time_s,
                       max_repeats=max(scenario.max_repeats, scenario.repeats),
                       max_ppl_increase=b["max_ppl_increase"], max_kl_mean=b["max_kl_mean"],
                       min_top1=b["min_top1"], prompt_token_list=w.prompt_tokens,
                       new_token_list=w.new_tokens, depth_list=w.depth, thread_list=w.threads,
                       batch_list=w.batch, cluster=cluster, nodes=nodes)


def _worker(config: Configuration, model: ModelRef, folder: str, job: str) -> WorkerHandle:
    """A fresh worker for one configuration's method and threads, after every cell."""
    start = p.Start(method=config.method, engine=engine_path(config.method), model=model,
                    threads=config.threads)
    return WorkerHandle(start, os.path.join(folder, "logs", f"{config.method}-{job}.log"))


def how_to_run(winner: Configuration, model: ModelRef, folder: str, new_tokens: int,
               timeout_s: float) -> dict | None:
    """The winner's engine says, in its own process, how to run it outside inferlab; its files
    go into the plan's folder (winner/)."""
    worker = _worker(winner, model, folder, "usage")
    try:
        usage = worker.request(p.HowToRun(defaults.DEFAULT_PROMPT, new_tokens), timeout_s).usage
    except WorkerError as e:
        return {"error": e.message}
    finally:
        worker.close()
    return usage and export_winner(usage, os.path.join(folder, "winner"))


def export_winner(usage: dict, dest: str) -> dict:
    """A folder to copy, not a path into inferlab's cache: the winner's model files (hard links
    where the file system allows, else copies) in the results folder's winner/, and the lines
    rewritten to read them there."""
    os.makedirs(dest, exist_ok=True)
    out = dict(usage)
    for source in [usage["path"], *usage.get("also", [])]:
        target = os.path.join(dest, os.path.basename(source.rstrip(os.sep)))
        if os.path.isdir(source):
            shutil.copytree(source, target, copy_function=_link_or_copy, dirs_exist_ok=True)
        else:
            _link_or_copy(source, target)
        for key in ("path", "code", "shell"):
            out[key] = out.get(key, "").replace(source, target)
        out["also"] = [target if a == source else a for a in out.get("also", [])]
    return out


def _link_or_copy(source: str, target: str) -> str:
    if os.path.exists(target):
        os.remove(target)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def the_missing_cell(config: Configuration, results: RunResults) -> tuple[CellResult, MethodResult]:
    """The cell that decided a configuration's first unmet requirement (else its first cell)."""
    key = next((c.cell for c in config.checks if c.status != MET and c.cell), None)
    mine = (config.threads, config.batch, config.machine)
    cells = [(cell, cell.method(config.method)) for cell in results.cells
             if (cell.cell.threads, cell.cell.batch, cell.cell.machine) == mine]
    return next(((c, m) for c, m in cells if c.cell.key == key), cells[0])


def bottleneck(config: Configuration, results: RunResults, model: ModelRef, scenario: Scenario,
               folder: str, timeout_s: float) -> dict:
    """Why the nearest configuration misses: which phase its time goes to in the cell that
    decided, how far each phase is from its hardware floor (its derived row: roofline.cell_limits)
    and, where inferlab has a profiler for its engine, the profile's verdict and the
    next optimization to try. The profile runs in its own process, after every cell."""
    from .derive_cells import LIMIT_FIGURES
    from .results import ProfileResult
    from .profiling.roofline import verdict
    from .prompts import load_tokenizer
    from .runner import read_text
    from .workload import text_tokens

    cell, m = the_missing_cell(config, results)
    record = copy.deepcopy(m)
    known = results.method(config.method)
    if known is not None:
        record.weight_bytes, record.file_bytes, record.details = known.weight_bytes, known.file_bytes, known.details
    out: dict = {"method": config.method, "cell": cell.cell.key}
    rows = [r for r in results.derived.cells if r["key"] == cell.cell.key]
    mine = next((r for r in rows if r["method"] == config.method and r.get("e2e_ms")), None)
    if mine:
        out["prefill_share"] = mine["ttft_ms"] / mine["e2e_ms"]
    worker = _worker(config, model, folder, "profile")
    try:
        text = text_tokens(load_tokenizer(model.path), *read_text(scenario.text_file))
        prompt_ids = text.sequence(cell.cell)[1]
        trace = os.path.join(folder, f"trace_{config.method}.json")
        profiled = worker.request(p.Profile(prompt_ids, defaults.PROFILE_DECODE_STEPS, False, [], trace), timeout_s)
        record.profile = ProfileResult.from_dict(profiled.profile)
        if record.weight_bytes is None:
            i = profiled.info
            record.weight_bytes, record.file_bytes, record.details = i.weight_bytes, i.file_bytes, i.details
    except WorkerError as e:
        out["profile_error"] = e.message
    finally:
        worker.close()
    # the cell's own distance to the limits (derive_cells: its depth, prompt and batch, its
    # bandwidth readings, the probes of its kind of machine)
    roof = {k: mine.get(k) for k in LIMIT_FIGURES} if mine and mine.get("decode_efficiency") else {}
    out.update({k: roof.get(k) for k in ("decode_efficiency", "decode_floor_ms", "prefill_efficiency",
                                          "prefill_floor_ms", "bandwidth_gb_s", "compute_roof_gops",
                                          "compute_roof")})
    if record.profile:
        flags = results.machine_of(cell.cell).get("cpu_flags", [])
        out["verdict"], out["next"] = verdict(record, roof or None, None, flags)
    if (out.get("prefill_share") or 0) >= 0.5:  # the profile judges decode; here prefill leads
        out["next"] = prefill_advice(rows, config.method, out.get("prefill_efficiency"))
    return out


def prefill_advice(rows: list[dict], method: str, efficiency: float | None) -> str:
    """What to try when the prompt's prefill is most of the time: the fastest prefill measured
    in the same cell (its derived rows), and what makes one faster."""
    ttft = {r["method"]: r["ttft_ms"] for r in rows if r.get("ttft_ms") is not None}
    best = min(ttft, key=ttft.get) if ttft else None
    roof = f" at {efficiency:.0%} of the fp32 compute roof" if efficiency else ""
    faster = (f"; in this cell {best} prefills the prompt in {ttft[best]:.0f} ms against "
              f"{ttft[method]:.0f}" if best and best != method else "")
    return (f"the prompt's prefill is most of the time{roof}: a prefill that does more arithmetic "
            f"per cycle (int8 matrix products with VNNI or AMX, larger blocks of tokens per call), "
            f"a shorter prompt, or the shared part of prompts kept in a cache{faster}")


def run_plan(scenario: Scenario, config: SweepConfig, show,
             progress_factory: Callable[[int, int], SweepProgress]) -> tuple[RunResults, str, Verdict | None]:
    """Measure, then judge. The verdict is None when the sweep was interrupted (what was
    measured is saved; a verdict on part of the workload would mislead)."""
    results, folder = run_sweep(config, show, progress_factory)
    if results.status == "interrupted":
        return results, folder, None
    verdict = judge(scenario, results)
    model = resolve(config.model)  # the sweep resolved it: its file facts are cached
    if verdict.nearest:
        verdict.bottleneck = bottleneck(verdict.nearest, results, model, scenario, folder, config.timeout_s)
    if verdict.recommended:
        verdict.usage = how_to_run(verdict.recommended, model, folder,
                                   max(scenario.workload.new_tokens), config.timeout_s)
    write_json_atomic(os.path.join(folder, "verdict.json"), verdict.to_dict())
    return results, folder, verdict
