"""Anomaly detectors over many series at once (numpy, no Prefect).

Every detector takes ``values`` shaped ``(n_series, n_points)`` (or one series, 1-D), with NaN
for gaps, and returns a ``Detection`` of the same shape: the raw ``z`` and a ``score`` in
[0, 1]. Each is causal: the point at ``t`` is compared with a baseline built from points
strictly before ``t``, so a score never changes when later data arrives. Points that are NaN,
or whose baseline has fewer than ``min_periods`` points, score NaN ("no opinion"), never 0.

The defaults here are starting points; issue 3 item 6 tunes them by measurement.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy.special import erf

# A flat baseline has no spread; any move off it is as surprising as it gets.
FLOOR = 1e-9
# |z| = 2 scores 0.68, 4 scores 0.95, 6 scores 0.997.
SCORE_SCALE = 2.0
# Bound on the (series x points x window) block the robust detector materializes at once.
ROBUST_BLOCK_ELEMENTS = 20_000_000


def _quiet_all_nan() -> warnings.catch_warnings:
    # nanmedian warns on all-NaN slices, which are expected here (gaps, warm-up).
    return warnings.catch_warnings(action="ignore", category=RuntimeWarning)


class Detection(NamedTuple):
    z: np.ndarray
    score: np.ndarray


def score_from_z(z: np.ndarray, scale: float = SCORE_SCALE) -> np.ndarray:
    """Map |z| to [0, 1] (two-sided normal tail mass within |z|/scale); NaN stays NaN."""
    with np.errstate(invalid="ignore"):
        return erf(np.abs(z) / (scale * np.sqrt(2.0)))


def _as_2d(values: np.ndarray) -> tuple[np.ndarray, bool]:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise ValueError(f"values must be 1-D or 2-D (series x points), got {array.ndim}-D")
    array = np.where(np.isfinite(array), array, np.nan)  # inf is a broken sample, not data
    return (array[np.newaxis, :], True) if array.ndim == 1 else (array, False)


def _standardize(x: np.ndarray, centre: np.ndarray, spread: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (x - centre) / np.maximum(spread, FLOOR * (np.abs(centre) + 1.0))
    return z


def _result(z: np.ndarray, squeeze: bool) -> Detection:
    score = score_from_z(z)
    return Detection(z[0], score[0]) if squeeze else Detection(z, score)


def rolling_zscore(values: np.ndarray, window: int = 60, min_periods: int = 10) -> Detection:
    """z of each point against the mean and standard deviation of the previous ``window``
    points (NaN-aware, O(points) via cumulative sums)."""
    _check(window, min_periods)
    x, squeeze = _as_2d(values)
    valid = ~np.isnan(x)
    filled = np.where(valid, x, 0.0)
    pad = np.zeros((x.shape[0], 1))
    count = np.concatenate([pad, np.cumsum(valid, axis=1)], axis=1)
    total = np.concatenate([pad, np.cumsum(filled, axis=1)], axis=1)
    squares = np.concatenate([pad, np.cumsum(filled * filled, axis=1)], axis=1)
    # Baseline of point t: indices [t - window, t - 1].
    end = np.arange(x.shape[1])
    start = np.maximum(end - window, 0)
    n = count[:, end] - count[:, start]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (total[:, end] - total[:, start]) / n
        var = (squares[:, end] - squares[:, start]) / n - mean * mean
    std = np.sqrt(np.maximum(var, 0.0) * n / np.maximum(n - 1, 1))  # sample std
    z = _standardize(x, mean, std)
    z[(n < min_periods) | ~valid] = np.nan
    return _result(z, squeeze)


def ewma(values: np.ndarray, alpha: float = 0.05, min_periods: int = 10) -> Detection:
    """z against an exponentially weighted mean and variance of the points before it.

    The recursion steps through time once, updating every series together; a gap (NaN)
    leaves a series' state untouched.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be between 0 and 1 (exclusive)")
    _check(max(2, min_periods), min_periods)
    x, squeeze = _as_2d(values)
    n_series, n_points = x.shape
    mean = np.full(n_series, np.nan)
    var = np.zeros(n_series)
    seen = np.zeros(n_series, dtype=np.int64)
    z = np.full_like(x, np.nan)
    for t in range(n_points):
        column = x[:, t]
        valid = ~np.isnan(column)
        ready = valid & (seen >= min_periods)
        z[ready, t] = _standardize(column[ready], mean[ready], np.sqrt(var[ready]))
        first = valid & (seen == 0)
        mean[first] = column[first]
        update = valid & ~first
        diff = column[update] - mean[update]
        increment = alpha * diff
        mean[update] += increment
        var[update] = (1.0 - alpha) * (var[update] + diff * increment)
        seen[valid] += 1
    return _result(z, squeeze)


def robust_zscore(values: np.ndarray, window: int = 60, min_periods: int = 10) -> Detection:
    """z against the median and MAD of the previous ``window`` points: one outlier in the
    baseline does not hide the next one, nor flag normal points after it."""
    _check(window, min_periods)
    x, squeeze = _as_2d(values)
    n_series, n_points = x.shape
    # Window t of the padded series holds points [t - window, t - 1].
    padded = np.concatenate([np.full((n_series, window), np.nan), x], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=1)[:, :n_points]
    z = np.full_like(x, np.nan)
    rows = max(1, ROBUST_BLOCK_ELEMENTS // max(1, n_points * window))
    for block in range(0, n_series, rows):
        part = windows[block : block + rows]
        n = np.sum(~np.isnan(part), axis=2)
        with np.errstate(all="ignore"), _quiet_all_nan():
            median = np.nanmedian(part, axis=2)
            mad = np.nanmedian(np.abs(part - median[..., np.newaxis]), axis=2)
        # 1.4826 * MAD estimates the standard deviation of normal data.
        block_z = _standardize(x[block : block + rows], median, 1.4826 * mad)
        block_z[n < min_periods] = np.nan
        z[block : block + rows] = block_z
    z[np.isnan(x)] = np.nan
    return _result(z, squeeze)


def ensemble(values: np.ndarray, window: int = 60, min_periods: int = 10) -> Detection:
    """The median of the three detectors' z (and its score): one detector misfiring, such as
    the plain z-score right after an outlier, does not decide alone."""
    x, squeeze = _as_2d(values)
    stacked = np.stack(
        [
            rolling_zscore(x, window, min_periods).z,
            ewma(x, min_periods=min_periods).z,
            robust_zscore(x, window, min_periods).z,
        ]
    )
    with np.errstate(all="ignore"), _quiet_all_nan():
        z = np.nanmedian(stacked, axis=0)
    return _result(z, squeeze)


DETECTORS = {
    "zscore": rolling_zscore,
    "ewma": ewma,
    "robust": robust_zscore,
    "ensemble": ensemble,
}


def _check(window: int, min_periods: int) -> None:
    if window < 2:
        raise ValueError("window must be at least 2 points")
    if not 2 <= min_periods <= window:
        raise ValueError("min_periods must be between 2 and window")
