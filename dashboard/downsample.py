"""Server-side downsampling: what reaches the browser stays small at any run length.

A 1,000,000-step loss curve cannot be sent to a browser point by point (tens of megabytes of
JSON, a frozen tab). Each trace is cut to at most ``n_out`` points with MinMaxLTTB
(tsdownsample's Rust implementation: a min-max preselection, then Largest-Triangle-Three-
Buckets), which keeps the visual shape — spikes included — at a few microseconds per thousand
points. Two guarantees are added on top, because a monitor that hides a divergence is worse
than none: the first, last, global minimum and global maximum points are always kept, and
non-finite values (NaN from a diverged run) are kept as gaps at their steps rather than
silently dropped.

Example:
    >>> steps = np.arange(1_000_000); loss = np.random.rand(1_000_000)
    >>> x, y = downsample(steps, loss, n_out=2000)
    >>> len(x) <= 2000 + 4
    True
"""

from __future__ import annotations

import numpy as np
from tsdownsample import MinMaxLTTBDownsampler

__all__ = ["DEFAULT_POINTS", "EXTRA_POINTS", "bin_matrix", "downsample", "window"]

#: Points per trace for a full view; a few thousand is finer than any screen's width.
DEFAULT_POINTS = 2000
#: Points added on top of ``n_out`` at most: global min, global max, and up to
#: ``MAX_GAPS`` NaN markers (so the bound is ``n_out + EXTRA_POINTS``).
MAX_GAPS = 64
EXTRA_POINTS = 2 + MAX_GAPS

_minmax_lttb = MinMaxLTTBDownsampler()


def _check(x: np.ndarray, y: np.ndarray, n_out: int) -> None:
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d and of one length, got {x.shape} and {y.shape}")
    if n_out < 3:
        raise ValueError(f"n_out must be >= 3, got {n_out}")


def downsample(
    x: np.ndarray, y: np.ndarray, n_out: int = DEFAULT_POINTS
) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a series to at most ``n_out + EXTRA_POINTS`` points keeping its visual shape.

    Args:
        x: steps, ascending (int64 or float64).
        y: values (float64); NaN and +-inf are allowed.
        n_out: target number of points (>= 3).

    Returns:
        ``(x, y)`` subsets, ascending in x. Series no longer than ``n_out`` come back
        unchanged. Otherwise the first, last, minimum and maximum finite points are always
        present, and non-finite points appear as NaN (a gap in plotly) at their steps: all of
        them if there are at most ``MAX_GAPS``, else the first ``MAX_GAPS``.

    Raises:
        ValueError: mismatched shapes or ``n_out < 3``.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.float64)
    _check(x, y, n_out)
    if len(x) <= n_out:
        return x, y
    finite = np.isfinite(y)
    if finite.all():
        keep = _indices(x, y, n_out)
    else:
        where = np.flatnonzero(finite)
        gaps = np.flatnonzero(~finite)[:MAX_GAPS]
        keep = where[_indices(x[where], y[where], n_out)] if len(where) else gaps[:0]
        keep = np.union1d(keep, gaps)
    return x[keep], np.where(np.isfinite(y[keep]), y[keep], np.nan)


def _indices(x: np.ndarray, y: np.ndarray, n_out: int) -> np.ndarray:
    """Sorted indices of the MinMaxLTTB selection plus the global extremes."""
    if len(x) <= n_out:
        return np.arange(len(x))
    # tsdownsample wants contiguous arrays of a supported dtype.
    xs = np.ascontiguousarray(x, dtype=np.int64 if x.dtype.kind in "iu" else np.float64)
    idx = _minmax_lttb.downsample(xs, np.ascontiguousarray(y), n_out=n_out).astype(np.int64)
    return np.union1d(idx, [0, len(y) - 1, int(np.argmin(y)), int(np.argmax(y))])


def window(
    x: np.ndarray,
    y: np.ndarray,
    x0: float | None,
    x1: float | None,
    n_out: int = DEFAULT_POINTS,
) -> tuple[np.ndarray, np.ndarray]:
    """Downsample only the part of a series inside ``[x0, x1]`` (a zoomed view).

    One point on each side of the window is included, so lines run to the plot's edges
    instead of stopping short. ``None`` for a bound means open on that side.
    """
    x = np.asarray(x)
    lo = 0 if x0 is None else max(int(np.searchsorted(x, x0, side="left")) - 1, 0)
    hi = len(x) if x1 is None else min(int(np.searchsorted(x, x1, side="right")) + 1, len(x))
    return downsample(x[lo:hi], np.asarray(y)[lo:hi], n_out)


def bin_matrix(
    steps: np.ndarray, rows: list[np.ndarray], values: list[np.ndarray], n_bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Bin several series onto one common step grid for a heatmap (rows x bins).

    Each row's finite values are averaged per bin; empty bins are NaN (drawn blank).

    Args:
        steps: the step range to cover, as ``[first, last]`` (any array whose min and max
            give it).
        rows: per row, its steps.
        values: per row, its values.
        n_bins: number of columns (>= 1).

    Returns:
        ``(centers, z)``: bin centre steps (float64, length ``n_bins``) and a
        ``(len(rows), n_bins)`` float64 matrix.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    lo = float(np.min(steps)) if len(steps) else 0.0
    hi = float(np.max(steps)) if len(steps) else 0.0
    span = max(hi - lo, 1.0)
    n_bins = int(min(n_bins, span + 1))
    edges = np.linspace(lo, hi + 1e-9, n_bins + 1)
    z = np.full((len(rows), n_bins), np.nan)
    for i, (s, v) in enumerate(zip(rows, values, strict=True)):
        ok = np.isfinite(v)
        s, v = s[ok], v[ok]
        if not len(s):
            continue
        b = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)
        total = np.bincount(b, weights=v, minlength=n_bins)
        count = np.bincount(b, minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            z[i] = np.where(count > 0, total / count, np.nan)
    return (edges[:-1] + edges[1:]) / 2, z
