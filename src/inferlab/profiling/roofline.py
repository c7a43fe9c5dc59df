"""Distance to the hardware limit, and the one-sentence bottleneck verdict per method.

Decode at batch 1 reads every weight once per step, and the KV cache up to the current
position: floor = (weight bytes read + KV-cache bytes read at the run's mean decode context) /
bandwidth (an embedding table read only through a one-row lookup does not count).
Prefill is compute-bound: FLOPs = 2 x block parameters x prompt tokens + 2 x LM-head
parameters (one position) + causal attention 2 x layers x prompt tokens^2 x hidden; floor =
FLOPs / the compute roof of the method's arithmetic: the int8 dot-product peak for a method
whose products take int8 activations, the fp32 GEMM peak for the others. Efficiency = floor /
measured time.

Bandwidth and both compute peaks are probed in the run (probe.py). The bandwidth ceiling is the
highest rate anything in the run reached: the probe's best, or a method's own rate when it
streamed faster (the report then says the probe understated the machine, or the bytes stayed
in cache). A compute roof is never raised to a method's rate: a prefill faster than its roof
is a probe bug, said in a warning, and its efficiency shows above 100 %.

A sweep's cells (`cell_limits`) count their own depth and batch, and judge each timed run
against the streaming bandwidth read just before it: the machine can change bandwidth state
between two runs."""

from __future__ import annotations

from .. import defaults


def probed_limits(probes: list[dict]) -> dict | None:
    """The range of a run's probes: bandwidth low/high and the best GEMM peak."""
    ok = [p for p in probes if p.get("bandwidth_bytes_per_s")]
    if not ok:
        return None
    bws = [p["bandwidth_bytes_per_s"] for p in ok]
    int8 = [p for p in ok if p.get("int8_ops_per_s")]
    return {"bandwidth_low": min(bws), "bandwidth_high": max(bws),
            "gemm_peak": max(p["gemm_flops_per_s"] for p in ok), "probes": len(ok),
            "int8_peak": max((p["int8_ops_per_s"] for p in int8), default=None),
            "int8_path": int8[0].get("int8_path") if int8 else None,
            "method": ok[0].get("method", "")}


def compute_roof(m, limits: dict) -> tuple[float, str]:
    """(operations per second, its name) that bounds a method's prefill: int8 dot products when
    its products take int8 activations and the run probed them, else fp32 GEMM."""
    if m.details.activation_bits == 8 and limits.get("int8_peak"):
        return limits["int8_peak"], f"int8 dot products ({limits['int8_path']})"
    return limits["gemm_peak"], "fp32 GEMM"


def step_bytes(m, arch: dict, context: float, sequences: int = 1) -> tuple[float, float]:
    """(weight bytes, KV-cache bytes) one decode step of `sequences` sequences reads, each with
    `context` positions cached on average (the weights once for all of them)."""
    weights = m.details.bytes_read_per_step or m.weight_bytes
    kv_value_bytes = m.details.kv_bytes_per_value if m.details.kv_bytes_per_value is not None else 4
    kv_per_position = (2 * arch["layers"] * arch["kv_heads"] * arch["head_dim"] * kv_value_bytes
                       if arch.get("layers") else 0)
    return weights, kv_per_position * context * sequences


def prefill_flops(arch: dict, prompt: int, depth: int = 0, sequences: int = 1) -> float | None:
    """FLOPs of a prefill of `prompt` tokens after `depth` cached ones, for each of `sequences`:
    the blocks' products per token, the LM head once, attention to the cache and causally
    within the prompt (2 x layers x hidden x prompt x (2 depth + prompt)). None without the
    model's parameter counts."""
    if not arch.get("block_parameters"):
        return None
    return sequences * (2 * arch["block_parameters"] * prompt + 2 * arch["lm_head_parameters"]
                        + 2 * arch["layers"] * arch["hidden"] * prompt * (2 * depth + prompt))


