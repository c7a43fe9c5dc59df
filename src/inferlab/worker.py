"""One method in its own process: `python -m inferlab.worker`, driven by the runner.

It reads protocol messages (one JSON line each) on stdin and answers each on the file
descriptor given in INFERLAB_REPLY_FD; the engine's own prints go to stdout (the method's log),
progress lines to stderr. A fresh process per method keeps memory figures honest and isolates
crashes and hangs. It stays loaded between requests, so the runner can interleave timed runs of
several methods (A B C A B C ...). It ends when the runner is gone: the kernel kills it when
its parent dies, and a closed stdin ends the loop."""

from __future__ import annotations

import os
import sys
import time
import traceback
import warnings

from . import protocol as p
from .results import EngineDetails
from .lean_imports import skip_unused_imports
from .procstat import machine_cpu_seconds, process_memory, reset_peak_memory

PROGRESS = "@@"  # stderr lines starting with this are progress for the parent's display
REPLY_FD_ENV = "INFERLAB_REPLY_FD"
PARENT_PID_ENV = "INFERLAB_PARENT_PID"


def progress(message: str) -> None:
    print(f"{PROGRESS} {message}", file=sys.stderr, flush=True)


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent dies (Linux), and exit now if the
    parent is already gone: a runner killed with SIGKILL must not leave workers running."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    expected = os.environ.get(PARENT_PID_ENV)
    if expected and os.getppid() != int(expected):
        os._exit(1)


def _quiet_libraries() -> None:
    # deprecation chatter from torch.ao / transformers goes to the log, not the user's screen
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")


class Worker:
    """Holds one engine and answers requests about it. Imports only what the engine needs: the
    ONNX engines never load torch into this process."""

    def __init__(self, start: p.Start):
        from .engines import import_engine

        self.start = start
        self.engine = import_engine(start.engine)(start.model, start.threads)
        self.filled: list[list[int]] | None = None  # the contexts the cache starts with

    def handle(self, request):
        handler = getattr(self, "on_" + type(request).__name__.lower())
        return handler(request)

    def on_prepare(self, _: p.Prepare) -> p.Prepared:
        progress("preparing (export / conversion, cached afterwards)")
        t0 = time.perf_counter()
        hit = self.engine.prepare()
        return p.Prepared(seconds=None if hit else time.perf_counter() - t0, cache_hit=hit)

    def on_load(self, _: p.Load) -> p.Loaded:
        progress("loading")
        t0 = time.perf_counter()
        self.engine.load()
        return p.Loaded(load_s=time.perf_counter() - t0, info=self.info())

    def info(self) -> p.EngineInfo:
        info = self.engine.info()
        details = EngineDetails.from_dict(info.get("details"))
        details.setup_in_ttft = type(self.engine).setup_in_ttft
        return p.EngineInfo(weight_bytes=info.get("weight_bytes"), file_bytes=info.get("file_bytes"),
                            parameters=info.get("parameters"), details=details)

    def on_generate(self, request: p.Generate) -> p.Generated:
        from .harness import generate_timed

        if request.reset_peak:
            reset_peak_memory()
        contexts = [c for c in request.contexts if c]
        if contexts:  # untimed, and outside the engine's own counters
            self.fill(contexts)
        else:
            self.filled = None  # this generation's prefill replaces the cache
        self.engine.reset_counters()
        # this process's CPU time (every thread) and the machine's, around the generation only:
        # a fill above (a prefill of the depth's context, where the engine cannot rewind) is
        # this worker's own untimed work, never another process's load
        machine0, cpu0 = machine_cpu_seconds(), time.process_time()
        g = generate_timed(self.engine, request.prompts, request.new_tokens, request.timed,
                           after_context=bool(contexts))
        cpu_s, machine1 = time.process_time() - cpu0, machine_cpu_seconds()
        machine_s = [a - b for a, b in zip(machine1, machine0)] if machine0 and machine1 else None
        counters = self.engine.counters()
        rss, hwm = process_memory()
        return p.Generated(sample=g.sample(), tokens=g.tokens, sequences=g.sequences, cpu_s=cpu_s,
                           rss_bytes=rss, peak_rss_bytes=hwm, counters=counters, machine_s=machine_s)

    def fill(self, contexts: list[list[int]]) -> None:
        """Put the contexts in the cache: by rewinding to them when the cache already starts
        with them (the same cell's previous run), else by a prefill."""
        if contexts == self.filled and self.engine.rewind(len(contexts[0])):
            return
        self.filled = None  # a failure below leaves no claim on the cache
        if len(contexts) == 1:
            self.engine.prefill(contexts[0])
        else:
            self.engine.prefill_batch(contexts)
        self.filled = contexts

    def on_howtorun(self, request: p.HowToRun) -> p.Recipe:
        from dataclasses import asdict

        usage = self.engine.usage(request.prompt, request.new_tokens)
        return p.Recipe(usage=asdict(usage) if usage else None)

    def on_evaluate(self, request: p.Evaluate) -> p.Evaluated:
        from .quality import evaluate

        progress("quality: perplexity, KL, top-1 and greedy agreement against the reference")
        self.filled = None
        return p.Evaluated(quality=evaluate(self.engine, request.plan, request.is_reference))

    def on_profile(self, request: p.Profile) -> p.Profiled:
        from .profiling.run import profile_engine

        progress("profiling: loading")
        self.filled = None
        self.engine.load()
        data = profile_engine(self.engine, self.start.method, request, progress)
        return p.Profiled(profile=data, info=self.info())


def _one_line(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}"[:500]


def main() -> int:
    die_with_parent()
    skip_unused_imports()
    _quiet_libraries()
    reply = os.fdopen(int(os.environ[REPLY_FD_ENV]), "w")

    def send(message) -> None:
        reply.write(p.encode(message))
        reply.flush()

    worker, start_error = None, "no Start message"
    for line in sys.stdin:
        request = p.decode(line)
        if isinstance(request, p.Stop):
            break
        try:
            if isinstance(request, p.Start):  # no reply: a failure here answers the next request
                worker = Worker(request)
            elif worker is None:
                send(p.Failed(error=start_error))
            else:
                send(worker.handle(request))
        except Exception as e:  # noqa: BLE001 - any engine failure becomes a recorded result
            traceback.print_exc(file=sys.stderr)
            if isinstance(request, p.Start):
                start_error = _one_line(e)
            else:
                from .engines.base import EngineUnsupported

                if isinstance(e, EngineUnsupported):
                    send(p.Failed(error=str(e), unsupported=True))
                else:
                    send(p.Failed(error=_one_line(e)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
