"""ONNX Runtime engines: ORT's own profiler (a Chrome-trace JSON) over a prefill and a few
decode steps, turned into the same tables as the PyTorch engines."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

from ..harness import generate
from .breakdown import OpRecord, breakdown
from .parts import part_of


def profile(ort_driver, prompt_ids, steps: int, trace_path: str) -> dict:
    """A second session of the engine's graph with ORT's profiler on (`ort_driver(prefix)`
    makes it), driven by the harness's loop."""
    import onnxruntime

    tmp = tempfile.mkdtemp(prefix="inferlab-ortprof-")
    try:
        ort = ort_driver(os.path.join(tmp, "ort"))
        generate(ort, prompt_ids, 2)  # warm-up pair; the last steps + 1 session runs are kept
        generate(ort, prompt_ids, steps + 1)
        raw = ort.session.end_profiling()
        shutil.copyfile(raw, trace_path)
        with open(raw) as f:
            events = json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs = sorted(runs, key=lambda e: e["ts"])[-(steps + 1):]
    windows = [("prefill" if i == 0 else "decode", r["ts"], r["ts"] + r["dur"]) for i, r in enumerate(runs)]
    ops = [
        OpRecord(e.get("args", {}).get("op_name", "?"), e["ts"], e["dur"], part_of(e["name"]))
        for e in events
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
    ]
    return {
        "profiler": f"onnxruntime {onnxruntime.__version__} session profiling",
        "decode_steps": steps,
        "phases": breakdown(windows, ops),
        "trace_file": os.path.basename(trace_path),
        "trace_bytes": os.path.getsize(trace_path),
        "sweep": [],
        "parts_note": "parts from ONNX node names (kernel time; the rest of the step is 'overhead')",
    }
