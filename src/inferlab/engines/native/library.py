"""Compile the decoder (the q4_*.c files here) for this CPU and load it.

The library is built on first use with the machine's C compiler (about 2 s) for the CPU it runs
on (-march=native), and cached under a key made of the sources, the compiler's version and this
CPU's flags: a build made on another CPU is never loaded (machines here change between Intel and
AMD, and code compiled for one can die with "Illegal instruction" on the other)."""

from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
import subprocess

from ... import defaults
from ...fsutil import build_folder
from ...native_build import cpu_flags

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = sorted(glob.glob(os.path.join(HERE, "q4_*.c")))  # one library from every file
HEADERS = sorted(glob.glob(os.path.join(HERE, "q4_*.h")))
NEEDED_FLAGS = ("avx2", "fma", "f16c")  # the kernels are written with AVX2 and FMA intrinsics
# The 4-bit kernel's copies, in q4_common.h's PATH_* order, with the /proc/cpuinfo flags each
# needs beyond NEEDED_FLAGS: every copy is compiled on every machine (target attributes), and
# the best one this CPU has is run.
PATHS = (
    ("avx2", ()),
    ("avx-vnni", ("avx_vnni",)),
    ("avx512-vnni", ("avx512f", "avx512vl", "avx512bw", "avx512_vnni")),
)
# Attention's arithmetic, in q4_common.h's ATT_* order, with the flags each needs: fp32 on an
# fp16 cache everywhere, or bf16 products (fp32 sums) on a bf16 cache with AVX-512 BF16, twice
# the multiply-adds per instruction. The two give slightly different logits (a machine's results
# record which it ran); each is the same bits on any thread count, call or batch.
ATTENTIONS = (
    ("fp32", ()),
    ("bf16", ("avx512f", "avx512vl", "avx512bw", "avx512_bf16")),
)
COMPILER_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
LIBRARIES = ("-lm",)


class NativeBuildError(RuntimeError):
    """The library cannot be built or used on this machine (one line: why)."""


def missing_cpu_flags(flags: set[str] | None = None) -> list[str]:
    flags = cpu_flags() if flags is None else flags
    return [f for f in NEEDED_FLAGS if f not in flags]


def _missing(choices: tuple, what: str, name: str, flags: set[str] | None) -> list[str]:
    """The CPU flags this machine lacks for the choice `name` of PATHS or ATTENTIONS."""
    flags = cpu_flags() if flags is None else flags
    needs = dict(choices)
    if name not in needs:
        raise ValueError(f"no {what} {name!r} (choices: {', '.join(needs)})")
    return [f for f in (*NEEDED_FLAGS, *needs[name]) if f not in flags]


def path_missing(name: str, flags: set[str] | None = None) -> list[str]:
    """The CPU flags this machine lacks for the kernel path `name` (empty: it can run)."""
    return _missing(PATHS, "kernel path", name, flags)


def attention_missing(name: str, flags: set[str] | None = None) -> list[str]:
    """The CPU flags this machine lacks for attention's arithmetic `name` (empty: it can run)."""
    return _missing(ATTENTIONS, "attention arithmetic", name, flags)


def best_path(flags: set[str] | None = None) -> str:
    """The fastest kernel path this CPU can run (the last of PATHS it has the flags for)."""
    flags = cpu_flags() if flags is None else flags
    return [name for name, _ in PATHS if not path_missing(name, flags)][-1]


def best_attention(flags: set[str] | None = None) -> str:
    """The fastest attention arithmetic this CPU can run (the last of ATTENTIONS it has)."""
    flags = cpu_flags() if flags is None else flags
    return [name for name, _ in ATTENTIONS if not attention_missing(name, flags)][-1]


def path_index(name: str) -> int:
    return [n for n, _ in PATHS].index(name)


def attention_index(name: str) -> int:
    return [n for n, _ in ATTENTIONS].index(name)


def compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise NativeBuildError("no C compiler found (install gcc, or set CC)")
    return cc


@functools.cache
def _compiler_version(cc: str) -> list[str]:
    # a process asks for the library three times (prepare, the engine's load, the decoder's):
    # the compiler is run once
    return subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[:1]


def _build_key(cc: str) -> str:
    version = _compiler_version(cc)
    h = hashlib.sha256()
    for path in (*SOURCES, *HEADERS):
        with open(path, "rb") as f:
            h.update(os.path.basename(path).encode() + b"\0" + f.read())
    for part in (*version, *COMPILER_FLAGS, *sorted(cpu_flags())):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def library_path() -> tuple[str, bool]:
    """(path of the compiled library, cache hit), compiling it when missing."""
    missing = missing_cpu_flags()
    if missing:
        raise NativeBuildError(f"this CPU lacks {', '.join(missing)}, which inferlab's native kernels need")
    cc = compiler()
    dest = os.path.join(defaults.cache_dir(), "native", f"q4_decoder-{_build_key(cc)}")

    def build(tmp):
        out = os.path.join(tmp, "libq4_decoder.so")
        done = subprocess.run([cc, *COMPILER_FLAGS, "-o", out, *SOURCES, *LIBRARIES], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise NativeBuildError(f"compiling the native decoder failed: {last}")

    hit = build_folder(dest, build)
    return os.path.join(dest, "libq4_decoder.so"), hit


def load() -> ctypes.CDLL:
    path, _ = library_path()
    return ctypes.CDLL(path)


def stream_bandwidth(threads: int, nbytes: int, repeats: int = 4) -> float | None:
    """Bytes read per second: the best of `repeats` passes of q4_stream.c's loop over a fresh
    buffer of about `nbytes` in 2 MiB pages; None when the buffer could not be had."""
    lib = load()
    lib.stream_read.restype = ctypes.c_double
    lib.stream_read.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_int]
    rate = lib.stream_read(threads, nbytes, repeats)
    return rate if rate > 0 else None


def int8_peak(threads: int, seconds: float = 0.1, repeats: int = 3) -> tuple[float, str]:
    """(multiply-adds of int8 pairs per second, kernel path): the best of `repeats` runs of
    about `seconds` each of q4_roof.c's register-only loop with the best path this CPU has."""
    lib = load()
    lib.int8_peak.restype = ctypes.c_double
    lib.int8_peak.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long]
    path = best_path()
    index = path_index(path)
    rounds = 10_000
    while (rate := lib.int8_peak(index, threads, rounds)) > 0 and rounds * 1024 * threads / rate < seconds:
        rounds *= 4  # until one run lasts about `seconds` (a round: 512 or 1024 multiply-adds)
    return max([rate, *(lib.int8_peak(index, threads, rounds) for _ in range(repeats - 1))]), path
