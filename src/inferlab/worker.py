"""One method in its own process: `python -m inferlab.worker JOB.json OUT.json`.

A fresh process per method keeps peak RSS honest and isolates crashes and hangs: the parent
(runner.py) enforces the timeout and records whatever happened."""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
import warnings

PROGRESS = "@@"  # stderr lines starting with this are progress for the parent's display


def progress(message: str) -> None:
    print(f"{PROGRESS} {message}", file=sys.stderr, flush=True)


def _quiet_libraries() -> None:
    # deprecation chatter from torch.ao / transformers goes to the log, not the user's screen
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    warnings.filterwarnings("ignore")


def _engine(job: dict):
    """The job's engine, built (not loaded) with the job's thread count."""
    import torch

    from .engines import import_engine
    from .models import ModelRef

    torch.set_num_threads(job["threads"])
    return import_engine(job["engine"])(ModelRef.from_dict(job["model"]), job["threads"])


def run_prepare(job: dict) -> dict:
    engine = _engine(job)
    progress("preparing (export / conversion, cached afterwards)")
    t0 = time.perf_counter()
    hit = engine.prepare()
    return {"prepare_s": None if hit else time.perf_counter() - t0, "prepare_cache_hit": hit}


def run_measure(job: dict) -> dict:
    """Load, then (if asked) time generations, then (if asked) evaluate quality.

    Peak RSS is read before the quality pass, whose logit windows are not the method's cost."""
    from .harness import measure

    engine = _engine(job)
    progress("loading")
    t0 = time.perf_counter()
    engine.load()
    out = {"status": "ok", "load_s": time.perf_counter() - t0, "threads": job["threads"]}
    cfg = job["config"]
    if job["timed_runs"]:
        full = job["timed_runs"] == "full"
        m = measure(
            engine,
            job["prompt_ids"],
            cfg["new_tokens"],
            warmup=cfg["warmup"] if full else 0,
            min_repeats=cfg["min_repeats"] if full else 1,
            min_time_s=cfg["min_time_s"] if full else 0.0,
            max_repeats=cfg["max_repeats"] if full else 1,
            progress=progress,
        )
        out.update(
            first_call_s=m.first_call_s,
            warmup_runs=m.warmup_runs,
            runs=[{"ttft_s": r.ttft_s, "e2e_s": r.e2e_s, "itl_s": r.itl_s} for r in m.runs],
            tokens=m.runs[0].tokens,
            deterministic=m.deterministic,
        )
    out["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB
    info = engine.info()
    out.update(weight_bytes=info.get("weight_bytes"), file_bytes=info.get("file_bytes"),
               parameters=info.get("parameters"), details=info.get("details", {}))
    if job.get("quality_plan"):
        from .quality import evaluate

        progress("quality: perplexity, KL, top-1 and greedy agreement against the reference")
        try:
            out["quality"] = evaluate(engine, job["quality_plan"], job["is_reference"])
        except Exception as e:  # noqa: BLE001 - keep the speed figures already measured
            traceback.print_exc(file=sys.stderr)
            out["quality"] = {"verdict": "error", "reasons": [f"{type(e).__name__}: {e}"[:300]]}
    return out


def _unprofiled_steps(engine, prompt_ids, steps: int) -> dict:
    """The same calls without a profiler (the harness's clocks), to show how much the profiler
    itself inflates them."""
    from .harness import generate

    generate(engine, prompt_ids, 2)  # warm, as the profilers do
    g = generate(engine, prompt_ids, steps + 1)
    return {"prefill_ms": g.ttft_s * 1e3, "decode_step_ms": g.tpot_s * 1e3}


def run_profile(job: dict) -> dict:
    """Its own process, never timed together with the benchmark."""
    engine = _engine(job)
    progress("profiling: loading")
    engine.load()
    opts = job["profile"]
    sweep = tuple(opts["sweep"]) if job["method"] in opts["sweep_methods"] else ()
    progress(f"profiling: prefill + {opts['steps']} decode steps"
             + (f", then context sweep {list(sweep)}" if sweep else ""))
    unprofiled = _unprofiled_steps(engine, job["prompt_ids"], opts["steps"])
    data = engine.profile(job["prompt_ids"], opts["steps"], opts["trace_path"], opts["detail"], sweep)
    data["unprofiled"] = unprofiled
    progress(f"profiling: trace {opts['trace_path']} ({data['trace_bytes'] / 1e6:.1f} MB)")
    info = engine.info()
    return {"status": "ok", "profile": data, "weight_bytes": info.get("weight_bytes"),
            "file_bytes": info.get("file_bytes"), "parameters": info.get("parameters"),
            "details": info.get("details", {}), "threads": job["threads"]}


PHASES = {"prepare": run_prepare, "measure": run_measure, "profile": run_profile}


def main(argv: list[str]) -> int:
    from .fsutil import write_json_atomic

    job_path, out_path = argv
    with open(job_path) as f:
        job = json.load(f)
    _quiet_libraries()
    try:
        out = PHASES[job["phase"]](job)
        code = 0
    except Exception as e:  # noqa: BLE001 - any engine failure becomes a recorded result
        traceback.print_exc(file=sys.stderr)
        first = (str(e).strip().splitlines() or [""])[0]
        out = {"status": "failed", "error": f"{type(e).__name__}: {first}"[:500]}
        code = 1
    write_json_atomic(out_path, out)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
