"""PyTorch engines: torch.profiler over a labelled prefill and a few decode steps, plus a
separate pass with module hooks for the time by model part (hooks would distort the trace)."""

from __future__ import annotations

import contextlib
import os
import time
from collections import defaultdict

from ..harness import generate
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


class _StepClock:
    """Wraps each decode call of the harness's loop: the call's wall time, its share spent in
    attention, and the time of every model part summed over the calls."""

    def __init__(self, timer: PartTimer):
        self.timer, self.steps, self.shares = timer, [], []
        self.parts: dict[str, float] = defaultdict(float)

    def __call__(self, phase: str):
        return self if phase == "decode" else contextlib.nullcontext()

    def __enter__(self):
        self.timer.reset()
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        dt = time.perf_counter() - self.t0
        self.steps.append(dt)
        self.shares.append(self.timer.totals.get("attention", 0.0) / dt)
        for part, t in self.timer.totals.items():
            self.parts[part] += t
        return False


def _step_parts(engine, model, prompt_ids, steps) -> dict:
    """Mean ms per decode step by model part; 'other' is the rest of the step."""
    timer = PartTimer(model)
    clock = _StepClock(timer)
    try:
        generate(engine, prompt_ids, steps + 1, around=clock)
    finally:
        timer.remove()
    wall = sum(clock.steps) / steps
    parts = {p: clock.parts.get(p, 0.0) / steps for p in PARTS}
    parts["other"] = max(wall - sum(v for k, v in parts.items() if k != "other"), 0.0)
    return {"step_ms": wall * 1e3, "parts_ms": {k: v * 1e3 for k, v in parts.items()}}


def context_sweep(engine, model, prompt_ids, lengths, reps: int = 3) -> list[dict]:
    """Decode-step time and attention share after contexts of several lengths."""
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", 1024)
    out = []
    for length in lengths:
        if length + reps + 1 > limit:
            continue
        ids = (list(prompt_ids) * (length // max(len(prompt_ids), 1) + 1))[:length]
        timer = PartTimer(model)
        clock = _StepClock(timer)
        try:
            generate(engine, ids, reps + 1, around=clock)
        finally:
            timer.remove()
        out.append({"context": length, "step_ms": sorted(clock.steps)[reps // 2] * 1e3,
                    "attention_share": sorted(clock.shares)[reps // 2]})
    return out


def profile(engine, model, prompt_ids, steps: int, trace_path: str, detail: bool,
            sweep_lengths=()) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, record_function

    # warm up outside the profiler: first-call allocations are cold start, not the bottleneck
    generate(engine, prompt_ids, 2)
    with torch.profiler.profile(activities=[ProfilerActivity.CPU], record_shapes=detail,
                                with_stack=detail, profile_memory=detail) as prof:
        generate(engine, prompt_ids, steps + 1, around=record_function)
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
