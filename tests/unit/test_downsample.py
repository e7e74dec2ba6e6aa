"""Downsampling keeps point counts bounded and the shape's extremes and gaps."""

from __future__ import annotations

import numpy as np
import pytest
from lrpilot.dashboard.downsample import EXTRA_POINTS, MAX_GAPS, bin_matrix, downsample, window


def _series(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.arange(n, dtype=np.int64), np.cumsum(rng.standard_normal(n))


@pytest.mark.parametrize("n", [10, 2000, 2001, 10_000, 1_000_000])
@pytest.mark.parametrize("n_out", [100, 2000])
def test_point_count_is_bounded(n: int, n_out: int) -> None:
    x, y = _series(n)
    dx, dy = downsample(x, y, n_out)
    assert len(dx) == len(dy)
    assert len(dx) == n if n <= n_out else len(dx) <= n_out + EXTRA_POINTS
    assert np.all(np.diff(dx) > 0), "steps must stay strictly ascending"


def test_short_series_come_back_unchanged() -> None:
    x, y = _series(50)
    dx, dy = downsample(x, y, 100)
    np.testing.assert_array_equal(dx, x)
    np.testing.assert_array_equal(dy, y)


def test_extremes_first_and_last_are_kept() -> None:
    x, y = _series(100_000, seed=3)
    y[12_345] = 1e6  # a single-step spike must survive
    y[54_321] = -1e6
    dx, dy = downsample(x, y, 500)
    assert {0, 12_345, 54_321, 99_999} <= set(dx.tolist())
    assert dy.max() == 1e6 and dy.min() == -1e6


def test_selected_points_are_real_points() -> None:
    x, y = _series(50_000)
    dx, dy = downsample(x, y, 300)
    np.testing.assert_array_equal(dy, y[dx])


def test_non_finite_values_are_kept_as_gaps() -> None:
    x, y = _series(10_000)
    y[[100, 5000]] = [np.nan, np.inf]
    dx, dy = downsample(x, y, 200)
    assert 100 in dx and 5000 in dx
    assert np.isnan(dy[np.searchsorted(dx, 100)]) and np.isnan(dy[np.searchsorted(dx, 5000)])
    assert np.isfinite(np.delete(dy, np.searchsorted(dx, [100, 5000]))).all()


def test_many_gaps_are_capped() -> None:
    x, y = _series(10_000)
    y[::7] = np.nan
    dx, _ = downsample(x, y, 200)
    assert len(dx) <= 200 + EXTRA_POINTS
    assert np.isnan(downsample(x, y, 200)[1]).sum() == MAX_GAPS


def test_all_nan_series() -> None:
    x = np.arange(5000)
    dx, dy = downsample(x, np.full(5000, np.nan), 100)
    assert len(dx) == MAX_GAPS and np.isnan(dy).all()


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n_out must be >= 3, got 2"):
        downsample(np.arange(5), np.arange(5.0), 2)
    with pytest.raises(ValueError, match="one length"):
        downsample(np.arange(5), np.arange(4.0), 10)


def test_window_selects_the_range_plus_one_neighbour_each_side() -> None:
    x, y = _series(1_000_000)
    wx, _ = window(x, y, 10_000, 20_000, 2000)
    assert wx[0] == 9_999 and wx[-1] == 20_001
    assert len(wx) <= 2000 + EXTRA_POINTS
    fx, _ = window(x, y, 500_000, 500_100, 2000)  # zoomed in far enough: every point
    np.testing.assert_array_equal(fx, np.arange(499_999, 500_102))


def test_bin_matrix_means_per_bin_and_blanks_empty_bins() -> None:
    rows = [np.array([0, 1, 2, 3]), np.array([0, 3])]
    vals = [np.array([1.0, 3.0, 5.0, 7.0]), np.array([2.0, np.nan])]
    centers, z = bin_matrix(np.array([0, 3]), rows, vals, 2)
    assert z.shape == (2, 2) and len(centers) == 2
    np.testing.assert_allclose(z[0], [2.0, 6.0])
    assert z[1, 0] == 2.0 and np.isnan(z[1, 1])
