import math

import numpy as np
import pytest

from inferlab import defaults
from inferlab.stats import ratio_of_medians, summarize, too_few_runs


def test_summary_of_known_samples():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0], "x")
    assert s.n == 5
    assert s.median == 3.0
    assert s.mad == 1.0  # |x - 3| = 2,1,0,1,97 -> median 1
    assert s.mean == pytest.approx(22.0)
    assert s.min == 1.0 and s.max == 100.0
    assert s.outliers == 1  # 100 is far beyond 3 scaled MADs; counted, not dropped
    assert s.stdev == pytest.approx(np.std([1, 2, 3, 4, 100], ddof=1))


def test_empty_samples_give_none():
    assert summarize([], "x") is None


def test_stable_samples_have_no_warning():
    assert summarize([10.0, 10.1, 9.9, 10.0, 10.05], "x").warnings == []


def test_spread_and_extremes_warn_with_a_remedy():
    s = summarize([10, 10, 10, 10, 30], "e2e")
    text = " ".join(s.warnings)
    assert "spread" in text and "away from the mean" in text
    assert "raise" in text  # says what to do


def test_too_few_runs():
    assert too_few_runs(defaults.WARN_MIN_SAMPLES - 1, "m") is not None
    assert too_few_runs(defaults.WARN_MIN_SAMPLES, "m") is None


def test_ratio_of_medians_interval_and_significance():
    rng = np.random.default_rng(1)
    slow = 2.0 + 0.05 * rng.standard_normal(30)
    fast = 1.0 + 0.05 * rng.standard_normal(30)
    r = ratio_of_medians(slow, fast)
    assert r.low < r.value < r.high
    assert r.low < 2.0 < r.high or abs(r.value - 2.0) < 0.05
    assert r.significant
    same = ratio_of_medians(fast, fast[::-1])
    assert same.value == pytest.approx(1.0)
    assert not same.significant


def test_ratio_of_nothing_is_none():
    assert ratio_of_medians([], [1.0]) is None
    assert math.isclose(ratio_of_medians([4.0], [2.0]).value, 2.0)
