"""The machine's limits, measured in-process at the run's thread count and cached per machine:
streaming read bandwidth over 1 GiB (far beyond the caches) and a GEMM peak (square fp32 matmul).

Bandwidth is the faster of a plain reduction (torch.sum: pure streaming reads) and an fp32 GEMV
(torch.mv, a decode step's shape): on the project machine the GEMV kernel read at 15.5-15.6 GB/s
while the reduction reached 19.3-26.9 GB/s (two measurements), and ONNX Runtime's GEMV beat the former, so the GEMV alone would
understate the limit."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time

from .. import defaults

BANDWIDTH_BYTES = 1 << 30  # 1 GiB matrix: far beyond any cache on these machines
GEMM_N = 1536
REPEATS = 5
VERSION = 2  # part of the cache key: bump when the measurement changes


def _best(fn, repeats: int) -> float:
    fn()  # warm: page in, pick kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    cols = 4096
    rows = BANDWIDTH_BYTES // (4 * cols)
    w = torch.rand(rows, cols)
    x = torch.rand(cols)
    gemv = w.numel() * 4 / _best(lambda: torch.mv(w, x), REPEATS)
    reduction = w.numel() * 4 / _best(lambda: w.sum(), REPEATS)
    bandwidth = max(gemv, reduction)
    del w
    a, b = torch.rand(GEMM_N, GEMM_N), torch.rand(GEMM_N, GEMM_N)
    t = _best(lambda: torch.mm(a, b), REPEATS)
    gemm = 2 * GEMM_N**3 / t
    return {
        "threads": threads,
        "bandwidth_bytes_per_s": bandwidth,
        "bandwidth_gemv_bytes_per_s": gemv,
        "bandwidth_reduction_bytes_per_s": reduction,
        "gemm_flops_per_s": gemm,
        "method": f"best of {REPEATS}, {BANDWIDTH_BYTES >> 20} MiB fp32: the faster of torch.sum "
                  f"({reduction / 1e9:.1f} GB/s) and torch.mv ({gemv / 1e9:.1f} GB/s), bytes read / "
                  f"time; torch.mm {GEMM_N}x{GEMM_N} fp32 (2 n^3 / time)",
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "torch": torch.__version__,
    }


def _cache_path(threads: int) -> str:
    from ..machine import describe

    m = describe()
    key = json.dumps([VERSION, platform.node(), m["cpu"], m["logical_cpus"], threads], sort_keys=True)
    name = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(defaults.cache_dir(), "hardware", f"{name}.json")


def limits(threads: int, remeasure: bool = False) -> dict:
    """Cached figures for this machine and thread count; measured when missing or asked."""
    path = _cache_path(threads)
    if not remeasure and os.path.isfile(path):
        try:
            with open(path) as f:
                data = json.load(f)
            data["cached"] = True
            return data
        except (OSError, json.JSONDecodeError):
            pass  # a broken cache file is simply measured again
    data = measure(threads)
    from ..fsutil import write_json_atomic

    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, data)
    data["cached"] = False
    return data
