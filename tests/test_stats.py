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
    # 30 runs a side at 5 % spread: the ratio within 1 % of 2, its interval within 3 % around it
    assert r.low < r.value < r.high and abs(r.value - 2.0) < 0.02
    assert 1.94 < r.low and r.high < 2.06 and r.low < 2.0 < r.high
    assert r.significant
    same = ratio_of_medians(fast, fast[::-1])
    assert same.value == pytest.approx(1.0)
    assert not same.significant


def test_ratio_of_nothing_is_none():
    assert ratio_of_medians([], [1.0]) is None
    assert math.isclose(ratio_of_medians([4.0], [2.0]).value, 2.0)


def test_mad_zero_does_not_make_every_other_sample_an_outlier():
    # more than half the samples equal: MAD = 0; the old rule counted both others as outliers
    s = summarize([1.0, 1.0, 1.0, 2.0, 3.0], "x")
    assert s.mad == 0.0 and s.outliers == 0
    assert summarize([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.005], "x").outliers == 0  # under 1 %
    assert summarize([1.0] * 9 + [10.0], "x").outliers == 1  # a real outlier still counts
    assert summarize([2.0] * 6, "x").outliers == 0


def test_percentiles_of_too_few_samples_are_labelled_as_the_maximum():
    from inferlab.report.tables import tails

    few = summarize([1.0, 2.0, 3.0, 4.0, 5.0], "x")
    assert few.p90 is None and few.p99 is None
    assert tails(few) == "3000.0/max 5000.0/max 5000.0"
    ten = summarize([float(i) for i in range(10)], "x")
    assert ten.p90 is not None and ten.p99 is None
    assert tails(ten).endswith("/max 9000.0") and "/max" not in tails(ten)[:-12]
    many = summarize([float(i) for i in range(100)], "x")
    assert many.p99 is not None and "max" not in tails(many)


def test_scaled_mad_is_the_plus_minus():
    s = summarize([1.0, 2.0, 3.0, 4.0, 100.0], "x")
    assert s.scaled_mad == pytest.approx(1.4826 * s.mad)