def method_rates(m, results, figures: dict) -> dict | None:
    """What one method moved and computed per step, and how fast (before any ceiling).
    figures: the method's summaries (derive.method_figures)."""
    if m.status not in ("ok", "running") or m.weight_bytes is None:
        return None
    if m.runs:
        tpot, ttft = figures["tpot_s"].median, figures["ttft_s"].median
        source = "benchmark medians"
    elif m.profile and m.profile.unprofiled_decode_step_ms:
        tpot, ttft = m.profile.unprofiled_decode_step_ms / 1e3, m.profile.unprofiled_prefill_ms / 1e3
        source = "unprofiled steps of the profiling process (single samples)"
    else:
        return None
    arch = results.model.get("architecture") or {}
    n, new = results.prompt_tokens, results.config.get("new_tokens", 2)
    context = n + new / 2  # mean number of cached positions a decode step reads
    weights, kv = step_bytes(m, arch, context)
    out = {"weight_mb_per_step": weights / 1e6, "kv_mb_per_step": kv / 1e6,
           "decode_context": context, "bytes_per_step": weights + kv, "tpot_ms": tpot * 1e3,
           "achieved_gb_s": (weights + kv) / tpot / 1e9 if tpot else None, "ttft_ms": ttft * 1e3,
           "time_source": source}
    if (flops := prefill_flops(arch, n)) is not None:
        out.update(prefill_gflop=flops / 1e9,
                   achieved_gflop_s=flops / ttft / 1e9 if ttft else None)
    return out


def rooflines(results, figures: dict) -> tuple[dict, dict | None]:
    """({method: roofline}, ceilings): floors and efficiencies against the highest rates seen.
    figures: {method: its summaries} (derive.method_figures)."""
    limits = probed_limits(results.probes)
    rates = {m.method: r for m in results.methods if (r := method_rates(m, results, figures[m.method]))}
    if not limits or not rates:
        return {}, None
    bw_rates = {k: r["achieved_gb_s"] * 1e9 for k, r in rates.items() if r.get("achieved_gb_s")}
    fastest_bw = max(bw_rates, key=bw_rates.get, default=None)
    ceil = {**limits, "bandwidth": limits["bandwidth_high"], "bandwidth_source": "probe", "above_roof": []}
    if fastest_bw and bw_rates[fastest_bw] > ceil["bandwidth"]:
        ceil["bandwidth"], ceil["bandwidth_source"] = bw_rates[fastest_bw], fastest_bw
    by_name = {m.method: m for m in results.methods}
    out = {}
    for name, r in rates.items():
        floor = r["bytes_per_step"] / ceil["bandwidth"]
        roof = {**r, "bandwidth_gb_s": ceil["bandwidth"] / 1e9,
                "decode_floor_ms": floor * 1e3,
                "decode_floor_range_ms": [r["bytes_per_step"] / limits["bandwidth_high"] * 1e3,
                                          r["bytes_per_step"] / limits["bandwidth_low"] * 1e3],
                "decode_efficiency": floor / (r["tpot_ms"] / 1e3) if r["tpot_ms"] else None}
        if r.get("prefill_gflop"):
            ops, kind = compute_roof(by_name[name], limits)
            pf = r["prefill_gflop"] * 1e9 / ops
            roof.update(compute_roof_gops=ops / 1e9, compute_roof=kind, prefill_floor_ms=pf * 1e3,
                        prefill_efficiency=pf / (r["ttft_ms"] / 1e3) if r["ttft_ms"] else None)
            if r.get("achieved_gflop_s") and r["achieved_gflop_s"] * 1e9 > ops:
                ceil["above_roof"].append([name, r["achieved_gflop_s"], ops / 1e9, kind])
        out[name] = roof
    return out, ceil


def probes_of_kind(results, kind: str | None) -> list[dict]:
    """The run's probes of one kind of machine (a cluster's probes name their node; a local
    run's name none, and are all of its one machine)."""
    return [p for p in results.probes if (p.get("node") or {}).get("kind", kind) == kind]


