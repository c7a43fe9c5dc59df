"""Figures in the units a reader takes in at a glance (the compact tables and sentences)."""

from __future__ import annotations

import math


def duration_ms(ms: float | None) -> str:
    """'1.82 s', '182 ms', '5.3 ms', '0.42 ms'."""
    if ms is None or math.isnan(ms):
        return "-"
    if ms >= 1000:
        return f"{ms / 1000:.2f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms:.2f} ms"


def size_bytes(n: float | None) -> str:
    """'947 MB', '1.2 GB', '35 MB', '512 kB'."""
    if not n:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    if n >= 1e6:
        return f"{n / 1e6:.0f} MB"
    return f"{n / 1e3:.0f} kB"


def rate(per_s: float | None, unit: str = "tok/s") -> str:
    if per_s is None or math.isnan(per_s):
        return "-"
    return f"{per_s:.0f} {unit}" if per_s >= 100 else f"{per_s:.1f} {unit}"
