"""Runs every method of a configuration, each in its own process with a timeout, and saves
results.json after each one, so that an interrupted or crashing run loses nothing measured."""

from __future__ import annotations

import collections
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass

from . import __version__, defaults, machine
from .analysis import first_divergence
from .config import RunConfig
from .engines import engine_class, engine_path, has_prepare
from .models import ModelRef, parameter_count, resolve
from .prompts import encode_prompt, load_tokenizer
from .results import MethodResult, RunResults, save
from .worker import PROGRESS


class Display:
    """Progress lines on stderr: which method, which phase, which repeat."""

    def __init__(self, stream=sys.stderr, quiet: bool = False):
        self.stream, self.quiet = stream, quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)


def new_results_folder(base: str, model_name: str) -> str:
    """A new folder per run; an existing one is never reused or overwritten."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", model_name).strip("-") or "model"
    os.makedirs(base, exist_ok=True)
    for i in range(1, 1000):
        path = os.path.join(base, f"{stamp}-{slug}" + (f"-{i}" if i > 1 else ""))
        try:
            os.makedirs(path)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a new results folder under {base}")


def tokenize_prompt(model: ModelRef, prompt: str, chat_template: bool) -> tuple[list[int], bool]:
    return encode_prompt(load_tokenizer(model.path), prompt, chat_template)


def decode_text(model: ModelRef, tokens: list[int]) -> str:
    try:
        return load_tokenizer(model.path).decode(tokens, skip_special_tokens=False)
    except Exception:  # noqa: BLE001 - e.g. gpt2-random ids outside the borrowed vocabulary
        return ""


class WorkerOutcome:
    def __init__(self, status: str, data: dict, error: str | None):
        self.status, self.data, self.error = status, data, error


def run_worker(job: dict, workdir: str, log_path: str, timeout_s: float, show) -> WorkerOutcome:
    """Start `python -m inferlab.worker` for one job; kill it on timeout or interrupt."""
    tag = f"{job['method']}-{job['phase']}"
    job_path = os.path.join(workdir, f"{tag}.job.json")
    out_path = os.path.join(workdir, f"{tag}.out.json")
    with open(job_path, "w") as f:
        json.dump(job, f)
    tail: collections.deque[str] = collections.deque(maxlen=30)
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "inferlab.worker", job_path, out_path],
            stdout=log,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C reaches the parent only; it then stops the child
        )

        def pump():
            for line in proc.stderr:
                log.write(line)
                log.flush()
                if line.startswith(PROGRESS):
                    show(line[len(PROGRESS):].strip())
                elif line.strip():
                    tail.append(line.rstrip())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            reader.join(5)
            return WorkerOutcome("timeout", {}, f"no result after {timeout_s:.0f} s (timeout); killed")
        except BaseException:  # KeyboardInterrupt: stop the child, then let the caller save
            _kill(proc)
            raise
        reader.join(5)
    data = {}
    if os.path.exists(out_path):
        with open(out_path) as f:
            data = json.load(f)
    if data.get("status") == "failed":
        return WorkerOutcome("failed", data, data.get("error"))
    if proc.returncode != 0 or not data:
        if proc.returncode and proc.returncode < 0:
            why = f"process killed by {signal.Signals(-proc.returncode).name}"
        else:
            why = f"process exited with code {proc.returncode}"
        last = tail[-1] if tail else "no output"
        return WorkerOutcome("failed", data, f"{why}; last output: {last[:300]}")
    return WorkerOutcome("ok", data, None)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


@dataclass
class RunContext:
    """What every method of one run shares."""

    model: ModelRef
    prompt_ids: list[int]
    config: RunConfig
    workdir: str
    logdir: str
    show: Display
    quality_plan: dict | None = None
    tracedir: str = ""


def _job(phase: str, method: str, ctx: RunContext, timed_runs, with_quality: bool) -> dict:
    return {
        "phase": phase,
        "method": method,
        "engine": engine_path(method),
        "model": ctx.model.to_dict(),
        "prompt_ids": ctx.prompt_ids,
        "threads": ctx.config.threads,
        "config": ctx.config.to_dict(),
        "timed_runs": timed_runs,  # "full" | "once" | None
        "quality_plan": ctx.quality_plan if with_quality else None,
        "is_reference": method == defaults.REFERENCE_METHOD,
    }


def run_method(method: str, ctx: RunContext, timed_runs, with_quality: bool,
               with_profile: bool = False) -> MethodResult:
    """Prepare (own process, if the method has a conversion step), then measure."""
    result = MethodResult(method=method, status="running")
    result.summary = engine_class(method).summary
    log_path = os.path.join(ctx.logdir, f"{method}.log")
    show = lambda msg: ctx.show(f"{method}: {msg}")  # noqa: E731
    timeout = ctx.config.timeout_s
    if has_prepare(method):
        out = run_worker(_job("prepare", method, ctx, None, False), ctx.workdir, log_path,
                         timeout, show)
        if out.status != "ok":
            result.status, result.error = out.status, f"prepare: {out.error}"
            return result
        result.prepare_s = out.data["prepare_s"]
        result.prepare_cache_hit = out.data["prepare_cache_hit"]
    if timed_runs or with_quality:
        out = run_worker(_job("measure", method, ctx, timed_runs, with_quality), ctx.workdir,
                         log_path, timeout, show)
        if out.status != "ok":
            result.status, result.error = out.status, out.error
            return result
        data = dict(out.data)
    else:
        data = {}
    if with_profile:
        job = _job("profile", method, ctx, None, False)
        job["profile"] = {
            "steps": ctx.config.profile_steps, "detail": ctx.config.profile_detail,
            "sweep": ctx.config.sweep_lengths, "sweep_methods": list(defaults.SWEEP_METHODS),
            "trace_path": os.path.join(ctx.tracedir, f"trace_{method}.json"),
        }
        prof = run_worker(job, ctx.workdir, log_path, timeout, show)
        if prof.status == "ok":
            for key in ("weight_bytes", "file_bytes", "parameters", "details", "threads"):
                data.setdefault(key, prof.data.get(key))
            data["profile"] = prof.data["profile"]
        elif not data:  # profiling was the only job: the method failed
            result.status, result.error = prof.status, f"profile: {prof.error}"
            return result
        else:
            data["profile_error"] = prof.error
    data.pop("prepare_s", None)
    data.pop("prepare_cache_hit", None)
    merged = MethodResult.from_dict({**data, "method": method, "status": "ok"})
    merged.summary, merged.prepare_s = result.summary, result.prepare_s
    merged.prepare_cache_hit = result.prepare_cache_hit
    merged.text = decode_text(ctx.model, merged.tokens) if merged.tokens else ""
    return merged


def quality_plan(model: ModelRef, config: RunConfig, workdir: str) -> dict:
    from . import quality

    if config.text_file:
        try:
            with open(config.text_file, encoding="utf-8") as f:
                text, source = f.read(), config.text_file
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read --text-file {config.text_file}: {e}") from None
    else:
        text, source = quality.default_text()
    return quality.make_plan(load_tokenizer(model.path), text, source, model.quality_meaningful, workdir,
                             config.chat_template)


def run(config: RunConfig, show=None) -> tuple[RunResults, str]:
    """Benchmark every method of `config`. Returns the results and their folder.

    On KeyboardInterrupt the running method is stopped, the results so far are saved and
    returned with status 'interrupted'."""
    show = show or Display()
    config.validate()
    show(f"resolving model {config.model}")
    model = resolve(config.model)
    prompt_ids, templated = tokenize_prompt(model, config.prompt, config.chat_template)
    folder = new_results_folder(config.output_dir, model.name)
    workdir = os.path.join(folder, ".work")
    logdir = os.path.join(folder, "logs")
    os.makedirs(workdir)
    os.makedirs(logdir)
    try:
        plan = quality_plan(model, config, workdir) if config.quality else None
    except ValueError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    ctx = RunContext(model, prompt_ids, config, workdir, logdir, show, plan,
                     os.path.join(folder, "traces"))
    if config.profile:
        os.makedirs(ctx.tracedir)
    results = RunResults(
        config=config.to_dict(),
        machine=machine.describe(),
        model={**model.to_dict(), "prompt_ids": prompt_ids, "chat_template_applied": templated,
               "parameters": parameter_count(model.path)},
        prompt_tokens=len(prompt_ids),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        inferlab_version=__version__,
    )
    if plan:
        results.quality_setup = {k: plan[k] for k in ("context", "text_source", "greedy_new_tokens",
                                                       "budget", "reference")}
        results.quality_setup.update(windows=len(plan["windows"]),
                                     greedy_prompts=len(plan["greedy_prompts"]))
    if config.profile:
        from .profiling import hardware

        show("hardware limits: streaming bandwidth and GEMM peak"
             + (" (re-measuring)" if config.remeasure_hardware else " (cached per machine)"))
        results.hardware = hardware.limits(config.threads, config.remeasure_hardware)
    path = os.path.join(folder, "results.json")
    timed = "full" if config.speed else None
    # the reference first: every other method is compared with its tokens and distributions
    order = sorted(config.methods, key=lambda m: m != defaults.REFERENCE_METHOD)
    try:
        save(results, path)
        if defaults.REFERENCE_METHOD not in order and (config.speed or plan):
            show(f"reference ({defaults.REFERENCE_METHOD}): tokens and distributions to compare with")
            ref = run_method(defaults.REFERENCE_METHOD, ctx, "once" if config.speed else None,
                             plan is not None)
            results.reference_tokens = ref.tokens if ref.ok else None
            if not ref.ok:
                ctx.quality_plan = None
                show(f"  reference failed ({ref.error}): no comparisons in this run")
        for i, method in enumerate(order, 1):
            show(f"[{i}/{len(order)}] {method}")
            # saved as 'interrupted' until it finishes: a killed run shows where it stopped
            results.methods.append(MethodResult(method=method, status="interrupted"))
            save(results, path)
            result = run_method(method, ctx, timed, ctx.quality_plan is not None, config.profile)
            results.methods[-1] = result
            if method == defaults.REFERENCE_METHOD:
                results.reference_tokens = result.tokens if result.ok else None
                if not result.ok:
                    ctx.quality_plan = None  # nothing to compare with
            _score_agreement(results)
            save(results, path)
            show(f"  {method}: {result.status}" + (f" ({result.error})" if result.error else ""))
        results.status = "complete"
    except KeyboardInterrupt:
        results.status = "interrupted"
        _score_agreement(results)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    save(results, path)
    return results, folder


def _score_agreement(results: RunResults) -> None:
    ref = results.reference_tokens
    for m in results.methods:
        if m.ok and ref:
            m.first_divergence = first_divergence(m.tokens, ref)
