"""The machine's limits, measured in the run itself (a few seconds, in a process of its own,
at the run's thread count): streaming read bandwidth, an fp32 GEMM peak and the int8
dot-product peak (the compute roof of int8 kernels: vpdpbusd where the CPU has VNNI, AVX2's
multiply-add of bytes where not; engines/native/q4_roof.c). `python -m inferlab.probe
THREADS BYTES` prints one JSON object.

Bandwidth is the fastest of three readers: a plain reduction (torch.sum: pure streaming
reads), an fp32 GEMV (torch.mv, a decode step's shape) and the native library's streaming loop
over a buffer in 2 MiB pages (engines/native/q4_stream.c: the pages the native decoder's
weights sit in). On the project machines the GEMV read at 10-21 GB/s, the reduction 19-35 and
the loop 29-65 (an AMD EPYC's two states, minutes apart): torch alone would understate the
limit, and the decoder would stream above its own ceiling. The machine's speed drifts within a
day, so the runner probes before and after the timed runs and reports the range, and a sweep
reads the loop before each timed run (`stream_rate`); nothing is cached between runs.

A run keeps one probe process (`ProbeProcess`): it imports torch (about 1 s) while the runner
resolves the model, then waits, idle, for each request; a probe itself then takes about 0.3 s."""

from __future__ import annotations

import json
import select
import subprocess
import sys
import time

from . import defaults

GEMM_N = 1024
REPEATS = 3


def _best(fn, repeats: int) -> float:
    fn()  # warm: page in, pick kernels
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measure(threads: int, nbytes: int = defaults.PROBE_BYTES) -> dict:
    import torch

    torch.set_num_threads(threads)
    cols = 4096
    rows = max(nbytes // (4 * cols), 1)
    w = torch.empty(rows, cols).fill_(1.0)  # every page written once; rand would cost 0.3 s more
    x = torch.rand(cols)
    gemv = w.numel() * 4 / _best(lambda: torch.mv(w, x), REPEATS)
    reduction = w.numel() * 4 / _best(lambda: w.sum(), REPEATS)
    w = x = None  # free the buffer before the GEMM
    stream = stream_rate(threads, nbytes)
    a, b = torch.rand(GEMM_N, GEMM_N), torch.rand(GEMM_N, GEMM_N)
    gemm = 2 * GEMM_N**3 / _best(lambda: torch.mm(a, b), REPEATS)
    return {
        **int8_roof(threads),
        "threads": threads,
        "bandwidth_bytes_per_s": max(gemv, reduction, stream or 0.0),
        "bandwidth_gemv_bytes_per_s": gemv,
        "bandwidth_reduction_bytes_per_s": reduction,
        "bandwidth_stream_bytes_per_s": stream,
        "gemm_flops_per_s": gemm,
        "method": f"best of {REPEATS}, {rows * cols * 4 >> 20} MiB fp32: the fastest of torch.sum, "
                  "torch.mv and a streaming loop over 2 MiB pages (best of 4), bytes read / time; "
                  f"torch.mm {GEMM_N}x{GEMM_N} fp32, 2 n^3 / time; "
                  "int8: independent dot-product instructions on registers, 2 x multiply-adds / time",
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def stream_rate(threads: int, nbytes: int | None = None) -> float | None:
    """Bytes per second the native streaming loop read over `nbytes` (defaults.PROBE_BYTES: 0.05 s
    on the AMD EPYC here, no torch), or None where the native library cannot be built or the
    buffer cannot be had."""
    from .engines.native import library

    try:
        return library.stream_bandwidth(threads, nbytes or defaults.PROBE_BYTES)
    except library.NativeBuildError:
        return None


def int8_roof(threads: int) -> dict:
    """The int8 dot-product peak in operations per second (two per multiply-add, as FLOPs are
    counted), with the instructions it used; or why there is none."""
    from .engines.native import library

    try:
        macs, path = library.int8_peak(threads, seconds=0.05)
    except library.NativeBuildError as e:
        return {"int8_ops_per_s": None, "int8_note": str(e)}
    return {"int8_ops_per_s": 2 * macs, "int8_path": path}


class ProbeProcess:
    """The run's probe process: `measure()` asks it for one probe and returns its JSON object,
    or {"error": ...} when the process died or took longer than timeout_s."""

    def __init__(self, threads: int, nbytes: int, timeout_s: float):
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen([sys.executable, "-m", "inferlab.probe", "serve", str(threads),
                                      str(nbytes)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)

    def measure(self) -> dict:
        try:
            self.proc.stdin.write("probe\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], self.timeout_s)
            line = self.proc.stdout.readline() if ready else ""
            return json.loads(line) if line else {"error": "bandwidth probe failed: no answer"}
        except (OSError, ValueError) as e:
            return {"error": f"bandwidth probe failed: {type(e).__name__}"}

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


def serve(threads: int, nbytes: int) -> None:
    import torch  # noqa: F401 - imported now, while the runner resolves the model

    for _ in sys.stdin:
        print(json.dumps(measure(threads, nbytes)), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(int(sys.argv[2]), int(sys.argv[3]))
    else:
        print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]))))
