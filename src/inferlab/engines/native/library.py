"""Compile q4_decoder.c for this CPU and load it.

The library is built on first use with the machine's C compiler (about 2 s) for the CPU it runs
on (-march=native), and cached under a key made of the source, the compiler's version and this
CPU's flags: a build made on another CPU is never loaded (machines here change between Intel and
AMD, and code compiled for one can die with "Illegal instruction" on the other)."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess

from ... import defaults
from ...fsutil import build_folder
from ...native_build import cpu_flags

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "q4_decoder.c")
NEEDED_FLAGS = ("avx2", "fma", "f16c")  # the kernels are written with AVX2 and FMA intrinsics
COMPILER_FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC")
LIBRARIES = ("-lm",)


class NativeBuildError(RuntimeError):
    """The library cannot be built or used on this machine (one line: why)."""


def missing_cpu_flags(flags: set[str] | None = None) -> list[str]:
    flags = cpu_flags() if flags is None else flags
    return [f for f in NEEDED_FLAGS if f not in flags]


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
    with open(SOURCE, "rb") as f:
        h.update(f.read())
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
        done = subprocess.run([cc, *COMPILER_FLAGS, "-o", out, SOURCE, *LIBRARIES], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise NativeBuildError(f"compiling {os.path.basename(SOURCE)} failed: {last}")

    hit = build_folder(dest, build)
    return os.path.join(dest, "libq4_decoder.so"), hit


def load() -> ctypes.CDLL:
    path, _ = library_path()
    return ctypes.CDLL(path)
