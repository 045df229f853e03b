"""Anomaly detectors over many series at once (numpy, no Prefect).

Every detector takes ``values`` shaped ``(n_series, n_points)`` (or one series, 1-D), with NaN
for gaps, and returns a ``Detection`` of the same shape: the raw ``z`` and a ``score`` in
[0, 1]. Each is causal: the point at ``t`` is compared with a baseline built from points
strictly before ``t``, so a score never changes when later data arrives. Points that are NaN,
or whose baseline has fewer than ``min_periods`` points, score NaN ("no opinion"), never 0.

``Stream`` scores a series in pieces, in time order, carrying each detector's state between
pieces; the result equals scoring the whole series at once, bit for bit. ``detections`` turns
scores into alerts, one per episode.

The default method, ``combined``, takes per point the strongest of three views: the EWMA
level, the context (the same time on the days before) and a level change (a short mean).
It and the context, change and likelihood parameters were chosen by leave-one-category-out
cross-validation on the NAB corpus (../shared/data/nab-dev; reports/detection.md, section
``quality``, bench/detection.py): fitted on four categories, scored on the fifth, never by
the in-sample score. The z-score, EWMA and median/MAD defaults are each method's best
in-sample configuration there (standard profile, ``detections(hold=DEFAULT_HOLD)``), except
the median/MAD window, where 960 points score higher but cost many times the time of 120
(section ``speed``). A baseline longer than the data given uses all of it.
``DEFAULT_THRESHOLD`` (|z| ~ 7) is the threshold the rules use; the folds chose |z| 6.1 to
7.7 for ``combined``. Scores reach 1.0 in float64 from |z| ~ 16.7: a threshold cannot tell
larger z apart.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from scipy.signal import lfilter
from scipy.special import erf

# A flat baseline has no spread; any move off it is as surprising as it gets.
FLOOR = 1e-9
# |z| = 2 scores 0.68, 4 scores 0.95, 6 scores 0.997, 7 scores 0.9995.
SCORE_SCALE = 2.0
# Default parameters, in points (not time); see the module docstring for where they come from.
ZSCORE_WINDOW = 1920
EWMA_ALPHA = 0.0005
ROBUST_WINDOW = 120
MIN_PERIODS = 10  # no effect on NAB (no gaps, and probation outlasts it): kept as it was
# The score at which a rule signals by default (|z| ~ 6.96).
DEFAULT_THRESHOLD = 0.9995
# Points after a detection during which the same series does not detect again.
DEFAULT_HOLD = 100
# The context detector: points per day (a day of 5-minute steps), the EWMA of its errors.
CONTEXT_PERIOD = 288
CONTEXT_DAYS = 3
CONTEXT_ALPHA = 0.001
# The change detector: points averaged, the EWMA of the averages; its weight in ``combined``.
CHANGE_WINDOW = 6
CHANGE_ALPHA = 0.0005
CHANGE_WEIGHT = 1.5
# The variance detector: points whose mean step size is compared (alpha: CHANGE_ALPHA).
VARIANCE_WINDOW = 24
# The shape detector: points per run, earlier runs it is compared with (a day at 5 minutes).
SHAPE_WINDOW = 8
SHAPE_HISTORY = 288
# Anomaly likelihood: raw scores averaged, the EWMA of their long-run distribution.
LIKELIHOOD_WINDOW = 10
LIKELIHOOD_ALPHA = 0.001
# Floor of the spread of the mean raw score (scores in [0, 1]): a perfectly predictable
# series would otherwise alarm on the slightest blip.
LIKELIHOOD_MIN_SPREAD = 0.02
# Bound on the (series x points x window) block the robust detector sorts at once: small
# blocks stay in cache, which matters more than the per-block overhead.
ROBUST_BLOCK_ELEMENTS = 500_000
# 1.4826 * MAD estimates the standard deviation of normal data; where more than half the
# baseline is one value (MAD = 0: counts, flat stretches), 1.2533 * the mean absolute
# deviation from the median does instead, so the next ordinary value is not a 1e9 sigma event.
MAD_TO_STD = 1.4826
MEAN_AD_TO_STD = 1.2533


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


# --- rolling z-score -------------------------------------------------------------------------


@dataclass
class _ZState:
    ref: np.ndarray  # each series' first valid value (NaN until seen): sums are taken off it
    count: np.ndarray  # cumulative sums at the last window + 1 positions
    total: np.ndarray
    squares: np.ndarray


def _zscore_state(n_series: int, window: int) -> _ZState:
    zeros = np.zeros((n_series, window + 1))
    return _ZState(np.full(n_series, np.nan), zeros.astype(np.int64), zeros, zeros.copy())


def _zscore_step(
    x: np.ndarray, state: _ZState, window: int, min_periods: int
) -> tuple[np.ndarray, _ZState]:
    valid = ~np.isnan(x)
    # Sums are taken off the first valid value, not 0: a series at 1e9 +- 1 keeps its
    # variance instead of losing it to cancellation.
    ref = state.ref.copy()
    unset = np.isnan(ref) & valid.any(axis=1)
    if unset.any():
        ref[unset] = x[unset, np.argmax(valid[unset], axis=1)]
    filled = np.where(valid, x - ref[:, np.newaxis], 0.0)

    # Cumulative sums continue from the carried ones (cumsum adds in order, so chunked and
    # whole runs give the same bits). Entry j of an extended array is the sum of the points
    # before global point offset - window + j, so point offset + i has its baseline
    # (points t - window .. t - 1) in entries window + i minus entries i.
    def extend(carried: np.ndarray, new: np.ndarray) -> np.ndarray:
        out = np.empty((carried.shape[0], window + 1 + new.shape[1]), carried.dtype)
        out[:, : window + 1] = carried
        out[:, window + 1 :] = new
        np.cumsum(out[:, window:], axis=1, out=out[:, window:])
        return out

    count = extend(state.count, valid)
    total = extend(state.total, filled)
    squares = extend(state.squares, filled * filled)
    n_points = x.shape[1]
    end = slice(window, window + n_points)
    start = slice(0, n_points)
    n = count[:, end] - count[:, start]
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (total[:, end] - total[:, start]) / n
        var = (squares[:, end] - squares[:, start]) / n - mean * mean
    std = np.sqrt(np.maximum(var, 0.0) * n / np.maximum(n - 1, 1))  # sample std
    z = _standardize(x, ref[:, np.newaxis] + mean, std)
    z[(n < min_periods) | ~valid] = np.nan
    tail = slice(n_points, n_points + window + 1)
    return z, _ZState(ref, count[:, tail], total[:, tail], squares[:, tail])


def rolling_zscore(
    values: np.ndarray, window: int = ZSCORE_WINDOW, min_periods: int = MIN_PERIODS
) -> Detection:
    """z of each point against the mean and standard deviation of the previous ``window``
    points (NaN-aware, O(points) via cumulative sums)."""
    _check(window, min_periods)
    x, squeeze = _as_2d(values)
    # A window longer than the data sees all of it either way; the state arrays are sized by
    # the window, so a 1,920-point window over 120 points would cost 16x the memory.
    window = min(window, max(x.shape[1], min_periods))
    z, _ = _zscore_step(x, _zscore_state(x.shape[0], window), window, min_periods)
    return _result(z, squeeze)


# --- EWMA ------------------------------------------------------------------------------------


@dataclass
class _EwmaState:
    ref: np.ndarray  # each series' first valid value (0 until seen): sums are taken off it
    total: np.ndarray  # sum of keep^age * (x - ref) over the points seen
    spread: np.ndarray  # the same weights' sum of squared deviations
    seen: np.ndarray


def _ewma_state(n_series: int) -> _EwmaState:
    zeros = np.zeros(n_series)
    return _EwmaState(zeros, zeros.copy(), zeros.copy(), np.zeros(n_series, dtype=np.int64))


def _weight(count: np.ndarray, alpha: float) -> np.ndarray:
    """Sum of the weights keep^0 .. keep^(count - 1): count while count << 1/alpha, then
    1/alpha."""
    return -np.expm1(count * np.log1p(-alpha)) / alpha


def _ewma_filter(
    values: np.ndarray,
    ref: np.ndarray,
    total: np.ndarray,
    spread: np.ndarray,
    seen: np.ndarray,
    alpha: float,
    min_periods: int,
    length: np.ndarray | None = None,
    min_spread: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z of gap-free rows (or of rows valid in their first ``length`` columns only); returns
    z and the final weighted sums.

    Sums are of x - ref (a flat series stays exactly flat, an offset of 1e9 costs no
    precision). The mean is ref + total / weight, the variance spread / weight, with
    total' = keep * total + x and spread' = keep * spread + (1 - 1 / weight') * diff^2
    (diff = x - the mean before x). That is the usual EWMA recursion with an alpha of
    1 / weight, which starts at 1 and falls to ``alpha``: the first points get the plain
    mean and variance, not a mean stuck at the first point and a variance that takes
    ~1/alpha points to grow (which made small alphas fire on every short series). Both
    recursions are linear with constant coefficients: lfilter runs them in C.
    """
    keep = 1.0 - alpha
    count = seen[:, np.newaxis] + np.arange(values.shape[1])  # points before each point
    # Weights depend on the count only: one row of them when every series has seen as many.
    low = int(seen.min())
    table = _weight(np.arange(low, int(seen.max()) + values.shape[1] + 1), alpha)
    if low == seen.max():
        weight_before, weight = table[np.newaxis, :-1], table[np.newaxis, 1:]
    else:
        weight_before, weight = table[count - low], table[count + 1 - low]
    shifted = values - ref[:, np.newaxis]
    totals, _ = lfilter([1.0], [1.0, -keep], shifted, axis=1, zi=keep * total[:, np.newaxis])
    total_before = np.concatenate([total[:, np.newaxis], totals[:, :-1]], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_before = total_before / weight_before
        diff = np.where(count > 0, shifted - mean_before, 0.0)
        step = (1.0 - 1.0 / weight) * diff * diff
        spreads, _ = lfilter([1.0], [1.0, -keep], step, axis=1, zi=keep * spread[:, np.newaxis])
        spread_before = np.concatenate([spread[:, np.newaxis], spreads[:, :-1]], axis=1)
        std_before = np.sqrt(np.maximum(spread_before / weight_before, 0.0))
    if min_spread:
        std_before = np.maximum(std_before, min_spread)
    z = _standardize(values, ref[:, np.newaxis] + mean_before, std_before)
    z[count < min_periods] = np.nan
    if length is None:
        return z, totals[:, -1], spreads[:, -1]
    # Rows whose valid points fill only the first ``length`` columns: the sums after the
    # last of them (none: the sums carried in).
    rows = np.arange(len(values))
    last = np.maximum(length - 1, 0)
    some = length > 0
    return (
        z,
        np.where(some, totals[rows, last], total),
        np.where(some, spreads[rows, last], spread),
    )


def _ewma_step(
    x: np.ndarray, state: _EwmaState, alpha: float, min_periods: int, min_spread: float = 0.0
) -> tuple[np.ndarray, _EwmaState]:
    ref, total, spread = state.ref.copy(), state.total.copy(), state.spread.copy()
    seen = state.seen.copy()
    z = np.full_like(x, np.nan)
    if not x.size:
        return z, _EwmaState(ref, total, spread, seen)
    valid = ~np.isnan(x)
    unset = (seen == 0) & valid.any(axis=1)
    if unset.any():
        ref[unset] = x[unset, np.argmax(valid[unset], axis=1)]
    # Gap-free series go through the filter together. A gap leaves a series' state untouched,
    # so the others are filtered together over their valid points moved to the front (the
    # same recursion, row by row, as filtering each row's valid points alone).
    whole = np.flatnonzero(valid.all(axis=1))
    if len(whole):
        z[whole], total[whole], spread[whole] = _ewma_filter(
            x[whole],
            ref[whole],
            total[whole],
            spread[whole],
            seen[whole],
            alpha,
            min_periods,
            min_spread=min_spread,
        )
        seen[whole] += x.shape[1]
    gappy = np.flatnonzero(~valid.all(axis=1))
    if len(gappy):
        order = np.argsort(~valid[gappy], axis=1, kind="stable")  # valid columns first
        length = valid[gappy].sum(axis=1)
        packed = np.take_along_axis(x[gappy], order, axis=1)
        packed[np.arange(packed.shape[1]) >= length[:, np.newaxis]] = 0.0  # never read back
        packed_z, total[gappy], spread[gappy] = _ewma_filter(
            packed,
            ref[gappy],
            total[gappy],
            spread[gappy],
            seen[gappy],
            alpha,
            min_periods,
            length,
            min_spread,
        )
        rows_z = np.empty_like(packed_z)
        np.put_along_axis(rows_z, order, packed_z, axis=1)
        rows_z[~valid[gappy]] = np.nan
        z[gappy] = rows_z
        seen[gappy] += length
    return z, _EwmaState(ref, total, spread, seen)


def _check_alpha(alpha: float, min_periods: int) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be between 0 and 1 (exclusive)")
    _check(max(2, min_periods), min_periods)


def ewma(
    values: np.ndarray, alpha: float = EWMA_ALPHA, min_periods: int = MIN_PERIODS
) -> Detection:
    """z against an exponentially weighted mean and variance of the points before it.

    Weights are normalised (as pandas' ``ewm(adjust=True)``): over its first points a series
    gets the plain mean and variance, over many more the usual EWMA with ``alpha``. A gap
    (NaN) leaves a series' state untouched.
    """
    _check_alpha(alpha, min_periods)
    x, squeeze = _as_2d(values)
    z, _ = _ewma_step(x, _ewma_state(x.shape[0]), alpha, min_periods)
    return _result(z, squeeze)


# --- median / MAD ----------------------------------------------------------------------------


def _kth_of_valley(dev: np.ndarray, k: int) -> np.ndarray:
    """The k-th smallest (0-based) along the last axis of rows that fall then rise.

    |sorted window - its median| is such a valley, and the k + 1 smallest of a valley are
    contiguous, so the k-th smallest is the least of max(dev[a], dev[a + k]) over a: two
    vectorized passes instead of a second sort.
    """
    width = dev.shape[-1]
    return np.minimum.reduce(np.maximum(dev[..., : width - k], dev[..., k:]), axis=-1)


def _median_spread(windows: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust spread of each window (last axis, NaN = missing) holding ``n``
    valid values: the median and MAD are the numbers nanmedian gives, from one sort per
    window."""
    width = windows.shape[-1]
    ordered = np.sort(windows, axis=-1)  # NaN sorts last
    lo = np.maximum((n - 1) // 2, 0)[..., np.newaxis]
    hi = np.minimum(n // 2, width - 1)[..., np.newaxis]
    with np.errstate(invalid="ignore"):
        median = (
            np.take_along_axis(ordered, lo, -1)[..., 0]
            + np.take_along_axis(ordered, hi, -1)[..., 0]
        ) / 2
        dev = np.abs(np.subtract(ordered, median[..., np.newaxis], out=ordered), out=ordered)
    mad = (_kth_of_valley(dev, (width - 1) // 2) + _kth_of_valley(dev, width // 2)) / 2
    # Windows with gaps (and the warm-up) hold fewer values: sort their deviations instead.
    partial = n < width
    if partial.any():
        rows = dev[partial]
        rows.sort(axis=-1)
        count = n[partial][:, np.newaxis]
        lo, hi = np.maximum((count - 1) // 2, 0), np.minimum(count // 2, width - 1)
        with np.errstate(invalid="ignore"):
            mad[partial] = (
                np.take_along_axis(rows, lo, -1)[:, 0] + np.take_along_axis(rows, hi, -1)[:, 0]
            ) / 2
    spread = MAD_TO_STD * mad
    flat = mad == 0
    if flat.any():
        spread[flat] = MEAN_AD_TO_STD * np.nansum(dev[flat], axis=-1) / n[flat]
    return median, spread


def _robust_step(
    x: np.ndarray, tail: np.ndarray, window: int, min_periods: int
) -> tuple[np.ndarray, np.ndarray]:
    n_series, n_points = x.shape
    # ``tail`` holds the window points before x (NaN before the series began): the baseline
    # of point t is columns t .. t + window - 1 of the padded series.
    padded = np.concatenate([tail, x], axis=1)
    valid = ~np.isnan(padded)
    cumulative = np.concatenate([np.zeros((n_series, 1), np.int64), np.cumsum(valid, 1)], 1)
    count = cumulative[:, window : window + n_points] - cumulative[:, :n_points]
    z = np.full_like(x, np.nan)
    if not valid.any():
        return z, padded[:, padded.shape[1] - window :]
    # Before the data has filled a window, the baselines' leading columns are empty for every
    # series: sort only the columns that can hold data, in segments that double in width.
    # (A rule whose lookback is shorter than the window never sorts the empty part.)
    first = int(np.argmax(valid.any(axis=0)))
    start = 0
    while start < n_points:
        width = min(window, max(1, start + window - first))
        end = n_points if width == window else min(n_points, start + width)
        width = min(window, max(1, end - 1 + window - first))
        if width >= min_periods:  # narrower baselines hold too few points anyway
            columns = padded[:, start + window - width : end - 1 + window]
            windows = np.lib.stride_tricks.sliding_window_view(columns, width, axis=1)
            rows = max(1, ROBUST_BLOCK_ELEMENTS // max(1, (end - start) * width))
            for block in range(0, n_series, rows):
                part = (slice(block, block + rows), slice(start, end))
                median, spread = _median_spread(windows[part[0]], count[part])
                z[part] = _standardize(x[part], median, spread)
        start = end
    z[(count < min_periods) | np.isnan(x)] = np.nan
    return z, padded[:, padded.shape[1] - window :]


def robust_zscore(
    values: np.ndarray, window: int = ROBUST_WINDOW, min_periods: int = MIN_PERIODS
) -> Detection:
    """z against the median and MAD of the previous ``window`` points: one outlier in the
    baseline does not hide the next one, nor flag normal points after it. Where the MAD is 0
    (most of the baseline one value) the mean absolute deviation from the median stands in;
    only a baseline that is all one value has no spread."""
    _check(window, min_periods)
    x, squeeze = _as_2d(values)
    z, _ = _robust_step(x, np.full((x.shape[0], window), np.nan), window, min_periods)
    return _result(z, squeeze)


# --- ensemble --------------------------------------------------------------------------------


def _median_of_three(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """nanmedian of three arrays, elementwise, without nanmedian's cost (it sorts)."""
    all_valid = ~(np.isnan(a) | np.isnan(b) | np.isnan(c))
    middle = np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    # One or two valid: the mean of the smallest and largest valid (fmin/fmax skip NaN).
    low = np.fmin(np.fmin(a, b), c)
    high = np.fmax(np.fmax(a, b), c)
    return np.where(all_valid, middle, (low + high) / 2)


def ensemble(
    values: np.ndarray,
    window: int = ZSCORE_WINDOW,
    min_periods: int = MIN_PERIODS,
    alpha: float = EWMA_ALPHA,
    robust_window: int = ROBUST_WINDOW,
) -> Detection:
    """The median of the three detectors' z (and its score): one detector misfiring, such as
    the plain z-score right after an outlier, does not decide alone. ``window`` is the
    z-score's, ``alpha`` the EWMA's, ``robust_window`` the median/MAD's; each defaults to
    that detector's own default."""
    _check(robust_window, min_periods)
    x, squeeze = _as_2d(values)
    z = _median_of_three(
        rolling_zscore(x, window, min_periods).z,
        ewma(x, alpha, min_periods).z,
        robust_zscore(x, robust_window, min_periods).z,
    )
    return _result(z, squeeze)


# --- context: the same time on the days before -----------------------------------------------


@dataclass
class _ContextState:
    tail: np.ndarray  # the last CONTEXT_DAYS * period raw points (NaN before the series began)
    errors: _EwmaState  # the EWMA of the errors against the seasonal prediction


def _context_state(n_series: int, period: int) -> _ContextState:
    return _ContextState(np.full((n_series, CONTEXT_DAYS * period), np.nan), _ewma_state(n_series))


def _context_step(
    x: np.ndarray, state: _ContextState, period: int, alpha: float, min_periods: int
) -> tuple[np.ndarray, _ContextState]:
    padded = np.concatenate([state.tail, x], axis=1)
    span, n_points = state.tail.shape[1], x.shape[1]
    # The prediction is the median of the same time 1, 2 and 3 periods ago: one anomalous day
    # does not echo as a false alarm on the next (fewer days seen: the mean of those there are).
    days = [padded[:, span - k * period : span - k * period + n_points] for k in (1, 2, 3)]
    error = x - _median_of_three(*days)
    z, errors = _ewma_step(error, state.errors, alpha, min_periods)
    return z, _ContextState(padded[:, padded.shape[1] - span :], errors)


def context(
    values: np.ndarray,
    period: int = CONTEXT_PERIOD,
    alpha: float = CONTEXT_ALPHA,
    min_periods: int = MIN_PERIODS,
) -> Detection:
    """z of each point's distance from the same time of day (``period`` points back) on the
    three days before, against the EWMA spread of those distances: a normal value at an
    abnormal time scores high, a daily pattern scores low. The prediction is the median of the
    three days, so one anomalous day does not repeat as an alarm a day later."""
    _check_period(period)
    _check_alpha(alpha, min_periods)
    x, squeeze = _as_2d(values)
    if period >= x.shape[1]:
        # No point has a day before it (a 1-hour lookback at 1-minute steps): no opinion,
        # without building three days of empty history per series.
        return _result(np.full_like(x, np.nan), squeeze)
    z, _ = _context_step(x, _context_state(x.shape[0], period), period, alpha, min_periods)
    return _result(z, squeeze)


# --- change: level shifts ---------------------------------------------------------------------


def _recent_mean_step(x: np.ndarray, tail: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the valid points among each point and the ``tail.shape[1]`` before it (NaN
    where none is valid), and the new tail. Each mean is its own window's sum, so pieces
    give the same bits as the whole."""
    width = tail.shape[1] + 1
    padded = np.concatenate([tail, x], axis=1)
    if not x.shape[1]:
        return np.empty_like(x), tail
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=1)
    valid = ~np.isnan(windows)
    count = valid.sum(axis=-1)
    total = np.where(valid, windows, 0.0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, padded[:, padded.shape[1] - tail.shape[1] :]


@dataclass
class _ChangeState:
    tail: np.ndarray  # the last window - 1 raw points
    means: _EwmaState  # the EWMA of the recent means


def _change_state(n_series: int, window: int) -> _ChangeState:
    return _ChangeState(np.full((n_series, window - 1), np.nan), _ewma_state(n_series))


def _change_step(
    x: np.ndarray, state: _ChangeState, alpha: float, min_periods: int
) -> tuple[np.ndarray, _ChangeState]:
    mean, tail = _recent_mean_step(x, state.tail)
    z, means = _ewma_step(mean, state.means, alpha, min_periods)
    z[np.isnan(x)] = np.nan
    return z, _ChangeState(tail, means)


def change(
    values: np.ndarray,
    window: int = CHANGE_WINDOW,
    alpha: float = CHANGE_ALPHA,
    min_periods: int = MIN_PERIODS,
) -> Detection:
    """z of the mean of the last ``window`` points (this one included) against the EWMA mean
    and spread of such means before it: a level shift keeps scoring while one outlier is
    averaged away, and noise averages out of the spread, so small sustained shifts show."""
    _check(window, 2)
    _check_alpha(alpha, min_periods)
    x, squeeze = _as_2d(values)
    z, _ = _change_step(x, _change_state(x.shape[0], window), alpha, min_periods)
    return _result(z, squeeze)


# --- variance: changes of spread -------------------------------------------------------------


@dataclass
class _VarianceState:
    last: np.ndarray  # each series' previous point (NaN before the first)
    steps: _ChangeState  # the recent mean step size and its EWMA


def _variance_state(n_series: int, window: int) -> _VarianceState:
    return _VarianceState(np.full(n_series, np.nan), _change_state(n_series, window))


def _variance_step(
    x: np.ndarray, state: _VarianceState, alpha: float, min_periods: int
) -> tuple[np.ndarray, _VarianceState]:
    previous = np.concatenate([state.last[:, np.newaxis], x[:, :-1]], axis=1)
    step = np.abs(x - previous)  # differences: a level shift moves one of them only
    mean, tail = _recent_mean_step(step, state.steps.tail)
    with np.errstate(divide="ignore"):
        # The log makes doubling and halving of the spread equally far; an offset keeps a
        # flat stretch (steps of 0) finite.
        level = np.log(mean + FLOOR * (np.abs(x) + 1.0))
    z, means = _ewma_step(level, state.steps.means, alpha, min_periods)
    z[np.isnan(x)] = np.nan
    last = state.last.copy()
    if x.shape[1]:
        last = x[:, -1].copy()
    return z, _VarianceState(last, _ChangeState(tail, means))


def variance(
    values: np.ndarray,
    window: int = VARIANCE_WINDOW,
    alpha: float = CHANGE_ALPHA,
    min_periods: int = MIN_PERIODS,
) -> Detection:
    """z of the log of the mean absolute step over the last ``window`` points against the
    EWMA of such logs: the spread of a series changes (noisier, or suddenly smooth) while its
    level may not. Steps (differences) make it blind to the level itself. Not part of the
    default: added to ``combined`` in a trial on nab-dev (windows 6 to 24, weights 0.5 and 1)
    it moved the cross-validated score by -1 to +1 points, no gain for its false alarms."""
    _check(window, 2)
    _check_alpha(alpha, min_periods)
    x, squeeze = _as_2d(values)
    z, _ = _variance_step(x, _variance_state(x.shape[0], window), alpha, min_periods)
    return _result(z, squeeze)


# --- shape: the last points against the shapes seen before -------------------------------------


@dataclass
class _ShapeState:
    # The last 2 window + history - 2 raw points (NaN before the series began): the oldest
    # earlier run ends window + history - 1 points back and starts window - 1 before that.
    tail: np.ndarray
    distances: _EwmaState  # the EWMA of the nearest-neighbour distances


def _shape_state(n_series: int, window: int, history: int) -> _ShapeState:
    span = 2 * window + history - 2
    return _ShapeState(np.full((n_series, span), np.nan), _ewma_state(n_series))


def _shape_step(
    x: np.ndarray, state: _ShapeState, window: int, history: int, alpha: float, min_periods: int
) -> tuple[np.ndarray, _ShapeState]:
    span = state.tail.shape[1]
    padded = np.concatenate([state.tail, x], axis=1)
    # Every run of ``window`` points, less its mean: the shape, not the level (the other
    # detectors see the level). Run i ends at padded column i + window - 1.
    runs = np.lib.stride_tricks.sliding_window_view(padded, window, axis=1)
    runs = runs - runs.mean(axis=-1, keepdims=True)
    n_points = x.shape[1]
    now = runs[:, span - window + 1 :]  # the run ending at each new point
    nearest = np.full(x.shape, np.inf)
    # Earlier runs that do not overlap the current one: ending ``window`` to ``window +
    # history - 1`` points before it.
    for back in range(window, window + history):
        start = span - window + 1 - back  # >= 0: the tail holds every earlier run
        before = runs[:, start : start + n_points]
        np.fmin(nearest, np.sum((now - before) ** 2, axis=-1), out=nearest)  # NaN: skipped
    nearest[~np.isfinite(nearest)] = np.nan  # no complete earlier run: no opinion
    distance = np.sqrt(nearest / window)  # per point, in the series' units
    z, distances = _ewma_step(distance, state.distances, alpha, min_periods)
    z[np.isnan(x)] = np.nan
    return z, _ShapeState(padded[:, padded.shape[1] - span :], distances)


def shape(
    values: np.ndarray,
    window: int = SHAPE_WINDOW,
    history: int = SHAPE_HISTORY,
    alpha: float = CHANGE_ALPHA,
    min_periods: int = MIN_PERIODS,
) -> Detection:
    """z of the distance from the last ``window`` points (less their mean) to the nearest of
    the ``history`` runs of as many points before them, against the EWMA of such distances:
    a shape the series has not drawn recently (a new oscillation, a sawtooth, a flat stretch
    in a wave) scores high even at an ordinary level. A nearest-neighbour model in the spirit
    of KNN CAD and ARTime; ``history`` bounds its memory and its cost (history x window per
    point): not part of the default, which must score a million points a second."""
    _check(window, 2)
    _check(history, 2)
    _check_alpha(alpha, min_periods)
    x, squeeze = _as_2d(values)
    state = _shape_state(x.shape[0], window, history)
    z, _ = _shape_step(x, state, window, history, alpha, min_periods)
    return _result(z, squeeze)


# --- combined: the default --------------------------------------------------------------------

# What each part of ``combined`` looks at, in the order the parts are returned.
PARTS = ("level", "context", "change")


def _strongest(zs: list[np.ndarray], weights: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the weighted z of largest magnitude among the parts (NaN: no opinion, and
    NaN where no part has one), and the index of the part it came from (-1 for none)."""
    z = np.full_like(zs[0], np.nan)
    best = np.full(z.shape, -1.0)
    which = np.full(z.shape, -1, dtype=np.int8)
    for index, (weight, part) in enumerate(zip(weights, zs, strict=True)):
        weighted = part * weight if weight != 1.0 else part
        with np.errstate(invalid="ignore"):
            stronger = np.abs(weighted) > best  # NaN is never stronger
        np.copyto(z, weighted, where=stronger)
        np.copyto(best, np.abs(weighted), where=stronger)
        which[stronger] = index
    return z, which


def combined_parts(
    values: np.ndarray,
    period: int = CONTEXT_PERIOD,
    alpha: float = EWMA_ALPHA,
    context_alpha: float = CONTEXT_ALPHA,
    change_window: int = CHANGE_WINDOW,
    change_weight: float = CHANGE_WEIGHT,
    min_periods: int = MIN_PERIODS,
) -> tuple[Detection, np.ndarray, list[np.ndarray]]:
    """``combined``'s result, the index into ``PARTS`` of the part that decided each point,
    and each part's own z (the change part unweighted)."""
    x, squeeze = _as_2d(values)
    zs = [
        ewma(x, alpha, min_periods).z,
        context(x, period, context_alpha, min_periods).z,
        change(x, change_window, CHANGE_ALPHA, min_periods).z,
    ]
    z, which = _strongest(zs, (1.0, 1.0, change_weight))
    if squeeze:
        return _result(z, True), which[0], [part[0] for part in zs]
    return _result(z, False), which, zs


def combined(
    values: np.ndarray,
    period: int = CONTEXT_PERIOD,
    alpha: float = EWMA_ALPHA,
    context_alpha: float = CONTEXT_ALPHA,
    change_window: int = CHANGE_WINDOW,
    change_weight: float = CHANGE_WEIGHT,
    min_periods: int = MIN_PERIODS,
) -> Detection:
    """The default: the strongest of three views of each point, so each kind of incident has
    a detector that sees it: level (EWMA z: far from the long-run mean), context (far from
    the same time on the days before: ``period`` points a day) and change (the mean of the
    last ``change_window`` points shifted, its z weighted by ``change_weight``). The z of the
    part that decided is kept, sign included. Parameters and weight: reports/detection.md,
    section quality (chosen by leave-one-category-out cross-validation on NAB)."""
    _check_period(period)
    _check_alpha(context_alpha, min_periods)
    _check(change_window, 2)
    detection, _, _ = combined_parts(
        values, period, alpha, context_alpha, change_window, change_weight, min_periods
    )
    return detection


# --- anomaly likelihood -----------------------------------------------------------------------


@dataclass
class _LikelihoodState:
    tail: np.ndarray  # the last window - 1 raw scores
    means: _EwmaState  # the long-run distribution of the recent mean score


def _likelihood_state(n_series: int, window: int) -> _LikelihoodState:
    return _LikelihoodState(np.full((n_series, window - 1), np.nan), _ewma_state(n_series))


def _likelihood_step(
    raw: np.ndarray, state: _LikelihoodState, alpha: float, min_periods: int
) -> tuple[np.ndarray, _LikelihoodState]:
    mean, tail = _recent_mean_step(raw, state.tail)
    # The distribution's mean and spread are those of the recent means before this one
    # (an EWMA of them); the spread has a floor so that a perfectly predictable series does
    # not alarm on the slightest blip.
    z, means = _ewma_step(mean, state.means, alpha, min_periods, LIKELIHOOD_MIN_SPREAD)
    return z, _LikelihoodState(tail, means)


def likelihood(
    raw: np.ndarray,
    window: int = LIKELIHOOD_WINDOW,
    alpha: float = LIKELIHOOD_ALPHA,
    min_periods: int = MIN_PERIODS,
) -> Detection:
    """Anomaly likelihood over any raw score in [0, 1] (after Ahmad et al. 2017, "Unsupervised
    real-time anomaly detection for streaming data"): how far the mean of the last ``window``
    raw scores lies above the long-run distribution of such means (an EWMA mean and spread
    with ``alpha``), as a z. Only a rise is anomalous: z below 0 scores 0. A threshold on it
    is a tail probability of the series' own score history, which transfers across series
    better than a threshold on the raw score; noisy raw scores give few, early detections."""
    _check(window, 2)
    _check_alpha(alpha, min_periods)
    x, squeeze = _as_2d(raw)
    z, _ = _likelihood_step(x, _likelihood_state(x.shape[0], window), alpha, min_periods)
    return _one_sided(z, squeeze)


def _one_sided(z: np.ndarray, squeeze: bool) -> Detection:
    score = score_from_z(np.maximum(z, 0.0))
    score[np.isnan(z)] = np.nan
    return Detection(z[0], score[0]) if squeeze else Detection(z, score)


def combined_likelihood(
    values: np.ndarray,
    period: int = CONTEXT_PERIOD,
    window: int = LIKELIHOOD_WINDOW,
    likelihood_alpha: float = LIKELIHOOD_ALPHA,
    min_periods: int = MIN_PERIODS,
) -> Detection:
    """The anomaly likelihood of the combined detector's score (its defaults otherwise)."""
    _check_period(period)
    _check(window, 2)
    _check_alpha(likelihood_alpha, min_periods)
    x, squeeze = _as_2d(values)
    raw = combined(x, period, min_periods=min_periods).score  # NaN: no opinion, skipped
    state = _likelihood_state(x.shape[0], window)
    z, _ = _likelihood_step(raw, state, likelihood_alpha, min_periods)
    z[np.isnan(x)] = np.nan
    return _one_sided(z, squeeze)


DETECTORS: dict[str, Callable[..., Detection]] = {
    "zscore": rolling_zscore,
    "ewma": ewma,
    "robust": robust_zscore,
    "ensemble": ensemble,
    "context": context,
    "change": change,
    "combined": combined,
    "likelihood": combined_likelihood,
    "variance": variance,
    "shape": shape,
}
# The detector a rule, ``detect-file`` and ``analyze`` use unless told otherwise.
DEFAULT_METHOD = "combined"


# --- detections ------------------------------------------------------------------------------


def detections(
    score: np.ndarray, threshold: float = DEFAULT_THRESHOLD, hold: int = DEFAULT_HOLD
) -> np.ndarray:
    """Points that detect: the score reaches ``threshold`` and no point in the ``hold``
    points before it did (``hold=0``: every point that reaches it).

    An anomaly lasts several points and a detector keeps firing through it; one detection
    per episode is what an alert wants, and what NAB rewards (reports/detection.md, section
    quality). Causal: point t looks at points t - hold .. t only. NaN never detects.
    """
    if hold < 0:
        raise ValueError("hold must be 0 or more points")
    values = np.asarray(score, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reached = values >= threshold
    if hold == 0 or not reached.size:
        return reached
    flat = reached.reshape(-1, reached.shape[-1])
    count = np.concatenate([np.zeros((len(flat), 1), np.int64), np.cumsum(flat, axis=1)], 1)
    t = np.arange(flat.shape[1])
    before = count[:, t] - count[:, np.maximum(t - hold, 0)]  # points t - hold .. t - 1
    return (flat & (before == 0)).reshape(reached.shape)


# --- streaming -------------------------------------------------------------------------------


class Stream:
    """One detector over series that arrive in pieces, in time order.

    ``update(piece)`` scores the new points exactly as the whole-series call would have
    (same bits), carrying only what the detector needs: the last ``window`` + 1 cumulative
    sums (z-score), the weighted sums and count (EWMA), the last ``window`` points (median
    / MAD), the last three days of points and an EWMA (context), the last ``window`` - 1
    points and an EWMA (change, likelihood); ``state_bytes()`` says how much per series
    (combined at 288 points a day: 6.9 KiB). ``Stream("ewma", alpha=0.01)`` takes the
    method's parameters by name; the default method is ``DEFAULT_METHOD``.
    """

    def __init__(self, method: str = DEFAULT_METHOD, **params: Any) -> None:
        if method not in DETECTORS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(DETECTORS)}")
        signature = inspect.signature(DETECTORS[method]).parameters
        defaults = {name: p.default for name, p in signature.items() if name != "values"}
        unknown = set(params) - set(defaults)
        if unknown:
            raise ValueError(f"{method} takes no parameter {', '.join(sorted(unknown))}")
        self.method = method
        self.params: dict[str, Any] = {**defaults, **params}
        for name in ("window", "robust_window"):
            if name in self.params:
                short = method in ("change", "likelihood", "variance", "shape")
                _check(self.params[name], 2 if short else self.params["min_periods"])
        for name in ("alpha", "context_alpha", "likelihood_alpha"):
            if name in self.params:
                _check_alpha(self.params[name], self.params["min_periods"])
        if "period" in self.params:
            _check_period(self.params["period"])
        if "change_window" in self.params:
            _check(self.params["change_window"], 2)
        self._state: dict[str, Any] | None = None
        self._n_series: int | None = None

    def _robust_window(self) -> int:
        return self.params["robust_window" if self.method == "ensemble" else "window"]

    def _initial(self, n_series: int) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self.method in ("ewma", "ensemble"):
            state["ewma"] = _ewma_state(n_series)
        if self.method in ("zscore", "ensemble"):
            state["zscore"] = _zscore_state(n_series, self.params["window"])
        if self.method in ("robust", "ensemble"):
            state["robust"] = np.full((n_series, self._robust_window()), np.nan)
        if self.method in ("context", "combined", "likelihood"):
            state["context"] = _context_state(n_series, self.params["period"])
        if self.method == "change":
            state["change"] = _change_state(n_series, self.params["window"])
        if self.method == "variance":
            state["variance"] = _variance_state(n_series, self.params["window"])
        if self.method == "shape":
            p = self.params
            state["shape"] = _shape_state(n_series, p["window"], p["history"])
        if self.method in ("combined", "likelihood"):
            state["ewma"] = _ewma_state(n_series)
            window = self.params.get("change_window", CHANGE_WINDOW)
            state["change"] = _change_state(n_series, window)
        if self.method == "likelihood":
            state["likelihood"] = _likelihood_state(n_series, self.params["window"])
        return state

    def update(self, values: np.ndarray) -> Detection:
        x, squeeze = _as_2d(values)
        if self._state is None:
            self._n_series = x.shape[0]
            self._state = self._initial(x.shape[0])
        elif x.shape[0] != self._n_series:
            raise ValueError(f"expected {self._n_series} series per piece, got {x.shape[0]}")
        p, state = self.params, self._state
        if self.method == "variance":
            z, state["variance"] = _variance_step(
                x, state["variance"], p["alpha"], p["min_periods"]
            )
            return _result(z, squeeze)
        if self.method == "shape":
            z, state["shape"] = _shape_step(
                x, state["shape"], p["window"], p["history"], p["alpha"], p["min_periods"]
            )
            return _result(z, squeeze)
        if self.method in ("context", "change", "combined", "likelihood"):
            return self._update_seasonal(x, squeeze)
        zs = []
        if self.method in ("zscore", "ensemble"):
            z, state["zscore"] = _zscore_step(x, state["zscore"], p["window"], p["min_periods"])
            zs.append(z)
        if self.method in ("ewma", "ensemble"):
            z, state["ewma"] = _ewma_step(x, state["ewma"], p["alpha"], p["min_periods"])
            zs.append(z)
        if self.method in ("robust", "ensemble"):
            z, state["robust"] = _robust_step(
                x, state["robust"], self._robust_window(), p["min_periods"]
            )
            zs.append(z)
        return _result(zs[0] if len(zs) == 1 else _median_of_three(*zs), squeeze)

    def _update_seasonal(self, x: np.ndarray, squeeze: bool) -> Detection:
        p, state = self.params, self._state
        assert state is not None
        if self.method == "change":
            z, state["change"] = _change_step(x, state["change"], p["alpha"], p["min_periods"])
            return _result(z, squeeze)
        # The likelihood runs over the combined detector at its defaults.
        alpha = {"context": p.get("alpha"), "combined": p.get("context_alpha")}
        z, state["context"] = _context_step(
            x,
            state["context"],
            p["period"],
            alpha.get(self.method) or CONTEXT_ALPHA,
            p["min_periods"],
        )
        if self.method == "context":
            return _result(z, squeeze)
        level, state["ewma"] = _ewma_step(
            x, state["ewma"], p.get("alpha", EWMA_ALPHA), p["min_periods"]
        )
        shift, state["change"] = _change_step(x, state["change"], CHANGE_ALPHA, p["min_periods"])
        weight = p.get("change_weight", CHANGE_WEIGHT)
        z, _ = _strongest([level, z, shift], (1.0, 1.0, weight))
        if self.method == "combined":
            return _result(z, squeeze)
        z, state["likelihood"] = _likelihood_step(
            score_from_z(z), state["likelihood"], p["likelihood_alpha"], p["min_periods"]
        )
        z[np.isnan(x)] = np.nan
        return _one_sided(z, squeeze)

    def state_bytes(self) -> int:
        """Bytes of state carried per series (0 before the first piece)."""
        if self._state is None or not self._n_series:
            return 0

        def size(item: Any) -> int:
            if isinstance(item, np.ndarray):
                return item.nbytes
            return sum(size(v) for v in vars(item).values())

        return sum(size(v) for v in self._state.values()) // self._n_series


def _check_period(period: int) -> None:
    if period < 2:
        raise ValueError("period must be at least 2 points (the points in one day)")


def _check(window: int, min_periods: int) -> None:
    if window < 2:
        raise ValueError("window must be at least 2 points")
    if not 2 <= min_periods <= window:
        raise ValueError("min_periods must be between 2 and window")
