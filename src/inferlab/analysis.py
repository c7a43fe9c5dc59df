"""Figures derived from raw samples across methods: speedups with confidence intervals and
token agreement. Computed in one place; the report and results.json both read it."""

from __future__ import annotations

from . import defaults
from .stats import ratio_of_medians


def first_divergence(tokens: list[int], reference: list[int]) -> int:
    """Index of the first generated token that differs from the reference (len if none)."""
    for i, (a, b) in enumerate(zip(tokens, reference)):
        if a != b:
            return i
    return min(len(tokens), len(reference))


def comparisons(results) -> dict:
    """Per method: E2E and TPOT speedups against the baseline and the reference."""
    out = {}
    for m in results.methods:
        if not m.ok:
            continue
        entry = {}
        for against in (defaults.BASELINE_METHOD, defaults.REFERENCE_METHOD):
            other = results.method(against)
            if other is None or not other.ok or other is m:
                continue
            for figure in ("e2e_s", "tpot_s"):
                r = ratio_of_medians(other.samples(figure), m.samples(figure))
                if r:
                    entry[f"speedup_{figure[:-2]}_vs_{against}"] = r
        out[m.method] = entry
    return out
