"""inferlab's native decoder: its own clock (wall time per kind of work inside the C forward
pass, engines/native/q4_decoder.c) over a prefill and a few decode steps, in the same tables as the
other profilers. The clock is always on (thread 0 reads it about 300 times a step; while
profiling it also keeps each span), so a profile runs exactly the code the benchmark timed."""

from __future__ import annotations

import json
import os
import time

from .breakdown import OpRecord, breakdown

# the decoder's phase -> (operator name in the tables, model part)
PHASES = {
    "embedding": ("native::embedding", "embedding"),
    "rmsnorm_quantize": ("native::rmsnorm_quantize", "block norms"),
    "attention_projections": ("native::matmul_q4 (q, k, v, o)", "attention"),
    "attention": ("native::attention", "attention"),
    "mlp_projections": ("native::matmul_q4 (gate, up, down)", "mlp"),
    "silu_mul_quantize": ("native::silu_mul_quantize", "mlp"),
    "residual_add": ("native::residual_add", "other"),
    "final_norm": ("native::rmsnorm_quantize", "final norm + lm head"),
    "lm_head": ("native::matmul_q8", "final norm + lm head"),
}


def _call(fn, arg, name: str, windows: list, ops: list, events: list, decoder):
    decoder.record_spans(True)
    start = time.perf_counter()
    out = fn(arg)
    end = time.perf_counter()
    decoder.record_spans(False)
    windows.append((name, start * 1e6, end * 1e6))
    for phase, s, e in decoder.spans():  # one per phase per layer, at the time it ran
        op, part = PHASES.get(phase, (f"native::{phase}", "other"))
        ops.append(OpRecord(op, s * 1e6, (e - s) * 1e6, part))
        events.append({"name": phase, "cat": name, "ph": "X", "ts": s * 1e6, "dur": (e - s) * 1e6, "pid": 1, "tid": 1})
    return out


def profile(decoder, prompt_ids, steps: int, trace_path: str) -> dict:
    windows, ops, events = [], [], []
    logits = _call(decoder.prefill, list(prompt_ids), "prefill", windows, ops, events, decoder)
    for _ in range(steps):
        logits = _call(decoder.decode, int(logits.argmax()), "decode", windows, ops, events, decoder)
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
