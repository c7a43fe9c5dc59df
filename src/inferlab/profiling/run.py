"""The profiling pass of one method, in the method's worker: the harness's generation loop
under the profiler its framework has (torch.profiler for PyTorch engines, ONNX Runtime's own
for ONNX engines, the native decoder's own clock), plus the same steps unprofiled to show what the profiler costs."""

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
    unprofiled = unprofiled_steps(engine, request.prompt_ids, request.steps)
    if hasattr(engine, "model") and hasattr(engine.model, "named_modules"):  # a torch module
        from . import torch_profile

        data = torch_profile.profile(engine, engine.model, request.prompt_ids, request.steps,
                                     request.trace_path, request.detail, sweep)
    elif hasattr(engine, "ort_driver"):  # an ONNX Runtime engine
        from . import ort_profile

        data = ort_profile.profile(engine.ort_driver, request.prompt_ids, request.steps,
                                   request.trace_path)
    elif hasattr(engine, "decoder") and hasattr(engine.decoder, "phase_seconds"):  # the native decoder
        from . import native_profile

        data = native_profile.profile(engine.decoder, request.prompt_ids, request.steps, request.trace_path)
    else:
        raise EngineUnsupported(f"{method} cannot be profiled: inferlab has no profiler for its framework")
    data["unprofiled"] = unprofiled
    progress(f"profiling: trace {request.trace_path} ({data['trace_bytes'] / 1e6:.1f} MB)")
    return data
