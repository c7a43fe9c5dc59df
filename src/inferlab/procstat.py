"""Counters the kernel keeps: a process's own memory and the whole machine's CPU time.

Why not getrusage's ru_maxrss: Linux keeps it across exec, so a freshly started worker reports
at least its parent's high-water mark. VmHWM belongs to the worker's own address space, which
exec creates anew."""

from __future__ import annotations

import os
import time

USER_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_memory(pid: int | str = "self") -> tuple[int | None, int | None]:
    """(resident bytes now, resident high-water mark) of a process; None where unknown."""
    rss = hwm = None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024  # kB
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, hwm


def machine_cpu_seconds() -> tuple[float, float] | None:
    """(busy, steal) CPU-seconds of the whole machine since boot, summed over its CPUs; busy
    is user + nice + system + irq + softirq (idle, iowait and steal left out). None where
    /proc/stat is missing."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    v = [int(x) for x in fields[1:]]
    v += [0] * (8 - len(v))
    user, nice, system, _idle, _iowait, irq, softirq, steal = v[:8]
    return (user + nice + system + irq + softirq) / USER_HZ, steal / USER_HZ


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU-seconds of a process (all its threads) so far; None when it is gone
    or /proc is missing."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the name, which may hold spaces
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / USER_HZ  # utime, stime: fields 14 and 15


def wait_until_idle(pid: int, window_s: float, timeout_s: float) -> float:
    """Wait until the process accrues no CPU time over one window (its threads stopped
    spinning) or it is gone, at most timeout_s; returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout_s:
        before = process_cpu_seconds(pid)
        time.sleep(window_s)
        if before is None or process_cpu_seconds(pid) in (None, before):
            break
    return time.perf_counter() - t0


def reset_peak_memory() -> bool:
    """Start this process's high-water mark (VmHWM) anew from its resident size now, so that a
    worker reused across a sweep's cells reports each cell's own peak. Linux: writing 5 to
    /proc/self/clear_refs. False where the kernel does not offer it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
