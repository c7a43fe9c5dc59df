"""Runs every method of a configuration, each in its own worker process, and saves
results.json after every step, so that an interrupted or crashing run loses nothing measured.

Protocols (METRICS.md "Protocols"):
- interleaved (default for several methods): every method's worker loads and stays loaded;
  the runner asks each in turn for one timed generation (A B C, B C A, C A B ...), so that the
  machine's drift spreads over all methods instead of favouring whichever ran first;
- sequential: one method at a time, all its runs, then the next.
Memory stays honest in both: every method is its own process, with its own counters."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import __version__, defaults, history, machine, reference_tokens
from . import protocol as p
from .checks import check_lengths, check_output_location
from .config import RunConfig
from .engines import default_methods, engine_class, engine_path, has_prepare
from .models import (ModelRef, architecture, gguf_file_type, gguf_source_path, parameter_count,
                     resolve)
from .probe import ProbeProcess
from .procstat import wait_until_idle
from .prompts import decode_text, load_tokenizer, tokenize_prompt
from .results import MethodResult, ProfileResult, QualityResult, RunResults, save
from .worker_handle import WorkerError, WorkerHandle


class Transient(str):
    """A progress message that the next one replaces (which warm-up or timed run is going on):
    a run's hundred of them make one live line on a terminal, and none in a log."""


class Display:
    """Progress lines on stderr: which method, which phase; the current repeat as one line
    rewritten in place on a terminal."""

    def __init__(self, stream=sys.stderr, quiet: bool = False):
        self.stream, self.quiet = stream, quiet
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self.pending = False  # a transient line is on the screen

    def __call__(self, message: str) -> None:
        if self.quiet or (isinstance(message, Transient) and not self.live):
            return
        if self.pending:
            self.stream.write("\r\x1b[K")  # carriage return, erase the line
            self.pending = False
        if isinstance(message, Transient):
            self.stream.write(message[:shutil.get_terminal_size().columns - 1])
            self.stream.flush()
            self.pending = True
        else:
            print(message, file=self.stream, flush=True)

    def finish(self) -> None:
        """Erase a transient line still on the screen (before the tables go to stdout)."""
        if self.pending:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.pending = False


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


def needs_more_runs(result: MethodResult, config: RunConfig) -> bool:
    """Repeat until both the minimum count and the minimum timed seconds are reached, up to the
    cap (METRICS.md "Statistics")."""
    n = len(result.runs)
    timed = sum(r.e2e_s for r in result.runs)
    return n < config.max_repeats and (n < config.min_repeats or timed < config.min_time_s)


# the worker that answered the last generation in this process (a run or a sweep asks one at
# a time): the next timed generation of another waits until it has gone quiet
_last_answered: WorkerHandle | None = None


def settle() -> None:
    """Wait until the worker that answered the last generation has gone quiet (no CPU time for
    defaults.SETTLE_WINDOW_S, at most SETTLE_MAX_S); then nothing is left to wait for (a
    sweep's bandwidth reading settles before the timed run that follows it)."""
    global _last_answered
    if _last_answered is not None:
        wait_until_idle(_last_answered.pid, defaults.SETTLE_WINDOW_S, defaults.SETTLE_MAX_S)
        _last_answered = None


def request_generation(worker: WorkerHandle, request: p.Generate,
                       timeout_s: float) -> tuple[p.Generated, tuple[float, float] | None]:
    """Ask a worker for one generation. Returns its reply and the (CPU, steal) seconds that
    other processes and the hypervisor took during the generation (None without /proc/stat):
    the worker reads the machine's counters around the generation itself, so that its untimed
    work before it (a depth's fill) is not counted as another's. A timed generation first waits
    until the method that answered before it has gone quiet (defaults.SETTLE_*): its thread
    pools' spinning would otherwise be this one's competing load. Raises WorkerError."""
    global _last_answered
    if request.timed and _last_answered is not worker:
        settle()
    _last_answered = None  # a failed request leaves nothing to wait for
    out = worker.request(request, timeout_s)
    _last_answered = worker
    if not out.machine_s:
        return out, None
    busy, steal = out.machine_s
    return out, (busy - out.cpu_s, steal)


