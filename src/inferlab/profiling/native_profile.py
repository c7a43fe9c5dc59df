"""inferlab's native decoder: its own clock (wall time per kind of work inside the C forward
pass, engines/native/q4_decoder.c) over a prefill and a few decode steps, in the same tables as the
other profilers. The clock is always on (thread 0 reads it about 300 times a step; while
profiling it also keeps each span), so a profile runs exactly the code the benchmark timed."""

from __future__ import annotations

import contextlib
import json
import os
import time

from ..harness import generate
from .breakdown import OpRecord, breakdown

# the decoder's phase -> (operator name in the tables, model part)
PHASES = {
    "embedding": ("native::embedding", "embedding"),
    "norm_quantize": ("native::norm_quantize", "block norms"),
    "attention_projections": ("native::matmul_q4 (q, k, v, o)", "attention"),
    "attention": ("native::attention", "attention"),
    "mlp_projections": ("native::matmul_q4 (gate, up, down)", "mlp"),
    "activation_quantize": ("native::activation_quantize", "mlp"),
    "residual_add": ("native::residual_add", "other"),
    "final_norm": ("native::norm_quantize", "final norm + lm head"),
    "lm_head": ("native::matmul_q8", "final norm + lm head"),
}


def profile(engine, prompt_ids, steps: int, trace_path: str) -> dict:
    """The harness's loop (a warm-up pair, then a prefill and `steps` decode steps), each
    engine call wrapped so that the decoder keeps its spans for that call only."""
    decoder = engine.decoder
    windows, ops, events = [], [], []

    @contextlib.contextmanager
    def spans_of(name: str):
        decoder.record_spans(True)
        start = time.perf_counter()
        try:
            yield
        finally:
            end = time.perf_counter()
            decoder.record_spans(False)
            windows.append((name, start * 1e6, end * 1e6))
            for phase, s, e in decoder.spans():  # one per phase per layer, at the time it ran
                op, part = PHASES.get(phase, (f"native::{phase}", "other"))
                ops.append(OpRecord(op, s * 1e6, (e - s) * 1e6, part))
                events.append({"name": phase, "cat": name, "ph": "X", "ts": s * 1e6, "dur": (e - s) * 1e6,
                               "pid": 1, "tid": 1})

    generate(engine, prompt_ids, 2)  # warm, as the other profilers do
    generate(engine, prompt_ids, steps + 1, around=spans_of)
    with open(trace_path, "w") as f:  # a timeline: each phase of each layer as one slice
        json.dump({"traceEvents": events, "displayTimeUnit": "ms"}, f)
    return {
        "profiler": "inferlab native decoder's own clock (thread 0's spans: each phase of each layer)",
        "decode_steps": steps,
        "phases": breakdown(windows, ops),
        "trace_file": os.path.basename(trace_path),
        "trace_bytes": os.path.getsize(trace_path),
        "sweep": [],
        "parts_note": "parts from the decoder's phases (time inside the C call; the rest is Python and ctypes)",
    }
