"""PyTorch engines: torch.profiler over a labelled prefill and a few decode steps, plus a
separate pass with module hooks for the time by model part (hooks would distort the trace)."""

from __future__ import annotations

import os
import time
from collections import defaultdict

from ..harness import argmax
from .breakdown import OpRecord, breakdown
from .parts import PARTS, top_level_modules

LABELS = ("prefill", "decode")


class PartTimer:
    """Wall time per model part, from forward hooks on the outermost module of each part."""

    def __init__(self, model):
        self.totals: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}
        self.handles = []
        for _, part, module in top_level_modules(model):
            self.handles.append(module.register_forward_pre_hook(self._pre(part)))
            self.handles.append(module.register_forward_hook(self._post(part)))

    def _pre(self, part):
        def hook(module, args):
            self._started[part] = time.perf_counter()
        return hook

    def _post(self, part):
        def hook(module, args, output):
            self.totals[part] += time.perf_counter() - self._started.pop(part, time.perf_counter())
        return hook

    def reset(self):
        self.totals.clear()

    def remove(self):
        for h in self.handles:
            h.remove()


def _step_parts(engine, model, prompt_ids, steps) -> dict:
    """Mean ms per decode step by model part; 'other' is the rest of the step."""
    timer = PartTimer(model)
    try:
        token = argmax(engine.prefill(prompt_ids))
        timer.reset()
        t0 = time.perf_counter()
        for _ in range(steps):
            token = argmax(engine.decode(token))
        wall = (time.perf_counter() - t0) / steps
        parts = {p: timer.totals.get(p, 0.0) / steps for p in PARTS}
        parts["other"] = max(wall - sum(v for k, v in parts.items() if k != "other"), 0.0)
        return {"step_ms": wall * 1e3, "parts_ms": {k: v * 1e3 for k, v in parts.items()}}
    finally:
        timer.remove()


def context_sweep(engine, model, prompt_ids, lengths, reps: int = 3) -> list[dict]:
    """Decode-step time and attention share after contexts of several lengths."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    out = []
    for length in lengths:
        if length + reps + 1 > limit:
            continue
        ids = (list(prompt_ids) * (length // max(len(prompt_ids), 1) + 1))[:length]
        timer = PartTimer(model)
        try:
            token = argmax(engine.prefill(ids))
            samples, shares = [], []
            for _ in range(reps):
                timer.reset()
                t0 = time.perf_counter()
                token = argmax(engine.decode(token))
                dt = time.perf_counter() - t0
                samples.append(dt)
                shares.append(timer.totals.get("attention", 0.0) / dt)
        finally:
            timer.remove()
        samples.sort()
        shares.sort()
        out.append({"context": length, "step_ms": samples[len(samples) // 2] * 1e3,
                    "attention_share": shares[len(shares) // 2]})
    return out


def profile(engine, model, prompt_ids, steps: int, trace_path: str, detail: bool,
            sweep_lengths=()) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, record_function

    # warm up outside the profiler: first-call allocations are cold start, not the bottleneck
    token = argmax(engine.prefill(prompt_ids))
    token = argmax(engine.decode(token))
    with torch.profiler.profile(activities=[ProfilerActivity.CPU], record_shapes=detail,
                                with_stack=detail, profile_memory=detail) as prof:
        with record_function("prefill"):
            token = argmax(engine.prefill(prompt_ids))
        for _ in range(steps):
            with record_function("decode"):
                token = argmax(engine.decode(token))
    prof.export_chrome_trace(trace_path)
    windows, ops = [], []
    for e in prof.events():
        if e.name in LABELS:
            windows.append((e.name, e.time_range.start, e.time_range.end))
        elif not e.name.startswith(("[", "ProfilerStep")):
            ops.append(OpRecord(e.name, e.time_range.start, e.self_cpu_time_total))
    phases = breakdown(windows, ops)
    parts = _step_parts(engine, model, prompt_ids, steps)
    if "decode" in phases:
        phases["decode"]["parts_ms"] = parts["parts_ms"]
        phases["decode"]["parts_step_ms"] = parts["step_ms"]
    return {
        "profiler": f"torch.profiler {torch.__version__}",
        "decode_steps": steps,
        "phases": phases,
        "trace_file": os.path.basename(trace_path),
        "trace_bytes": os.path.getsize(trace_path),
        "sweep": context_sweep(engine, model, prompt_ids, sweep_lengths) if sweep_lengths else [],
        "parts_note": "parts from forward hooks in a separate pass (wall time per decode step)",
    }