def record_generation(r: MethodResult, out: p.Generated, timed: bool,
                      others: tuple[float, float] | None) -> None:
    """Keep what one generation measured in the method's record: a timed one's clocks,
    counters, competing load and whether its tokens matched the first call's (in a sweep's
    cell: the first timed run's)."""
    r.peak_rss_bytes = out.peak_rss_bytes
    if not timed:
        return
    r.runs.append(out.sample)
    if out.counters:
        r.engine_counters.append(out.counters)
    if others is not None:
        r.other_cpu_s = (r.other_cpu_s or 0.0) + others[0]
        r.steal_s = (r.steal_s or 0.0) + others[1]
    r.timed_wall_s = (r.timed_wall_s or 0.0) + out.sample.e2e_s
    if not r.tokens:  # a sweep's cell: its first call generated fewer tokens than a run
        r.tokens = out.tokens
    elif out.tokens != r.tokens:
        r.deterministic = False


def rotating_rounds(items: list, wants_more: Callable[[Any], bool], one_run: Callable[[Any], None],
                    after_round: Callable[[], None] = lambda: None) -> None:
    """The interleaved protocol: round after round, one timed generation of each item that
    still wants runs, the order shifted by one each round (A B C, B C A, C A B ...) so that no
    method always follows the same neighbour (whose caches and clocks it would inherit)."""
    for rnd in itertools.count():
        todo = [x for x in items if wants_more(x)]
        if not todo:
            return
        shift = rnd % len(todo)
        for x in todo[shift:] + todo[:shift]:
            one_run(x)
        after_round()


@dataclass
class MethodRun:
    """One method's worker and the result it fills in."""

    result: MethodResult
    listed: bool = True  # False: the reference, run only to compare with, not in the results
    worker: WorkerHandle | None = None

    @property
    def method(self) -> str:
        return self.result.method

    @property
    def live(self) -> bool:
        return self.worker is not None and self.result.status == "running"

    @property
    def is_reference(self) -> bool:
        return not self.listed or self.method == defaults.REFERENCE_METHOD


