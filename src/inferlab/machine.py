"""What machine and software a run used, so results can be compared between machines."""

from __future__ import annotations

import os
import platform
from importlib import metadata

LIBRARIES = ("torch", "transformers", "optimum", "optimum-onnx", "onnx", "onnxruntime", "numpy")
INTERESTING_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                     "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16",
                     "amx_int8", "avx_vnni")
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")


def _cpuinfo() -> tuple[str, list[str]]:
    model, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "", platform.machine()):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
    except OSError:
        pass
    return model, [f for f in INTERESTING_FLAGS if f in flags]


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def versions() -> dict[str, str | None]:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            out[lib] = None
    return out


def source_commit() -> str | None:
    """The git commit inferlab runs from ('+dirty' with uncommitted changes), None when it is
    not a checkout: the build a comparison tells apart when the version number is the same."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "--short=10", "HEAD"], capture_output=True,
                              text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no", "."],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def describe() -> dict:
    cpu, flags = _cpuinfo()
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "memory_bytes": _memory_bytes(),
        "os": platform.platform(),
        "hostname": platform.node(),
        "python": platform.python_version(),
        "libraries": versions(),
        "inferlab_commit": source_commit(),
        "thread_env": {v: os.environ.get(v) for v in THREAD_VARS if os.environ.get(v)},
    }


def conditions() -> dict:
    """What can change on a machine while a sweep runs, read cheaply: load average, memory
    available and the CPUs' mean clock (MHz, where /proc/cpuinfo says)."""
    out: dict = {}
    try:
        out["load_average_1m"] = os.getloadavg()[0]
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    out["memory_available_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":", 1)[1]) for line in f if line.startswith("cpu MHz")]
        if mhz:
            out["cpu_mhz_mean"] = sum(mhz) / len(mhz)
    except (OSError, ValueError):
        pass
    return out


def kind_names(machines: dict[str, dict]) -> dict[str, str]:
    """What reports call each kind of machine (results.machines: kind -> record): the name its
    nodes' label gave, else its CPU and cores; the kind's id added where two names would be alike."""
    names = {kind: m.get("name") or f"{m.get('cpu') or 'unknown CPU'}, {m.get('usable_cpus')} CPUs"
             for kind, m in machines.items()}
    alike = [n for n in names.values() if list(names.values()).count(n) > 1]
    return {kind: f"{n} [{kind}]" if n in alike else n for kind, n in names.items()}
