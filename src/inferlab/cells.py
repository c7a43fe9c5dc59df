"""Measuring one sweep cell, wherever it runs: the cell (results.Cell) is plain data in and a
CellResult out. A `WorkerPool` keeps this host's workers, one process per method and thread
count, loaded once and reused across that count's cells; `measure_cell` runs the protocol
inside a cell; an executor decides where and in which order cells run (`LocalExecutor`:
here, one after another) and hands each result on. A cluster executor would send cells to
other hosts and change nothing in how a cell is measured or stored."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Callable

from . import defaults, machine
from . import protocol as p
from .analysis import first_divergence
from .config import RunConfig
from .engines import engine_class, engine_path
from .models import ModelRef
from .results import Cell, CellResult, MethodResult
from .probe import stream_rate
from .runner import needs_more_runs, record_generation, request_generation, rotating_rounds, settle
from .worker_handle import WorkerError, WorkerHandle
from .workload import TextTokens


@dataclass
class CellSpec:
    """What measuring any cell needs beyond the cell itself: plain data, like the cell."""

    model: ModelRef
    text: TextTokens
    config: RunConfig  # repeats, minimum time, timeout
    # the cells (by point: on every machine) where each sequence of the batch is also
    # generated alone: one per batch size > 1, chosen by the driver
    batch_checks: tuple[str, ...] = ()


@dataclass
class LoadInfo:
    """What a pool's loads said, as plain data (it travels from a cluster's nodes): per (method,
    threads) the Loaded reply, or the failure's (status, message)."""

    loaded: dict[tuple[str, int], p.Loaded]
    failures: dict[tuple[str, int], tuple[str, str]]

    @classmethod
    def of(cls, pool: "WorkerPool") -> "LoadInfo":
        return cls(dict(pool.loaded), {k: (e.status, e.message) for k, e in pool.failures.items()})


class WorkerPool:
    """This host's loaded workers, one process per (method, threads). A load failure is kept
    and answered again, so a broken method is not reloaded for every cell."""

    def __init__(self, model: ModelRef, logdir: str, timeout_s: float):
        self.model, self.logdir, self.timeout_s = model, logdir, timeout_s
        self.workers: dict[tuple[str, int], WorkerHandle] = {}
        self.loaded: dict[tuple[str, int], p.Loaded] = {}
        self.failures: dict[tuple[str, int], WorkerError] = {}

    def get(self, method: str, threads: int) -> WorkerHandle:
        key = (method, threads)
        if key in self.failures:
            raise self.failures[key]
        if key not in self.workers:
            self.release(keep_threads=threads)  # one thread count loaded at a time: memory
            start = p.Start(method=method, engine=engine_path(method), model=self.model, threads=threads)
            worker = WorkerHandle(start, os.path.join(self.logdir, f"{method}-t{threads}.log"))
            try:
                self.loaded[key] = worker.request(p.Load(), self.timeout_s)
            except WorkerError as e:
                worker.kill()
                self.failures[key] = e
                raise
            self.workers[key] = worker
        return self.workers[key]

    def drop(self, method: str, threads: int, error: WorkerError) -> None:
        """A worker that failed mid-cell is gone (or unusable): later cells get its error."""
        worker = self.workers.pop((method, threads), None)
        if worker is not None:
            worker.kill()
        self.failures[(method, threads)] = error

    def release(self, keep_threads: int | None = None) -> None:
        for key in [k for k in self.workers if k[1] != keep_threads]:
            self.workers.pop(key).close()

    def close(self) -> None:
        for worker in self.workers.values():
            worker.kill()
        self.workers.clear()


def _bandwidth_now(threads: int) -> float | None:
    """The streaming bandwidth at `threads` threads (probe.stream_rate), once the method that
    answered last has gone quiet (its threads spinning on would read as less bandwidth). The
    machine moves between bandwidth states minutes apart, even within a cell (the AMD EPYC
    here: 31-36 and 58-66 GB/s), so every timed run of a cell is judged against the reading
    taken just before it."""
    settle()
    return stream_rate(threads)


def _conditions(threads: int) -> dict:
    """The machine's state (machine.conditions), its streaming bandwidth and the wall-clock
    time in seconds."""
    at = time.time()
    return {**machine.conditions(), "bandwidth_bytes_per_s": _bandwidth_now(threads), "at": at}