def cell_limits(results, cell, rows: list[dict]) -> dict[str, dict]:
    """{method: its distance to the hardware limits} in one sweep cell (rows: the cell's derived
    rows, medians in ms), with the cell's own workload: `depth + prompt + new / 2` positions
    cached at a mean decode step, `batch` sequences per step (the weights read once for all),
    the prefill attending to the depth.

    Bandwidth: each timed run against the streaming reading taken just before it (cells.py; the
    machine can change state between two runs), raised to the run's own rate where it read
    faster; decode efficiency is the median over the runs, the floor is at the median ceiling.
    Runs without readings (results from before them): the best reading around the cell, else
    the run's probes of its kind of machine, raised to the fastest method's rate in the cell, as
    in `rooflines`. Compute roofs: the run's probes of that kind."""
    from statistics import median

    arch = results.model.get("architecture") or {}
    c = cell.cell
    limits = probed_limits(probes_of_kind(results, cell.node.get("kind"))) or {}
    around = [v["bandwidth_bytes_per_s"] for v in cell.conditions.values() if v.get("bandwidth_bytes_per_s")]
    context = c.depth + c.prompt_tokens + c.new_tokens / 2
    moved = {}  # method: (its record, its row, weight and KV bytes per step)
    for row in rows:
        m = results.method(row["method"])
        if row.get("tpot_ms") and m is not None and m.weight_bytes is not None:
            moved[row["method"]] = (m, row, *step_bytes(m, arch, context, c.batch))
    rates = {name: (w + kv) / (row["tpot_ms"] / 1e3) for name, (_, row, w, kv) in moved.items()}
    shared = max(around) if around else limits.get("bandwidth_high")
    if rates and (shared is None or max(rates.values()) > shared):
        shared = max(rates.values())
    out = {}
    for name, (m, row, weights, kv) in moved.items():
        runs, total = cell.method(name).runs, weights + kv
        if runs and all(r.bandwidth_bytes_per_s for r in runs):
            ceilings = [max(r.bandwidth_bytes_per_s, total / r.tpot_s) for r in runs]
            efficiency = median(total / r.tpot_s / ceiling for r, ceiling in zip(runs, ceilings))
            bandwidth = median(ceilings)
        else:
            bandwidth = shared
            efficiency = rates[name] / bandwidth
        out[name] = {"bandwidth_gb_s": bandwidth / 1e9, "weight_mb_per_step": weights / 1e6,
                     "kv_mb_per_step": kv / 1e6, "achieved_gb_s": rates[name] / 1e9,
                     "decode_floor_ms": total / bandwidth * 1e3, "decode_efficiency": efficiency}
        flops = prefill_flops(arch, c.prompt_tokens, c.depth, c.batch)
        if flops and limits.get("gemm_peak") and row.get("ttft_ms"):
            ops, kind = compute_roof(m, limits)
            out[name].update(compute_roof_gops=ops / 1e9, compute_roof=kind, prefill_floor_ms=flops / ops * 1e3,
                             prefill_efficiency=flops / ops / (row["ttft_ms"] / 1e3))
    return out


def ceiling_warnings(ceil: dict | None) -> list[str]:
    """Say which figure is wrong when a method outran the probe."""
    out = []
    if not ceil:
        return out
    if ceil["bandwidth_source"] != "probe":
        out.append(f"{ceil['bandwidth_source']} streamed {ceil['bandwidth'] / 1e9:.1f} GB/s, above "
                   f"the probe's best {ceil['bandwidth_high'] / 1e9:.1f} GB/s: the probe understates "
                   "this machine's bandwidth (or part of the method's bytes stayed in cache); the "
                   "decode floors use the method's rate")
    for name, rate, roof, kind in ceil.get("above_roof", []):
        out.append(f"{name}'s prefill reached {rate:.0f} GFLOP/s, above its compute roof ({kind}, "
                   f"probed {roof:.0f} GOPS): a probe that understates the machine, or arithmetic the "
                   "count misses; the roof is kept, so its prefill efficiency reads above 100 %")
    return out