class Session:
    """One run's workers, results and file."""

    def __init__(self, config: RunConfig, model: ModelRef, prompt_ids: list[int],
                 results: RunResults, folder: str, show: Display, prober: ProbeProcess | None):
        self.config, self.model, self.prompt_ids = config, model, prompt_ids
        self.results, self.show, self.prober = results, show, prober
        self.in_phase: str | None = None
        self.path = os.path.join(folder, "results.json")
        self.workdir = os.path.join(folder, ".work")
        self.logdir = os.path.join(folder, "logs")
        self.tracedir = os.path.join(folder, "traces")
        os.makedirs(self.workdir)
        os.makedirs(self.logdir)
        self.plan: dict | None = None
        self.open: list[WorkerHandle] = []

    @contextlib.contextmanager
    def phase(self, name: str):
        """Charge the wall time inside to `name` in results.timings (RUN_PHASES); a phase
        inside another (the reference's loading) counts for the outer one only."""
        if self.in_phase is not None:
            yield
            return
        self.in_phase, t0 = name, time.perf_counter()
        try:
            yield
        finally:
            timings = self.results.timings
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
            self.in_phase = None

    # --- workers --------------------------------------------------------------------------
    def _start(self, method: str) -> WorkerHandle:
        start = p.Start(method=method, engine=engine_path(method), model=self.model,
                        threads=self.config.threads)
        worker = WorkerHandle(start, os.path.join(self.logdir, f"{method}.log"),
                              lambda msg: self.show(f"{method}: {msg}"))
        self.open.append(worker)
        return worker

    def _stop(self, worker: WorkerHandle) -> None:
        worker.close()
        if worker in self.open:
            self.open.remove(worker)

    def close_all(self) -> None:
        for worker in list(self.open):
            worker.kill()
        self.open.clear()

    def save(self) -> None:
        save(self.results, self.path)

    def _fail(self, run: MethodRun, phase: str, e: WorkerError) -> None:
        run.result.status = e.status
        run.result.error = e.message if e.status == "skipped" else f"{phase}: {e.message}"
        if run.worker is not None:
            self._stop(run.worker)
            run.worker = None
        self.show(f"  {run.method}: {e.status} ({phase}: {e.message})")
        if run.is_reference and self.plan is not None:
            self.show("  the reference failed: no quality comparisons in this run")
            self.plan = None

    # --- steps ----------------------------------------------------------------------------
    def prepare(self, run: MethodRun) -> None:
        """The one-time conversion, in a process of its own: its memory never counts."""
        if not has_prepare(run.method):
            return
        worker = self._start(run.method)
        try:
            with self.phase("prepare"):
                out = worker.request(p.Prepare(), self.config.timeout_s)
            run.result.prepare_s, run.result.prepare_cache_hit = out.seconds, out.cache_hit
        except WorkerError as e:
            self._fail(run, "prepare", e)
        finally:
            self._stop(worker)

    def load(self, run: MethodRun) -> None:
        run.worker = self._start(run.method)
        try:
            with self.phase("load"):
                out = run.worker.request(p.Load(), self.config.timeout_s)
        except WorkerError as e:
            return self._fail(run, "load", e)
        r = run.result
        r.load_s = out.load_s
        r.weight_bytes, r.file_bytes = out.info.weight_bytes, out.info.file_bytes
        r.parameters, r.details, r.threads = out.info.parameters, out.info.details, self.config.threads

    def generate(self, run: MethodRun, timed: bool) -> p.Generated | None:
        """One generation; a timed one is charged with the CPU time other processes took."""
        request = p.Generate([self.prompt_ids], self.config.new_tokens, timed)
        try:
            with self.phase("timed" if timed else "warmup"):
                out, others = request_generation(run.worker, request, self.config.timeout_s)
        except WorkerError as e:
            self._fail(run, "timed run" if timed else "first call", e)
            return None
        record_generation(run.result, out, timed, others)
        return out

    def warm(self, run: MethodRun) -> None:
        self.show(f"{run.method}: first call")
        out = self.generate(run, timed=False)
        if out is None:
            return
        r = run.result
        r.first_call_s, r.tokens, r.deterministic = out.sample.e2e_s, out.tokens, True
        r.text = decode_text(self.model.path, out.tokens)
        for i in range(1, self.config.warmup):  # the first call counts as the first warmup run
            self.show(Transient(f"{run.method}: warmup {i + 1}/{self.config.warmup}"))
            out = self.generate(run, timed=False)
            if out is None:
                return
        r.warmup_runs = max(self.config.warmup, 1)
        r.steady_rss_bytes = out.rss_bytes  # weights a framework maps lazily are in by now
        if run.is_reference:
            self.results.reference_tokens = r.tokens
            reference_tokens.store(self.model.content_hash, self.prompt_ids, self.config.new_tokens,
                                   self.config.threads, r.tokens)

    def timed_rounds(self, runs: list[MethodRun]) -> None:
        """Round after round, one timed generation of each method that still needs runs."""
        def one(run: MethodRun) -> None:
            self.show(Transient(f"{run.method}: timed run {len(run.result.runs) + 1} (min "
                                f"{self.config.min_repeats} runs, {self.config.min_time_s:g} s)"))
            self.generate(run, timed=True)

        def after_round() -> None:
            self.save()

        rotating_rounds(runs, lambda r: r.listed and r.live and needs_more_runs(r.result, self.config),
                        one, after_round)

    def evaluate(self, run: MethodRun) -> None:
        """The quality pass. Its failure leaves the speed figures and says what failed."""
        if self.plan is None or not run.live:
            return
        try:
            with self.phase("quality"):
                out = run.worker.request(p.Evaluate(self.plan, run.is_reference), self.config.timeout_s)
            run.result.quality = out.quality
        except WorkerError as e:
            run.result.quality = QualityResult(verdict="error", reasons=[f"quality pass {e.status}: {e.message}"])
            if run.worker.proc.poll() is not None:  # killed or crashed: nothing more to ask
                self._stop(run.worker)
                run.worker = None
            if run.is_reference:
                self.show("  reference quality pass failed: no quality comparisons in this run")
                self.plan = None

    def finish(self, run: MethodRun) -> None:
        if run.worker is not None:
            self._stop(run.worker)
            run.worker = None
        if run.result.status == "running":
            run.result.status = "ok"
        if run.listed:
            self.show(f"  {run.method}: {run.result.status}"
                      + (f" ({run.result.error})" if run.result.error else ""))

    def measure(self, runs: list[MethodRun]) -> None:
        """Load, warm, time and evaluate a group of methods: all together when interleaved,
        one group per method when sequential."""
        for run in runs:
            if run.result.status == "running":
                self.load(run)
        if self.config.speed or self.plan:
            for run in runs:
                if run.live:
                    self.warm(run)
                    self.save()
        if self.config.speed:
            self.timed_rounds(runs)
        for run in runs:  # reference first: the others are compared with its distributions
            self.evaluate(run)
            self.save()
        for run in runs:
            self.finish(run)
        self.save()

    def profile(self, run: MethodRun) -> None:
        """Its own process, never timed together with the benchmark."""
        r = run.result
        if r.status not in ("running", "ok"):
            return
        worker = self._start(run.method)
        opts = self.config
        sweep = list(opts.sweep_lengths) if run.method in defaults.SWEEP_METHODS else []
        request = p.Profile(self.prompt_ids, opts.profile_steps, opts.profile_detail, sweep,
                            os.path.join(self.tracedir, f"trace_{run.method}.json"))
        try:
            with self.phase("profile"):
                out = worker.request(request, opts.timeout_s)
            r.profile = ProfileResult.from_dict(out.profile)
            if r.weight_bytes is None:
                r.weight_bytes, r.file_bytes = out.info.weight_bytes, out.info.file_bytes
                r.parameters, r.details = out.info.parameters, out.info.details
                r.threads = opts.threads
            if r.status == "running":
                r.status = "ok"
        except WorkerError as e:
            if r.status == "running":  # profiling was the only job: the method failed
                r.status, r.error = e.status, f"profile: {e.message}"
            else:
                r.profile_error = e.message
        finally:
            self._stop(worker)

    def probe(self, when: str) -> None:
        """Bandwidth and GEMM peak, measured now in the probe's process while every worker
        waits: the machine's speed drifts, so the run probes before and after its measurements."""
        self.show(f"hardware limits: streaming bandwidth and GEMM peak ({when})")
        with self.phase("probes"):
            data = self.prober.measure()
        self.results.probes.append({**data, "when": when})
        self.save()

