"""Distance to the hardware limit, and the one-sentence bottleneck verdict per method.

Decode at batch 1 reads every weight once per step: floor = weight bytes read / bandwidth
(an embedding table read only through a one-row lookup does not count).
Prefill is compute-bound: floor = 2 x parameters x prompt tokens / GEMM peak (attention's
FLOPs left out: small at these prompt lengths). Efficiency = floor / measured time."""

from __future__ import annotations

from .. import defaults


def roofline(m, results) -> dict | None:
    hw = results.hardware
    if not hw or not m.ok or m.weight_bytes is None:
        return None
    bw, peak = hw["bandwidth_bytes_per_s"], hw["gemm_flops_per_s"]
    phases = (m.profile or {}).get("phases", {})
    if m.runs:
        tpot, ttft, source = m.figure("tpot_s").median, m.figure("ttft_s").median, "benchmark"
    elif (m.profile or {}).get("unprofiled"):
        u = m.profile["unprofiled"]
        tpot, ttft = u["decode_step_ms"] / 1e3, u["prefill_ms"] / 1e3
        source = "unprofiled steps of the profiling process (single samples)"
    else:
        return None
    params = results.model.get("parameters") or m.parameters
    # an embedding table read only through a one-row lookup is held but not streamed per step
    read = (m.details or {}).get("weight_bytes_read_per_step") or m.weight_bytes
    decode_floor = read / bw
    out = {
        "bandwidth_gb_s": bw / 1e9,
        "gemm_gflop_s": peak / 1e9,
        "weight_mb_per_step": read / 1e6,
        "decode_floor_ms": decode_floor * 1e3,
        "tpot_ms": tpot * 1e3,
        "decode_efficiency": decode_floor / tpot if tpot else None,
        "achieved_gb_s": read / tpot / 1e9 if tpot else None,
        "time_source": source,
    }
    if params:
        flops = 2 * params * results.prompt_tokens
        out.update(prefill_gflop=flops / 1e9, prefill_floor_ms=flops / peak * 1e3,
                   ttft_ms=ttft * 1e3, prefill_efficiency=(flops / peak) / ttft if ttft else None)
    return out


def _inflation(m) -> float | None:
    """Profiled decode step / unprofiled decode step: how much the profiler itself costs."""
    u = (m.profile or {}).get("unprofiled")
    decode = (m.profile or {}).get("phases", {}).get("decode")
    if not u or not decode or not u["decode_step_ms"]:
        return None
    return decode["wall_ms"] / u["decode_step_ms"]


def verdict(m, roof: dict | None, sweep_ratio: float | None) -> tuple[str, str]:
    """(bottleneck sentence with its evidence, suggested next step that follows from it)."""
    decode = (m.profile or {}).get("phases", {}).get("decode")
    if not decode:
        return "no decode profile", "run `inferlab profile` for this method"
    shares = dict(decode["categories_share"])  # of the profiled step
    wall = decode["wall_ms"]
    overhead_ms = decode["categories_ms"]["overhead"]
    overhead = shares.get("overhead", 0.0)
    u = (m.profile or {}).get("unprofiled")
    if u and u["decode_step_ms"] and wall > u["decode_step_ms"]:
        # the profiler's own cost lands partly outside operators: an overhead claim must hold
        # after taking the whole difference out of it, against the unprofiled step
        step = u["decode_step_ms"]
        overhead_ms = max(overhead_ms - (wall - step), 0.0)
        overhead = overhead_ms / step
        wall = step
    top_cat = max((c for c in shares if c != "overhead"), key=lambda c: shares[c])
    eff = (roof or {}).get("decode_efficiency")
    eff_text = f"; {eff:.0%} of the memory-bandwidth floor ({roof['decode_floor_ms']:.1f} ms)" if eff else ""
    if m.method == defaults.BASELINE_METHOD and sweep_ratio and sweep_ratio > defaults.VERDICT_SWEEP_GROWTH:
        return (f"decode recomputes the whole sequence: a step costs {sweep_ratio:.1f}x more at the "
                f"longest swept context than at the shortest ({top_cat} {shares[top_cat]:.0%} of a "
                f"{wall:.1f} ms profiled step{eff_text})",
                "keep a KV cache: each step then processes one token")
    if eff and eff >= defaults.VERDICT_MEMORY_BOUND:
        return (f"decode is memory-bound near the floor: {eff:.0%} of the bandwidth limit, "
                f"{roof['weight_mb_per_step']:.0f} MB of weights read per step at "
                f"{roof['achieved_gb_s']:.1f} GB/s",
                "read fewer bytes per step: int8/int4 weights, or a smaller model")
    if overhead >= defaults.VERDICT_OVERHEAD:
        return (f"decode is {overhead:.0%} framework overhead: the step spends "
                f"{overhead_ms:.1f} ms of {wall:.1f} ms outside any operator{eff_text}",
                "cut per-operator overhead: fuse or compile the step (torch.compile, ONNX Runtime)")
    if top_cat == "matmul":
        return (f"decode is matmul-bound ({shares['matmul']:.0%} of a {wall:.1f} ms step) but the "
                f"kernels stream weights below the machine's bandwidth{eff_text}",
                "a faster GEMV kernel (ONNX Runtime/MLAS, oneDNN) or fewer weight bytes (int8)")
    return (f"decode time is led by {top_cat} ({shares[top_cat]:.0%} of the profiled step, "
            f"{wall:.1f} ms unprofiled){eff_text}",
            NEXT_STEP.get(top_cat, f"look at the top {top_cat} operators in the table below"))


NEXT_STEP = {
    "layout/copies": "fewer, fused graph nodes: the step runs many small shape and copy operators "
                     "(graph-level transformer fusions, or a graph built for generation)",
    "elementwise": "fuse elementwise chains into their neighbours (compile, or fused graph kernels)",
    "attention": "a fused attention kernel (SDPA, GroupQueryAttention) and a preallocated KV cache",
    "normalization": "fused (skip) layer-norm kernels",
    "embedding/lookup": "check the gathers: shape gathers in an unfused graph, or a large lookup",
    "quantize/dequantize": "keep weights quantized inside the matmul kernel instead of "
                           "dequantizing them every step",
}