def measure_cell(cell: Cell, spec: CellSpec, pool: WorkerPool, out: CellResult | None = None) -> CellResult:
    """One cell, every method: a first call each (untimed, the whole context and prompt but
    only `defaults.CELL_WARMUP_NEW_TOKENS` new tokens; its peak memory mark reset), then rounds
    of one timed generation per method in rotating order until each has its runs, then (in
    the cells of `spec.batch_checks`) each sequence alone. Fills `out` as it goes (what an
    interrupted cell measured stays in it)."""
    t0 = time.perf_counter()
    out = out or CellResult(cell=cell)
    out.conditions["before"] = _conditions(cell.threads)
    sequences = [spec.text.sequence(cell, i) for i in range(cell.batch)]
    contexts = [c for c, _ in sequences] if cell.depth else []
    request = p.Generate([q for _, q in sequences], cell.new_tokens, contexts=contexts)
    batched: dict[str, list[list[int]]] = {}  # each method's sequences in its first timed run

    def ask(r: MethodResult, message: p.Generate):
        """The method's worker's answer; None when it failed (recorded in r)."""
        try:
            return request_generation(pool.get(r.method, cell.threads), message, spec.config.timeout_s)
        except WorkerError as e:
            r.status, r.error = e.status, e.message
            if e.status != "skipped":
                pool.drop(r.method, cell.threads, e)
            return None

    for method in cell.methods:
        r = MethodResult(method=method, status="running", threads=cell.threads)
        out.methods.append(r)
        if cell.batch > engine_class(method).max_batch:
            r.status, r.error = "skipped", (f"batch {cell.batch}: {method} decodes one sequence at "
                                            "a time (it has no batched decode)")
            continue
        warmup = replace(request, new_tokens=min(cell.new_tokens, defaults.CELL_WARMUP_NEW_TOKENS),
                         timed=False, reset_peak=True)
        if (answer := ask(r, warmup)) is None:
            continue
        r.first_call_s, r.deterministic = answer[0].sample.e2e_s, True
        for _ in range(spec.config.warmup - 1):  # the first call is the first warm-up run
            if ask(r, replace(request, timed=False)) is None:
                break

    def one_run(r: MethodResult) -> None:
        bandwidth = _bandwidth_now(cell.threads)
        answer = ask(r, request)
        if answer is not None:
            reply, others = answer
            if not r.runs:  # the footprint while generating; the tokens every run must repeat
                r.steady_rss_bytes, batched[r.method] = reply.rss_bytes, reply.sequences
            record_generation(r, reply, True, others)
            r.runs[-1].bandwidth_bytes_per_s = bandwidth

    rotating_rounds(out.methods, lambda r: r.status == "running" and needs_more_runs(r, spec.config),
                    one_run)
    # batching may change the arithmetic: every sequence generated alone, after the timed runs
    # (its contexts would otherwise replace the batch's in the cache)
    if cell.batch > 1 and cell.point in spec.batch_checks:
        for r in out.methods:
            if r.status != "running":
                continue
            r.batch_divergence = []
            for i, (context, prompt) in enumerate(sequences):
                alone = ask(r, p.Generate([prompt], cell.new_tokens, timed=False,
                                          contexts=[context] if cell.depth else []))
                if alone is None:
                    break
                r.batch_divergence.append(first_divergence(batched[r.method][i], alone[0].tokens))
    for r in out.methods:
        if r.status == "running":
            r.status = "ok"
    out.conditions["after"] = _conditions(cell.threads)
    out.status, out.seconds = "complete", time.perf_counter() - t0
    return out


class LocalExecutor:
    """Runs cells here, one after another, in the order given (grouped by thread count)."""

    def __init__(self, pool: WorkerPool):
        self.pool = pool

    def run(self, cells: list[Cell], spec: CellSpec, done: Callable[[CellResult], None],
            starting: Callable[[Cell], None] = lambda cell: None) -> None:
        for cell in cells:
            starting(cell)
            result = CellResult(cell=cell)
            try:
                measure_cell(cell, spec, self.pool, result)
            except KeyboardInterrupt:
                result.status = "interrupted"
                for m in result.methods:
                    if m.status == "running":
                        m.status = "interrupted"
                done(result)
                raise
            done(result)
