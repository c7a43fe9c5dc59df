"""`inferlab sweep`: every combination of prompt length, new tokens, context depth, threads and
batch, for every method, measured with the run's protocol and stored as cells.

This is the driver: it checks the configuration, resolves the model, prepares each method,
hands the cells still to measure to an executor (cells.py: how one cell is measured, on any
host) and saves each result as it arrives (results.json, cells.csv), then judges quality once
per method and writes the reports."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Callable

from . import __version__, cluster, defaults, history, machine
from . import protocol as p
from .cells import CellSpec, LoadInfo, LocalExecutor, WorkerPool
from .checks import check_output_location, context_window
from .config import RunConfig
from .engines import default_methods, engine_class, engine_path, has_prepare
from .models import ModelRef, architecture, parameter_count, resolve
from .probe import ProbeProcess
from .progress import SweepProgress
from .report.cells_csv import write_cells_csv
from .results import Cell, CellResult, MethodResult, QualityResult, RunResults, ResultsError, load, save
from .runner import new_results_folder, quality_plan, quality_setup, read_text
from .worker_handle import WorkerError, WorkerHandle
from .workload import text_tokens

# rough costs for --dry-run's estimate (SmolLM2 on two cores, between the fastest and the
# slowest default methods): per prompt or context token, per new token, per load. The
# issue's sweep (16 cells, kv-cache, native-int4, llama-cpp-q8_0, openvino-int8) took 13.7
# minutes, quality included; these figures (fitted to it) estimate 13.7 minutes for it
ESTIMATE_PREFILL_S = 0.00128
ESTIMATE_DECODE_S = 0.016
ESTIMATE_LOAD_S = 3.0


@dataclass
class SweepConfig(RunConfig):
    """run's options (same meaning) and the sweep's axes. RunConfig.new_tokens and .threads
    hold the largest of their lists: the quality pass runs at that thread count."""

    prompt_token_list: list[int] = field(default_factory=lambda: list(defaults.SWEEP_PROMPT_TOKENS))
    new_token_list: list[int] = field(default_factory=lambda: [defaults.SWEEP_NEW_TOKENS])
    depth_list: list[int] = field(default_factory=lambda: [0])
    thread_list: list[int] = field(default_factory=lambda: [defaults.default_threads()])
    batch_list: list[int] = field(default_factory=lambda: [1])
    resume: str | None = None
    # where the cells run: None here, else a Ray cluster's address (cluster.parse_address) and
    # the nodes to use (cluster.parse_node_filter); neither changes what a cell measures
    cluster: str | None = None
    nodes: str | None = None

    min_repeats: int = defaults.SWEEP_MIN_REPEATS
    min_time_s: float = defaults.SWEEP_MIN_TIME_S

    def __post_init__(self):
        self.new_tokens = max(self.new_token_list)
        self.threads = max(self.thread_list)

    def axes(self) -> dict:
        return {"prompt_tokens": self.prompt_token_list, "new_tokens": self.new_token_list,
                "depth": self.depth_list, "threads": self.thread_list, "batch": self.batch_list}

    def cells(self) -> list[Cell]:
        """Every combination, grouped by thread count (each group loads the methods once)."""
        return [Cell(prompt, new, depth, threads, batch, tuple(self.methods))
                for threads, batch, depth, prompt, new in itertools.product(
                    sorted(self.thread_list), self.batch_list, self.depth_list,
                    self.prompt_token_list, self.new_token_list)]

    def batch_checks(self) -> tuple[str, ...]:
        """The cells (points, on every machine) where batching is checked against each sequence
        alone: one per batch size > 1, at the largest thread count, the cheapest (shortest
        context and prompt)."""
        return tuple(min((c for c in self.cells() if c.batch == batch and c.threads == self.threads),
                         key=lambda c: (c.depth + c.prompt_tokens, c.new_tokens)).point
                     for batch in self.batch_list if batch > 1)

    def validate(self) -> None:
        super().validate()
        for name, values in self.axes().items():
            if not values:
                raise ValueError(f"--{name.replace('_', '-')}: the list is empty")
        if min(self.new_token_list) < 2:
            raise ValueError("--new-tokens must be at least 2 (ITL needs two tokens)")
        if min(self.prompt_token_list) < 1:
            raise ValueError("--prompt-tokens must be at least 1")
        if min(self.batch_list) < 1 or min(self.thread_list) < 1:
            raise ValueError("--batch and --threads must be at least 1")
        if self.cluster is not None:
            from .cluster import parse_address, parse_node_filter

            parse_address(self.cluster)
            parse_node_filter(self.nodes)
        elif self.nodes:
            raise ValueError("--nodes chooses nodes of a cluster: give --cluster too")

    def check_lengths(self, model: ModelRef) -> int:
        """The longest sequence must fit the model's context window (refused before anything
        loads); engines then reserve KV slots for it. Returns the slots they reserve."""
        longest = max(self.depth_list) + max(self.prompt_token_list) + max(self.new_token_list)
        window = context_window(model)
        if window and longest > window:
            raise ValueError(f"--depth {max(self.depth_list)} + --prompt-tokens {max(self.prompt_token_list)} "
                             f"+ --new-tokens {max(self.new_token_list)} = {longest} tokens exceed the "
                             f"model's context window of {window} tokens")
        return defaults.reserve_kv_slots(longest)

    def check_memory(self, model: ModelRef, available: int | None) -> None:
        """Refuse, before loading, a sweep whose largest cell cannot fit: every method of a
        thread count is loaded at once, each with at most fp32 weights and an fp32 KV cache for
        every sequence of the largest batch at the longest length (an upper bound)."""
        arch = architecture(model.path)
        if not arch or not available:
            return
        longest = max(self.depth_list) + max(self.prompt_token_list) + max(self.new_token_list)
        kv = 2 * arch["layers"] * arch["kv_heads"] * arch["head_dim"] * 4 * longest * max(self.batch_list)
        need = len(self.methods) * (arch["parameters"] * 4 + kv)
        if need > available:
            raise ValueError(
                f"--batch {max(self.batch_list)} at {longest} tokens would need up to {need / 2**30:.1f} GiB "
                f"({len(self.methods)} methods x ({arch['parameters'] * 4 / 2**30:.2f} GiB of fp32 weights "
                f"+ {kv / 2**30:.2f} GiB of KV cache)) and {available / 2**30:.1f} GiB are available: "
                "use a smaller --batch, shorter sequences or fewer methods")

    def identity(self) -> dict:
        """What a resumed sweep must share with the folder it resumes: its cells and how each
        is measured (output, display and resume options aside, and where its cells run)."""
        d = self.to_dict()
        for key in ("output_dir", "resume", "timeout_s", "cluster", "nodes"):
            d.pop(key, None)
        return d


# --- the driver ------------------------------------------------------------------------------
def estimate_seconds(config: SweepConfig, cells: list[Cell]) -> float:
    """An order of magnitude for --dry-run (ESTIMATE_* above): per method and cell, the first
    call (the whole prefill, a few new tokens), the timed runs (at least --repeats and
    --min-time), a context's fill when the cell before did not leave it in the cache, and each
    sequence alone where batching is checked; a load per method and thread count."""
    total = ESTIMATE_LOAD_S * len(config.methods) * len(config.thread_list)
    checks, filled = set(config.batch_checks()), set()
    for cell in cells:
        prefill = cell.batch * (cell.depth + cell.prompt_tokens) * ESTIMATE_PREFILL_S
        one = prefill + cell.new_tokens * ESTIMATE_DECODE_S
        first = prefill + defaults.CELL_WARMUP_NEW_TOKENS * ESTIMATE_DECODE_S + (config.warmup - 1) * one
        timed = min(max(config.min_repeats * one, config.min_time_s), config.max_repeats * one)
        alone = one if cell.point in checks else 0  # B sequences of 1/B of the batch's work each
        contexts = (cell.threads, cell.batch, cell.depth)  # what a cell's contexts depend on
        fill = 0 if contexts in filled else cell.batch * cell.depth * ESTIMATE_PREFILL_S
        filled.add(contexts)
        total += len(cell.methods) * (fill + first + timed + alone)
    return total


def resumed_results(config: SweepConfig, model: ModelRef) -> RunResults:
    """The results of the folder to resume; refuses one of another sweep or model."""
    path = os.path.join(config.resume, "results.json")
    try:
        old = load(path)
    except ResultsError as e:
        raise ValueError(f"--resume {config.resume}: {e}") from None
    if not old.sweep:
        raise ValueError(f"--resume {config.resume}: not a sweep's results (a run's)")
    if old.model.get("content_hash") != model.content_hash:
        raise ValueError(f"--resume {config.resume}: measured another model "
                         f"({old.model.get('name')}, content {old.model.get('content_hash')})")
    mine, theirs = config.identity(), (old.sweep or {}).get("identity", {})
    differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
    if differ:
        raise ValueError(f"--resume {config.resume}: another configuration "
                         f"({', '.join(differ)} differ); run the same sweep command to resume it")
    return old


def run_sweep(config: SweepConfig, show, progress_factory: Callable[[int, int], SweepProgress]
              ) -> tuple[RunResults, str]:
    """Measure every cell not measured yet; save after each. Returns results and folder."""
    config.validate()
    check_output_location(config.output_dir)
    t0 = time.perf_counter()
    # a cluster's probes run on its hosts (ClusterSession.probe): none here then
    prober = None if config.cluster else ProbeProcess(config.threads, defaults.PROBE_BYTES, config.timeout_s)
    try:
        results, folder = _run_sweep(config, show, progress_factory, prober, t0)
    finally:
        if prober is not None:
            prober.close()
    history.record(results, folder)  # every sweep (and plan), from the CLI or the API
    return results, folder


def _run_sweep(config: SweepConfig, show, progress_factory, prober, t0) -> tuple[RunResults, str]:
    from .prompts import load_tokenizer

    show(f"resolving model {config.model}")
    model = resolve(config.model)
    if config.methods == list(defaults.DEFAULT_METHODS):
        config.methods = default_methods(model)
    kv_slots = config.check_lengths(model)
    config.check_memory(model, machine.conditions().get("memory_available_bytes"))
    text, source = read_text(config.text_file)
    spec = CellSpec(model, text_tokens(load_tokenizer(model.path), text, source), config,
                    config.batch_checks())
    if config.resume:  # refused before a cluster is started
        resumed_results(config, model)
    with contextlib.ExitStack() as stack:  # a cluster, connected before any folder is made
        session = stack.enter_context(_cluster_session(config, model, show)) if config.cluster else None
        return _measure(config, show, progress_factory, prober, t0, model, spec, kv_slots, source, session)


def _measure(config: SweepConfig, show, progress_factory, prober, t0, model: ModelRef, spec: CellSpec,
             kv_slots: int, source: str, session) -> tuple[RunResults, str]:
    if config.resume:
        results = resumed_results(config, model)
        folder = config.resume
        results.cells = [c for c in results.cells if c.status == "complete"]
        results.status = "running"
    else:
        folder = new_results_folder(config.output_dir, model.name)
        results = RunResults(
            config=config.to_dict(), machine=machine.describe(),
            model={**model.to_dict(), "parameters": parameter_count(model.path),
                   "architecture": architecture(model.path)},
            prompt_tokens=max(config.prompt_token_list),
            sweep={"axes": config.axes(), "identity": config.identity(), "prompt_text": source,
                   "kv_slots": kv_slots},
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            inferlab_version=__version__)
        results.methods = [MethodResult(method=m, status="running", summary=engine_class(m).summary)
                           for m in config.methods]
    path = os.path.join(folder, "results.json")
    timings = results.timings
    timings["resolve"] = timings.get("resolve", 0.0) + time.perf_counter() - t0
    done_keys = {c.cell.key for c in results.cells}
    planned = session.cells_for(config.cells()) if session else config.cells()  # per kind of machine
    todo = [c for c in planned if c.key not in done_keys]
    logdir = os.path.join(folder, "logs")
    os.makedirs(logdir, exist_ok=True)
    workdir = os.path.join(folder, ".work")
    shutil.rmtree(workdir, ignore_errors=True)
    os.makedirs(workdir)
    pool = WorkerPool(model, logdir, config.timeout_s)

    @contextlib.contextmanager
    def phase(name: str):  # wall time into results.timings, an interrupted phase included
        since = time.perf_counter()
        try:
            yield
        finally:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - since

    def probe(when: str) -> None:  # on this machine, or on each host of the cluster
        with phase("probes"):
            answers = session.probe(config.threads, defaults.PROBE_BYTES, config.timeout_s) if session \
                else [prober.measure()]
            results.probes.extend({**a, "when": when} for a in answers)

    try:
        save(results, path)
        with phase("prepare"):
            for m in results.methods:
                prepare_method(m, model, logdir, config.timeout_s)
            if session:
                for method, error in session.prepare([m.method for m in results.methods if m.status == "running"],
                                                     config.timeout_s).items():
                    m = results.method(method)
                    m.status, m.error = "failed", f"prepare, on every node: {error}"
        if session:
            results.machines.update(session.machines())
        else:  # this machine, its cells' node
            here = cluster.describe_here()
            results.machines[here["kind"]] = here["machine"]
        save(results, path)
        probe("before the measurements")
        progress = progress_factory(len(todo), len(planned) - len(todo))

        def done(cell_result: CellResult, loads: LoadInfo | None = None) -> None:
            """A cell's result, and what its node's loads said (a cluster's; here: the pool's)."""
            if not session:
                cell_result.node = cluster.local_node(here)
            results.cells.append(cell_result)
            _keep_load_info(results, loads or LoadInfo.of(pool), cell_result.cell.threads)
            save(results, path)
            write_cells_csv(results, folder)
            progress.advance(cell_result)

        executor = cluster.ClusterExecutor(session) if session else LocalExecutor(pool)
        with phase("cells"):
            executor.run(todo, spec, done, progress.starting)
        progress.close()
        # judged once per sweep: a resumed sweep whose methods all have a verdict keeps them
        if config.quality and any(m.quality is None for m in results.methods if m.status == "running"):
            with phase("quality"):
                _judge_quality(results, model, config, pool, workdir, show)
        probe("after the measurements")
        for m in results.methods:
            if m.status == "running":  # ok where any cell ran it; else failed, with a reason
                measured = [c.method(m.method) for c in results.cells if c.method(m.method)]
                m.status = "ok" if any(r.ok for r in measured) else "failed"
                if not m.ok:
                    m.error = next((r.error for r in measured if r.error), None)
        results.status = "complete"
    except KeyboardInterrupt:
        results.status = "interrupted"
    finally:
        pool.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if session:
            session.gather_logs(logdir)
    timings["total"] = timings.get("total", 0.0) + time.perf_counter() - t0
    save(results, path)
    write_cells_csv(results, folder)
    return results, folder


@contextlib.contextmanager
def _cluster_session(config: SweepConfig, model: ModelRef, show):
    """Connected to --cluster with a measuring actor on each chosen node (cluster.py)."""
    session = cluster.ClusterSession(cluster.parse_address(config.cluster), cluster.parse_node_filter(config.nodes),
                                     config.model, model.content_hash, show)
    try:
        yield session
    finally:
        session.close()


def prepare_method(m: MethodResult, model: ModelRef, logdir: str, timeout_s: float) -> None:
    """A method's one-time conversion in a process of its own (as in a run); a failure goes
    into m (status and error)."""
    if not has_prepare(m.method):
        return
    start = p.Start(method=m.method, engine=engine_path(m.method), model=model, threads=1)
    worker = WorkerHandle(start, os.path.join(logdir, f"{m.method}.log"))
    try:
        out = worker.request(p.Prepare(), timeout_s)
        m.prepare_s, m.prepare_cache_hit = out.seconds, out.cache_hit
    except WorkerError as e:
        m.status, m.error = e.status, f"prepare: {e.message}" if e.status != "skipped" else e.message
    finally:
        worker.close()


def _keep_load_info(results: RunResults, loads: LoadInfo, threads: int) -> None:
    """What each method's load said (sizes, details, load time), once per method."""
    for m in results.methods:
        loaded = loads.loaded.get((m.method, threads))
        if loaded is not None and m.load_s is None:
            m.load_s, m.threads = loaded.load_s, threads
            m.weight_bytes, m.file_bytes = loaded.info.weight_bytes, loaded.info.file_bytes
            m.parameters, m.details = loaded.info.parameters, loaded.info.details
        failure = loads.failures.get((m.method, threads))
        if failure is not None and m.status == "running" and failure[0] == "skipped":
            m.status, m.error = "skipped", failure[1]


def _judge_quality(results: RunResults, model: ModelRef, config: SweepConfig, pool: WorkerPool,
                   workdir: str, show) -> None:
    """Each method judged once per sweep, at the largest thread count, reference first."""
    plan_ = quality_plan(model, config, workdir)
    results.quality_setup = quality_setup(plan_)
    order = [defaults.REFERENCE_METHOD] + [m.method for m in results.methods
                                           if m.method != defaults.REFERENCE_METHOD]
    for method in order:
        record = results.method(method)
        if record is not None and record.status not in ("running", "ok"):
            continue
        show(f"{method}: quality")
        try:
            worker = pool.get(method, config.threads)
            out = worker.request(p.Evaluate(plan_, method == defaults.REFERENCE_METHOD), config.timeout_s)
        except WorkerError as e:
            if method == defaults.REFERENCE_METHOD:
                show(f"the reference failed ({e.message}): no quality comparisons in this sweep")
                return
            if record is not None:
                record.quality = QualityResult(verdict="error", reasons=[f"quality pass {e.status}: {e.message}"])
            continue
        if record is not None:
            record.quality = out.quality