def read_text(text_file: str | None) -> tuple[str, str]:
    """(text, source) of --text-file, or CPython's pydoc_data.topics without one. Raises
    ValueError with one line when the file cannot be read."""
    from . import quality

    if not text_file:
        return quality.default_text()
    try:
        with open(text_file, encoding="utf-8") as f:
            return f.read(), text_file
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read --text-file {text_file}: {e}") from None


def quality_plan(model: ModelRef, config: RunConfig, workdir: str) -> dict:
    from . import quality

    text, source = read_text(config.text_file)
    return quality.make_plan(load_tokenizer(model.path), text, source, model.quality_meaningful,
                             workdir, config.chat_template, config.budget())


def quality_setup(plan: dict) -> dict:
    """What the report says about how quality was judged (results.quality_setup)."""
    setup = {k: plan[k] for k in ("context", "prefix", "text_source", "greedy_new_tokens", "budget",
                                  "reference")}
    return {**setup, "windows": len(plan["windows"]), "greedy_prompts": len(plan["greedy_prompts"])}


def run(config: RunConfig, show=None) -> tuple[RunResults, str]:
    """Benchmark every method of `config`. Returns the results and their folder.

    On KeyboardInterrupt the running methods are stopped, the results so far are saved and
    returned with status 'interrupted'."""
    show = show or Display()
    config.validate()
    check_output_location(config.output_dir)
    t0 = time.perf_counter()
    # started first: it imports torch while the model is resolved
    prober = (ProbeProcess(config.threads, defaults.PROBE_BYTES, config.timeout_s)
              if config.speed or config.profile else None)
    try:
        results, folder = _run(config, show, prober, t0)
    finally:
        if prober is not None:
            prober.close()
    history.record(results, folder)  # every run, from the CLI or the API
    return results, folder