def sweep_growth(m) -> float | None:
    """Decode step at the longest swept context over the step at the shortest."""
    sweep = m.profile.sweep if m.profile else []
    if len(sweep) < 2:
        return None
    return sweep[-1].step_ms / sweep[0].step_ms


def low_bit(m) -> bool:
    """Whether the method already reads 8-bit or smaller weights."""
    return m.details.weight_bits is not None and m.details.weight_bits <= 8


INT8_DOT_FLAGS = ("avx_vnni", "avx512_vnni", "amx_int8")  # int8 dot products in one instruction


def verdict(m, roof: dict | None, sweep_ratio: float | None,
            cpu_flags: list[str] | tuple = ()) -> tuple[str, str]:
    """(bottleneck sentence with its evidence, suggested next step that follows from it).
    cpu_flags: the run's machine flags, for the advice to a low-bit method."""
    decode = m.profile.decode if m.profile else None
    if decode is None:
        return "no decode profile", "run `inferlab profile` for this method"
    shares = dict(decode.categories_share)  # of the profiled step
    wall = decode.wall_ms
    overhead_ms = decode.categories_ms["overhead"]
    overhead = shares.get("overhead", 0.0)
    unprofiled = m.profile.unprofiled_decode_step_ms
    if unprofiled and wall > unprofiled:
        # the profiler's own cost lands partly outside operators: an overhead claim must hold
        # after taking the whole difference out of it, against the unprofiled step
        step = unprofiled
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
        sentence = (f"decode is memory-bound near the floor: {eff:.0%} of the bandwidth limit, "
                    f"{roof['weight_mb_per_step']:.0f} MB of weights read per step at "
                    f"{roof['achieved_gb_s']:.1f} GB/s")
        if not low_bit(m):
            return sentence, "read fewer bytes per step: int8/int4 weights, or a smaller model"
        # already low-bit: what is left is the rate its threads read memory at
        # (measured on native-int4: its 4-bit kernel spends nearly as long unpacking and
        # multiplying as reading, and the two overlap only in part)
        return sentence, (f"its weights are already low-bit, so the rest is how fast its threads "
                          f"stream and unpack them (the probe's best: {roof['bandwidth_gb_s']:.1f} GB/s): "
                          f"fewer instructions per weight and more memory-level parallelism in its "
                          f"kernels, fewer bits only where the quality gate allows, or a machine with "
                          f"more memory bandwidth")
    if overhead >= defaults.VERDICT_OVERHEAD:
        return (f"decode is {overhead:.0%} framework overhead: the step spends "
                f"{overhead_ms:.1f} ms of {wall:.1f} ms outside any operator{eff_text}",
                "cut per-operator overhead: fuse or compile the step (torch.compile, ONNX Runtime)")
    if top_cat == "matmul":
        sentence = (f"decode is matmul-bound ({shares['matmul']:.0%} of a {wall:.1f} ms step) but the "
                    f"kernels stream weights below the machine's bandwidth{eff_text}")
        if not low_bit(m):
            return sentence, "a faster GEMV kernel (ONNX Runtime/MLAS, oneDNN) or fewer weight bytes (int8)"
        # its weights are already small: the kernels' unpacking and multiplying is the limit
        dot = [f for f in INT8_DOT_FLAGS if f in cpu_flags]
        cpu = (f"even with this CPU's {', '.join(dot)}" if dot else
               "and this CPU has no int8 dot-product instructions (AVX-VNNI, AVX-512 VNNI or AMX)")
        return sentence, (f"its low-bit kernels unpack and multiply slower than memory delivers "
                          f"the weights, {cpu}: a faster kernel for its format, or a CPU with "
                          f"more int8 throughput")
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
