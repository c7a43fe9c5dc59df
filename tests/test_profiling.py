"""Profiling: category table, breakdown arithmetic, traces, hardware limits, roofline."""

import json
import os

import pytest

from inferlab.engines import engine_class
from inferlab import probe
from inferlab.profiling.breakdown import OpRecord, breakdown
from inferlab.profiling.categories import CATEGORIES, categorize
from inferlab.profiling.parts import part_of
from inferlab.derive import method_figures
from inferlab.profiling.roofline import ceiling_warnings, rooflines, verdict
from inferlab.profiling.run import profile_engine
from inferlab.protocol import Profile
from inferlab.derive_cells import cell_rows
from inferlab.results import (Cell, CellResult, EngineDetails, MethodResult, PhaseProfile, ProfileResult, RunResults,
                              RunSample)

PROMPT = [5, 17, 42, 99, 3, 250, 7, 8, 9, 10]


@pytest.mark.parametrize("op, category", [
    ("aten::mm", "matmul"), ("aten::addmm", "matmul"), ("quantized::linear_dynamic", "matmul"),
    ("MatMulNBits", "matmul"), ("MatMulInteger", "matmul"), ("Gemm", "matmul"),
    ("aten::_weight_int8pack_mm", "matmul"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention"),
    ("GroupQueryAttention", "attention"), ("aten::layer_norm", "normalization"),
    ("aten::rsqrt", "normalization"), ("SimplifiedLayerNormalization", "normalization"),
    ("aten::silu", "activation"), ("aten::gelu", "activation"), ("FastGelu", "activation"),
    ("aten::add", "elementwise"), ("Mul", "elementwise"), ("aten::cat", "layout/copies"),
    ("aten::view", "layout/copies"), ("Reshape", "layout/copies"), ("Transpose", "layout/copies"),
    ("DynamicQuantizeLinear", "quantize/dequantize"), ("aten::quantize_per_tensor", "quantize/dequantize"),
    ("aten::embedding", "embedding/lookup"), ("Gather", "embedding/lookup"),
    ("aten::argmax", "sampling"), ("some::unknown_op", "other"),
])
def test_category_table(op, category):
    assert categorize(op) == category
    assert category in CATEGORIES


@pytest.mark.parametrize("name, part", [
    ("model.layers.3.self_attn.q_proj", "attention"), ("/model/layers.3/self_attn/q_proj/MatMul", "attention"),
    ("transformer.h.0.attn.c_attn", "attention"), ("model.layers.0.mlp.down_proj", "mlp"),
    ("/transformer/h.1/mlp/c_fc/Gemm", "mlp"), ("model.embed_tokens", "embedding"),
    ("transformer.wte", "embedding"), ("model.norm", "final norm + lm head"),
    ("lm_head", "final norm + lm head"), ("/lm_head/MatMul", "final norm + lm head"),
    ("transformer.ln_f", "final norm + lm head"), ("model.layers.2.input_layernorm", "block norms"),
    ("transformer.h.0.ln_1", "block norms"), ("model.rotary_emb", "other"),
])
def test_model_parts_from_names(name, part):
    assert part_of(name) == part


def test_breakdown_shares_add_up_and_overhead_is_the_gap():
    windows = [("prefill", 0, 100), ("decode", 100, 150), ("decode", 150, 200)]
    ops = [OpRecord("aten::mm", 10, 60), OpRecord("aten::add", 80, 10),
           OpRecord("aten::mm", 105, 30), OpRecord("aten::mm", 155, 30),
           OpRecord("aten::mm", 300, 999)]  # outside every window: ignored
    b = breakdown(windows, ops)
    pre, dec = b["prefill"], b["decode"]
    assert pre["wall_ms"] == pytest.approx(0.1)
    assert pre["categories_ms"]["matmul"] == pytest.approx(0.06)
    assert pre["categories_ms"]["overhead"] == pytest.approx(0.03)
    assert dec["calls"] == 2 and dec["wall_ms"] == pytest.approx(0.05)
    assert dec["categories_ms"]["matmul"] == pytest.approx(0.03)  # per call
    for phase in (pre, dec):
        assert sum(phase["categories_share"].values()) == pytest.approx(1.0)
    assert dec["top_ops"][0]["op"] == "aten::mm" and dec["top_ops"][0]["calls_per_phase"] == 1


@pytest.fixture(scope="module", params=["kv-cache", "onnx"])
def profiled(request, tiny_refs, tmp_path_factory):
    engine = engine_class(request.param)(tiny_refs["llama"], threads=1)
    engine.prepare()
    engine.load()
    trace = str(tmp_path_factory.mktemp("trace") / "trace.json")
    sweep = [16, 32] if request.param == "kv-cache" else []
    job = Profile(prompt_ids=PROMPT, steps=3, detail=False, sweep=sweep, trace_path=trace)
    return request.param, profile_engine(engine, request.param, job, lambda msg: None), trace


def test_profile_breakdown_sums_to_phase_time(profiled):
    method, prof, trace = profiled
    for name, phase in prof["phases"].items():
        total = sum(phase["categories_ms"].values())
        assert total == pytest.approx(phase["wall_ms"], rel=0.02), name
        assert phase["categories_ms"]["overhead"] >= 0
    assert prof["phases"]["decode"]["calls"] == 3 and prof["phases"]["prefill"]["calls"] == 1
    top = prof["phases"]["decode"]["top_ops"]
    assert top == sorted(top, key=lambda o: o["self_ms"], reverse=True)
    assert not any(o["op"] in ("decode", "prefill") for o in top)  # labels are not operators
    assert prof["phases"]["decode"]["categories_ms"]["matmul"] > 0


def test_trace_is_written_and_parses_as_json(profiled):
    _, prof, trace = profiled
    assert os.path.getsize(trace) == prof["trace_bytes"] > 0
    with open(trace) as f:
        data = json.load(f)
    # a Chrome trace (a list of events, or a dict with traceEvents) that holds the operators the
    # profile's table names: the trace and the table come from the same profiled steps
    events = data["traceEvents"] if isinstance(data, dict) else data
    names = {e.get("name") for e in events} | {(e.get("args") or {}).get("op_name") for e in events}
    timed = [e for e in events if e.get("ph") == "X" and e.get("dur", 0) >= 0]
    top = [o["op"] for o in prof["phases"]["decode"]["top_ops"]]
    assert top and len(timed) >= len(top) and set(top) <= names, set(top) - names


def test_context_sweep_reports_each_length(profiled):
    method, prof, _ = profiled
    if method != "kv-cache":
        assert prof["sweep"] == []
        return
    assert [s["context"] for s in prof["sweep"]] == [16, 32]
    for s in prof["sweep"]:
        assert s["step_ms"] > 0 and 0 < s["attention_share"] < 1


def test_bandwidth_gemm_and_int8_peaks_are_positive():
    from inferlab.engines.native import library

    first = probe.measure(threads=1, nbytes=32 << 20)
    assert first["bandwidth_bytes_per_s"] > 1e8 and first["gemm_flops_per_s"] > 1e8
    assert first["bandwidth_bytes_per_s"] == max(first["bandwidth_gemv_bytes_per_s"], first["bandwidth_reduction_bytes_per_s"],
                                                 first["bandwidth_stream_bytes_per_s"] or 0)
    if library.missing_cpu_flags():
        assert first["int8_ops_per_s"] is None and "lacks" in first["int8_note"]
        assert first["bandwidth_stream_bytes_per_s"] is None
    else:  # int8 dot products outrun fp32 multiply-adds on every x86 CPU with AVX2
        assert first["bandwidth_stream_bytes_per_s"] > 1e8
        assert first["int8_path"] == library.best_path() and first["int8_ops_per_s"] > first["gemm_flops_per_s"]


def test_a_streaming_reading_leaves_no_thread_running():
    """A sweep reads the bandwidth just before each timed run: nothing of the reading may go on
    beside the run (OpenMP's pool spun 8-10 ms of CPU after each reading)."""
    import time

    from inferlab.engines.native import library

    if library.missing_cpu_flags():
        pytest.skip(f"the native library needs {', '.join(library.missing_cpu_flags())}")
    assert probe.stream_rate(2, 32 << 20) > 1e8
    cpu = time.process_time()
    time.sleep(0.05)
    assert time.process_time() - cpu < 0.003
    assert library.stream_bandwidth(0, 32 << 20) is None and library.stream_bandwidth(2, 1 << 20) is None


ARCH = {"layers": 2, "kv_heads": 1, "head_dim": 4, "hidden": 8, "block_parameters": 900_000,
        "lm_head_parameters": 100_000}


def known_run(method: str, weight_bytes: int):
    """10 prompt tokens, 5 new; probes of 8 and 10 GB/s, 100 GFLOP/s; TTFT 1 ms, TPOT 40 ms."""
    r = RunResults(config={"new_tokens": 5}, machine={}, prompt_tokens=10,
                   model={"name": "m", "parameters": 1_000_000, "architecture": ARCH})
    r.probes = [{"bandwidth_bytes_per_s": 8e9, "gemm_flops_per_s": 100e9},
                {"bandwidth_bytes_per_s": 10e9, "gemm_flops_per_s": 90e9}]
    m = MethodResult(method=method, status="ok", weight_bytes=weight_bytes,
                     runs=[RunSample(ttft_s=0.001, e2e_s=0.001 + 0.04 * 4, itl_s=[0.04] * 4)] * 5)
    r.methods = [m]
    return r, m


def test_roofline_arithmetic_on_known_inputs():
    r, m = known_run("kv-cache", 200_000_000)
    roofs, ceiling = rooflines(r, method_figures(r))
    roof = roofs["kv-cache"]
    # KV cache: 2 (K, V) x 2 layers x 1 head x 4 dims x 4 bytes x 12.5 mean positions = 800 B
    assert roof["kv_mb_per_step"] == pytest.approx(800 / 1e6)
    assert roof["decode_floor_ms"] == pytest.approx(200_000_800 / 10e9 * 1e3)  # at the best probe
    assert roof["decode_floor_range_ms"] == pytest.approx([20.00008, 25.0001])
    assert roof["tpot_ms"] == pytest.approx(40.0)
    assert roof["decode_efficiency"] == pytest.approx(0.5, rel=1e-4)
    # LM head on one position only; causal attention 2 x layers x n^2 x hidden
    assert roof["prefill_gflop"] == pytest.approx((2 * 900_000 * 10 + 2 * 100_000 + 2 * 2 * 100 * 8) / 1e9)
    assert roof["prefill_floor_ms"] == pytest.approx(roof["prefill_gflop"] / 100 * 1e3)
    assert ceiling["bandwidth_source"] == "probe" and ceiling_warnings(ceiling) == []
    m.profile = decode_profile(40.0, {"matmul": 0.3, "overhead": 0.6, "attention": 0.1}, {"overhead": 24.0})
    sentence, step = verdict(m, roof, None)
    assert "60% framework overhead" in sentence and "compile" in step


def decode_profile(wall_ms, shares, ms, unprofiled_step_ms=None) -> ProfileResult:
    """A profile of one decode step: its wall time, its categories' shares and times."""
    return ProfileResult("made up", 1, {"decode": PhaseProfile(1, wall_ms, ms, shares)},
                         unprofiled_prefill_ms=1.0 if unprofiled_step_ms else None,
                         unprofiled_decode_step_ms=unprofiled_step_ms)


@pytest.mark.parametrize("activation_bits, roof_gops", [(8, 400), (32, 100)])
def test_prefill_is_judged_against_the_roof_of_its_arithmetic(activation_bits, roof_gops):
    r, m = known_run("m", 200_000_000)
    r.probes[0].update(int8_ops_per_s=400e9, int8_path="avx512-vnni")
    m.details.activation_bits = activation_bits
    roof = rooflines(r, method_figures(r))[0]["m"]
    assert roof["compute_roof_gops"] == pytest.approx(roof_gops)
    assert roof["prefill_floor_ms"] == pytest.approx(roof["prefill_gflop"] / roof_gops * 1e3)
    assert ("int8" in roof["compute_roof"]) == (activation_bits == 8)


def test_a_prefill_above_its_roof_is_a_probe_bug_not_a_new_roof():
    r, m = known_run("m", 200_000_000)  # 18.2 MFLOP in a 1 ms TTFT: 18 GFLOP/s
    for p in r.probes:
        p["gemm_flops_per_s"] = 9e9
    roofs, ceiling = rooflines(r, method_figures(r))
    assert roofs["m"]["compute_roof_gops"] == pytest.approx(9.0)  # kept
    assert roofs["m"]["prefill_efficiency"] == pytest.approx(18.2 / 9, rel=1e-3)  # shown above 100 %
    assert "m's prefill reached 18 GFLOP/s, above its compute roof (fp32 GEMM" in ceiling_warnings(ceiling)[0]


def test_a_method_faster_than_the_probe_sets_the_ceiling_and_is_named():
    r, m = known_run("onnx", 600_000_000)  # 600 MB per 40 ms step: 15 GB/s > the probe's 10
    roofs, ceiling = rooflines(r, method_figures(r))
    assert roofs["onnx"]["decode_efficiency"] == pytest.approx(1.0)  # never above 100 %
    assert ceiling["bandwidth_source"] == "onnx"
    assert "onnx streamed 15.0 GB/s, above the probe's best 10.0 GB/s" in ceiling_warnings(ceiling)[0]


def known_cell(readings: list[float | None], *methods: tuple[str, int, float],
               run_readings: tuple = (None, None, None)) -> tuple[RunResults, CellResult]:
    """A sweep cell pp10+tg4 @ d100, batch 2, with these bandwidth readings around it and
    (method, weight bytes, TPOT ms) in three runs each (TTFT 2 ms), read before at
    run_readings; the run's probes: 10 GB/s, 100 GFLOP/s."""
    r, _ = known_run("unused", 1)
    r.probes = [{"bandwidth_bytes_per_s": 10e9, "gemm_flops_per_s": 100e9}]
    r.methods, runs = [], []
    for name, weights, tpot_ms in methods:
        r.methods.append(MethodResult(method=name, status="ok", weight_bytes=weights))
        runs.append(MethodResult(method=name, status="ok", runs=[RunSample(
            ttft_s=0.002, e2e_s=0.002 + 3 * tpot_ms / 1e3, itl_s=[tpot_ms / 1e3] * 3, bandwidth_bytes_per_s=b)
            for b in run_readings]))
    cell = CellResult(cell=Cell(10, 4, depth=100, batch=2), methods=runs,
                      conditions={w: {"bandwidth_bytes_per_s": b} for w, b in zip(("before", "after"), readings)})
    r.cells = [cell]
    return r, cell


def test_a_sweep_cell_s_floors_count_its_depth_batch_and_own_bandwidth():
    r, cell = known_cell([8e9, 12e9], ("a", 200_000_000, 40.0))
    rows = cell_rows(r)
    a = rows[0]
    # 2 sequences x 2 (K, V) x 2 layers x 1 head x 4 dims x 4 bytes x (100 + 10 + 4 / 2) positions
    kv = 2 * 2 * 2 * 1 * 4 * 4 * 112
    assert a["kv_mb_per_step"] == pytest.approx(kv / 1e6)
    assert a["bandwidth_gb_s"] == pytest.approx(12.0)  # the best reading around the cell, not the run's probe
    assert a["decode_floor_ms"] == pytest.approx((200_000_000 + kv) / 12e9 * 1e3)
    assert a["decode_efficiency"] == pytest.approx(a["decode_floor_ms"] / 40.0)
    # per sequence: blocks 2 x 900k x 10, the LM head once, attention 2 x 2 x 8 x 10 x (2 x 100 + 10)
    flops = 2 * (2 * 900_000 * 10 + 2 * 100_000 + 2 * 2 * 8 * 10 * 210)
    assert a["prefill_floor_ms"] == pytest.approx(flops / 100e9 * 1e3)
    assert a["prefill_efficiency"] == pytest.approx(a["prefill_floor_ms"] / 2.0)


def test_each_run_is_judged_against_the_reading_just_before_it():
    # the machine changed state within the cell: 8, 30 and 5 GB/s before the three 40 ms steps of
    # 200 MB (5 GB/s each); the cell's best reading (30) would judge every run against that
    r, cell = known_cell([8e9, 30e9], ("a", 200_000_000, 40.0), run_readings=(8e9, 30e9, 5e9))
    a = cell_rows(r)[0]
    rate = (200_000_000 + 2 * 2 * 2 * 1 * 4 * 4 * 112) / 0.04
    assert a["decode_efficiency"] == pytest.approx(rate / 8e9)  # the median of 5/8, 5/30 and 1 (5 >= 5)
    assert a["bandwidth_gb_s"] == pytest.approx(8.0)  # the median of the runs' ceilings
    # a run faster than its reading: the ceiling is its own rate, never an efficiency above 100 %
    r, cell = known_cell([4e9], ("a", 200_000_000, 40.0), run_readings=(4e9, 4e9, 4e9))
    assert cell_rows(r)[0]["decode_efficiency"] == pytest.approx(1.0)


def test_a_sweep_cell_without_readings_uses_the_probes_and_a_faster_method_raises_the_ceiling():
    r, cell = known_cell([None, None], ("a", 200_000_000, 40.0))
    assert cell_rows(r)[0]["bandwidth_gb_s"] == pytest.approx(10.0)  # the run's probe
    r, cell = known_cell([8e9, 9e9], ("a", 200_000_000, 40.0), ("fast", 600_000_000, 40.0))
    rows = {row["method"]: row for row in cell_rows(r)}
    assert rows["fast"]["decode_efficiency"] == pytest.approx(1.0)  # never above 100 %
    assert rows["a"]["bandwidth_gb_s"] == pytest.approx(rows["fast"]["achieved_gb_s"])


def test_verdict_removes_profiler_cost_and_names_memory_bound():
    r, m = known_run("onnx", 360_000_000)
    # profiled step 80 ms of which 45 ms outside operators; unprofiled 40 ms
    m.profile = decode_profile(80.0, {"matmul": 0.4375, "overhead": 0.5625}, {"matmul": 35.0, "overhead": 45.0},
                               unprofiled_step_ms=40.0)
    sentence, step = verdict(m, rooflines(r, method_figures(r))[0]["onnx"], None)
    assert "memory-bound" in sentence and "90%" in sentence  # 36 ms floor / 40 ms TPOT
    assert "int8/int4 weights" in step
    m.details = EngineDetails(weight_bits=4, activation_bits=8)  # already low-bit: not told to go low-bit
    _, step = verdict(m, rooflines(r, method_figures(r))[0]["onnx"], None)
    assert "already low-bit" in step and "int8/int4 weights" not in step and "10.0 GB/s" in step
    m.details = EngineDetails()
    m.weight_bytes = 100_000_000  # floor 10 ms: far from it; overhead 5 ms of 40 after correction
    sentence, _ = verdict(m, rooflines(r, method_figures(r))[0]["onnx"], None)
    assert "matmul-bound" in sentence and "framework overhead" not in sentence


def test_matmul_bound_advice_depends_on_the_weights_bit_width():
    r, m = known_run("onnx", 100_000_000)  # floor 10 ms of a 40 ms step: below the bandwidth
    m.profile = decode_profile(40.0, {"matmul": 0.9, "overhead": 0.1}, {"matmul": 36.0, "overhead": 4.0})
    _, step = verdict(m, rooflines(r, method_figures(r))[0]["onnx"], None)
    assert "faster GEMV kernel" in step and "int8" in step  # fp32 weights: fewer bytes helps too
    m.details = EngineDetails(weight_bits=4, activation_bits=8)
    _, step = verdict(m, rooflines(r, method_figures(r))[0]["onnx"], None, ["avx", "avx2", "fma"])
    assert "faster kernel for its format" in step and "fewer weight bytes" not in step
    assert "no int8 dot-product instructions" in step  # what the CPU lacks, from its flags
    _, step = verdict(m, rooflines(r, method_figures(r))[0]["onnx"], None, ["avx2", "avx512f", "avx512_vnni"])
    assert "even with this CPU's avx512_vnni" in step
