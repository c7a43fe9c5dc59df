"""The profiling pass of one method, in the method's worker: the harness's generation loop
under the profiler the engine declares (Engine.profiler: torch.profiler for PyTorch engines,
ONNX Runtime's own for ONNX engines, the native decoder's own clock), plus the same steps
unprofiled to show what the profiler costs."""

from __future__ import annotations

from ..engines.base import EngineUnsupported
from ..harness import generate


def unprofiled_steps(engine, prompt_ids, steps: int) -> dict:
    """The same calls without a profiler (the harness's clocks)."""
    generate(engine, prompt_ids, 2)  # warm, as the profilers do
    g = generate(engine, prompt_ids, steps + 1)
    return {"prefill_ms": g.ttft_s * 1e3, "decode_step_ms": g.tpot_s * 1e3}


def profile_engine(engine, method: str, request, progress) -> dict:
    """Profile a prefill and `request.steps` decode steps of a loaded engine; write its trace."""
    sweep = tuple(request.sweep)
    progress(f"profiling: prefill + {request.steps} decode steps"
             + (f", then context sweep {list(sweep)}" if sweep else ""))
    if engine.profiler is None:
        raise EngineUnsupported(f"{method} cannot be profiled: inferlab has no profiler for its framework")
    unprofiled = unprofiled_steps(engine, request.prompt_ids, request.steps)
    if engine.profiler == "torch":
        from . import torch_profile

        data = torch_profile.profile(engine, engine.model, request.prompt_ids, request.steps,
                                     request.trace_path, request.detail, sweep)
    elif engine.profiler == "onnxruntime":  # a second, profiled session of the same graph
        from . import ort_profile

        data = ort_profile.profile(engine.ort_driver, request.prompt_ids, request.steps,
                                   request.trace_path)
    else:
        from . import native_profile

        data = native_profile.profile(engine, request.prompt_ids, request.steps, request.trace_path)
    data["unprofiled"] = unprofiled
    progress(f"profiling: trace {request.trace_path} ({data['trace_bytes'] / 1e6:.1f} MB)")
    return data
