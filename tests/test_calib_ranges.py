"""The |x| histogram and the four range methods, against known distributions."""

import numpy as np
import pytest

from ffx.calib.ranges import METHODS, _entropy_threshold, activation_threshold
from ffx.calib.statistics import HISTOGRAM_BINS, _AbsHistogram
from ffx.errors import FfxError


def _histogram(*arrays):
    histogram = _AbsHistogram()
    for array in arrays:
        histogram.add(np.asarray(array, np.float32))
    return histogram


def _thresholds(histogram, percentile=99.99):
    return {m: activation_threshold(m, histogram.counts, histogram.range, histogram.absmax, percentile) for m in METHODS}


def test_histogram_is_exact_and_independent_of_batch_order():
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal(5000) * scale for scale in (0.01, 3.0, 0.5, 100.0, 7.0)]
    forwards, backwards, whole = _histogram(*parts), _histogram(*parts[::-1]), _histogram(np.concatenate(parts))
    np.testing.assert_array_equal(forwards.counts, backwards.counts)
    np.testing.assert_array_equal(forwards.counts, whole.counts)
    assert forwards.counts.sum() == 25000 and len(forwards.counts) == HISTOGRAM_BINS
    assert forwards.absmax == pytest.approx(np.abs(np.concatenate(parts)).max())
    assert forwards.range == 2.0 ** np.ceil(np.log2(forwards.absmax)) or forwards.range == 2 * forwards.absmax


def test_zeros_then_values_and_non_finite():
    histogram = _histogram(np.zeros(10), [0.5, -0.25])
    assert histogram.counts[0] == 10 and histogram.counts.sum() == 12
    with pytest.raises(FloatingPointError):
        histogram.add(np.array([1.0, np.inf], np.float32))


def test_methods_on_a_gaussian():
    values = np.random.default_rng(1).standard_normal(1_000_000)
    thresholds = _thresholds(_histogram(values))
    assert thresholds["max"] == pytest.approx(np.abs(values).max())
    assert thresholds["percentile"] == pytest.approx(np.quantile(np.abs(values), 0.9999), rel=0.01)
    # The MSE-optimal 8-bit clip of a unit Gaussian is about 3.9 sigma (Banner et al., ACIQ).
    assert 3.6 < thresholds["mse"] < 4.2
    assert thresholds["mse"] <= thresholds["entropy"] <= thresholds["max"]
    assert _thresholds(_histogram(values), percentile=99.0)["percentile"] == pytest.approx(2.576, rel=0.01)


def test_outliers_are_clipped_by_percentile_and_kl():
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.standard_normal(200_000), [400.0, -350.0]])
    thresholds = _thresholds(_histogram(values))
    assert thresholds["max"] == 400.0
    assert thresholds["percentile"] < 40
    # Pure KL clips them (the histogram has 0.125-wide bins here: KL starts at 128 of them) ...
    hist = _histogram(values).counts
    kl_bins = _entropy_threshold(hist[: np.flatnonzero(hist)[-1] + 1].astype(np.float64))
    assert kl_bins * 512 / HISTOGRAM_BINS < 40
    # ... but MSE weighs the outliers' squared clipping error against everyone's rounding error
    # and keeps them, and `entropy` never clips below MSE.
    assert thresholds["entropy"] == thresholds["mse"] < thresholds["max"]


def test_bad_arguments():
    histogram = _histogram([1.0, 2.0])
    with pytest.raises(FfxError, match="unknown calibration method"):
        activation_threshold("minmax", histogram.counts, histogram.range, histogram.absmax)
    with pytest.raises(FfxError, match="percentile"):
        activation_threshold("percentile", histogram.counts, histogram.range, histogram.absmax, percentile=0)
    assert activation_threshold("entropy", np.zeros(HISTOGRAM_BINS, np.int64), 0.0, 0.0) == 0.0
