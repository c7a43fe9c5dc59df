"""Summary statistics, stability warnings and bootstrap speedups (definitions: METRICS.md)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from . import defaults


@dataclass(frozen=True)
class Summary:
    """Statistics of one figure's raw samples. Outliers are counted, never dropped."""

    n: int
    median: float
    mad: float  # median absolute deviation (unscaled)
    scaled_mad: float  # 1.4826 x MAD: estimates the stdev for normal data; the "±" of reports
    mean: float
    stdev: float
    min: float
    max: float
    p90: float | None  # None with fewer than 10 samples: the "p90" would only be the maximum
    p99: float | None  # None with fewer than 100 samples
    outliers: int
    warnings: list[str] = field(default_factory=list)

    @property
    def cv(self) -> float:
        return self.stdev / self.mean if self.mean else math.nan

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        return cls(**d)


def summarize(samples, name: str = "figure") -> Summary | None:
    """Summarize samples; None when there are none. Warnings say what to do about them."""
    x = np.asarray(list(samples), dtype=float)
    if x.size == 0:
        return None
    median = float(np.median(x))
    mad = float(np.median(np.abs(x - median)))
    mean = float(x.mean())
    stdev = float(x.std(ddof=1)) if x.size > 1 else 0.0
    scaled_mad = MAD_TO_STDEV * mad
    return Summary(
        n=int(x.size),
        median=median,
        mad=mad,
        scaled_mad=scaled_mad,
        mean=mean,
        stdev=stdev,
        min=float(x.min()),
        max=float(x.max()),
        p90=float(np.percentile(x, 90)) if x.size >= 10 else None,
        p99=float(np.percentile(x, 99)) if x.size >= 100 else None,
        outliers=count_outliers(x, median, scaled_mad),
        warnings=stability_warnings(x, name),
    )


MAD_TO_STDEV = 1.4826  # scaled MAD estimates the standard deviation of normal data
MEAN_AD_TO_STDEV = 1.2533  # the same for the mean absolute deviation


def count_outliers(x: np.ndarray, median: float, scaled_mad: float) -> int:
    """Samples further than OUTLIER_MADS robust deviations from the median. When more than
    half the samples are equal (MAD = 0), the scale falls back to the mean absolute deviation,
    so that not every other sample is an outlier; a deviation below OUTLIER_MIN_REL of the
    median (clock resolution, not a disturbance) is never one."""
    dev = np.abs(x - median)
    scale = scaled_mad if scaled_mad > 0 else MEAN_AD_TO_STDEV * float(dev.mean())
    if scale == 0:
        return 0
    limit = max(defaults.OUTLIER_MADS * scale, defaults.OUTLIER_MIN_REL * abs(median))
    return int(np.sum(dev > limit))


def stability_warnings(x: np.ndarray, name: str) -> list[str]:
    """The pyperf-style spread checks of METRICS.md, each with the remedy. (Too few samples is
    a property of the run, not of one figure: see too_few_runs.)"""
    out = []
    mean = float(x.mean())
    if mean <= 0 or x.size < 2:
        return out
    cv = float(x.std(ddof=1)) / mean
    if cv >= defaults.WARN_CV:
        out.append(
            f"{name}: spread {cv:.0%} of the mean (>= {defaults.WARN_CV:.0%}); "
            "close other programs, pin --threads, raise --repeats"
        )
    if (x.max() - mean) / mean > defaults.WARN_EXTREME or (mean - x.min()) / mean > defaults.WARN_EXTREME:
        out.append(
            f"{name}: min or max more than {defaults.WARN_EXTREME:.0%} away from the mean; "
            "the machine was disturbed or still warming up: raise --warmup"
        )
    return out


@dataclass(frozen=True)
class Ratio:
    """A ratio of medians (a / b) with a bootstrap confidence interval."""

    value: float
    low: float
    high: float
    confidence: float

    @property
    def significant(self) -> bool:
        return not (self.low <= 1.0 <= self.high)

    def to_dict(self) -> dict:
        return {**asdict(self), "significant": self.significant}

    @classmethod
    def from_dict(cls, d: dict) -> "Ratio":
        return cls(d["value"], d["low"], d["high"], d["confidence"])


def ratio_of_medians(a, b, seed: int = defaults.DEFAULT_SEED) -> Ratio | None:
    """median(a) / median(b) with a percentile-bootstrap interval (resampling both sides).

    Used as a speedup with a = slower method's times, b = faster method's times."""
    a = np.asarray(list(a), dtype=float)
    b = np.asarray(list(b), dtype=float)
    if a.size == 0 or b.size == 0 or np.median(b) == 0:
        return None
    rng = np.random.default_rng(seed)
    k = defaults.BOOTSTRAP_RESAMPLES
    ma = np.median(rng.choice(a, size=(k, a.size), replace=True), axis=1)
    mb = np.median(rng.choice(b, size=(k, b.size), replace=True), axis=1)
    boot = ma / mb
    alpha = (1 - defaults.CONFIDENCE) / 2
    return Ratio(
        value=float(np.median(a) / np.median(b)),
        low=float(np.quantile(boot, alpha)),
        high=float(np.quantile(boot, 1 - alpha)),
        confidence=defaults.CONFIDENCE,
    )


def too_few_runs(n: int, name: str) -> str | None:
    if n < defaults.WARN_MIN_SAMPLES:
        return (f"{name}: only {n} timed runs (< {defaults.WARN_MIN_SAMPLES}); "
                "raise --repeats or --min-time")
    return None


def median_interval(samples, seed: int = defaults.DEFAULT_SEED) -> tuple[float, float] | None:
    """A percentile-bootstrap interval of the median (defaults.CONFIDENCE); None without
    samples. With one sample it is that sample twice: nothing is known about the spread."""
    x = np.asarray(list(samples), dtype=float)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    boot = np.median(rng.choice(x, size=(defaults.BOOTSTRAP_RESAMPLES, x.size), replace=True), axis=1)
    alpha = (1 - defaults.CONFIDENCE) / 2
    return float(np.quantile(boot, alpha)), float(np.quantile(boot, 1 - alpha))


def run_bootstrap_interval(groups: list, statistic, seed: int = defaults.DEFAULT_SEED) -> tuple[float, float]:
    """Percentile-bootstrap interval of statistic(pooled samples), resampling whole runs (the
    tokens of one run are not independent of each other)."""
    rng = np.random.default_rng(seed)
    n = len(groups)
    values = []
    for _ in range(defaults.BOOTSTRAP_RESAMPLES):
        picked = rng.integers(0, n, n)
        values.append(statistic(np.concatenate([groups[i] for i in picked])))
    alpha = (1 - defaults.CONFIDENCE) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))