def _run(config: RunConfig, show, prober: ProbeProcess | None, t0: float) -> tuple[RunResults, str]:
    show(f"resolving model {config.model}")
    model = resolve(config.model)
    if config.methods == list(defaults.DEFAULT_METHODS):  # the default list, fitted to the model
        config.methods = default_methods(model)
    prompt_ids, templated = tokenize_prompt(model.path, config.prompt, config.chat_template)
    check_lengths(model, len(prompt_ids), config)
    folder = new_results_folder(config.output_dir, model.name)
    results = RunResults(
        config=config.to_dict(),
        machine=machine.describe(),
        model={**model.to_dict(), "prompt_ids": prompt_ids, "chat_template_applied": templated,
               "parameters": parameter_count(model.path), "architecture": architecture(model.path),
               "gguf_type": gguf_file_type(src) if (src := gguf_source_path(model)) else None},
        prompt_tokens=len(prompt_ids),
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        inferlab_version=__version__,
    )
    session = Session(config, model, prompt_ids, results, folder, show, prober)
    try:
        session.plan = quality_plan(model, config, session.workdir) if config.quality else None
    except ValueError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    results.timings["resolve"] = time.perf_counter() - t0  # with the prompt and the quality plan
    if session.plan:
        results.quality_setup = quality_setup(session.plan)
    if config.profile:
        os.makedirs(session.tracedir)
    # the reference first: every other method is compared with its tokens and distributions
    order = sorted(config.methods, key=lambda m: m != defaults.REFERENCE_METHOD)
    runs = []
    for method in order:
        result = MethodResult(method=method, status="running", summary=engine_class(method).summary)
        results.methods.append(result)
        runs.append(MethodRun(result))
    reference = []
    if defaults.REFERENCE_METHOD not in order and (config.speed or session.plan):
        # without the quality pass only its tokens are wanted, and they may be in the cache
        cached = None if session.plan else reference_tokens.load(
            model.content_hash, prompt_ids, config.new_tokens, config.threads)
        if cached:
            results.reference_tokens = cached
        else:
            reference = [MethodRun(MethodResult(method=defaults.REFERENCE_METHOD, status="running"),
                                   listed=False)]
    try:
        session.save()
        for run_ in reference + runs:
            session.prepare(run_)
        session.save()
        if config.speed or config.profile:
            session.probe("before the measurements")
        if config.speed or session.plan:
            if reference:
                show(f"reference ({defaults.REFERENCE_METHOD}): tokens and distributions to compare with")
                with session.phase("reference"):
                    session.measure(reference)  # a failure turns the comparisons off (Session._fail)
            if config.protocol == "interleaved":
                session.measure(runs)
            else:
                for run_ in runs:
                    session.measure([run_])
        if config.profile:
            for run_ in runs:
                show(f"{run_.method}: profiling")
                session.profile(run_)
                session.save()
        if config.speed or config.profile:
            session.probe("after the measurements")
        for run_ in runs:
            session.finish(run_)
        results.status = "complete"
    except KeyboardInterrupt:
        results.status = "interrupted"
        for m in results.methods:
            if m.status == "running":
                m.status = "interrupted"
    finally:
        session.close_all()
        shutil.rmtree(session.workdir, ignore_errors=True)
    results.timings["total"] = time.perf_counter() - t0
    session.save()
    return results, folder
