"""Detectors: causal, vectorized, NaN-safe, scores in [0, 1], and they find what they should."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neuralops.detectors import DETECTORS, robust_zscore, rolling_zscore

METHODS = sorted(DETECTORS)
rng = np.random.default_rng(7)


def noisy(n: int = 400, series: int = 1) -> np.ndarray:
    t = np.arange(n)
    return 50 + 5 * np.sin(t / 20) + rng.normal(0, 1, (series, n))


@pytest.mark.parametrize("method", METHODS)
def test_a_spike_scores_near_one_and_above_everything_else(method: str) -> None:
    x = noisy()[0]
    x[300] += 15
    score = DETECTORS[method](x).score
    assert score[300] > 0.99
    assert score[300] > np.nanpercentile(np.delete(score, 300), 99)


@pytest.mark.parametrize("method", METHODS)
def test_flat_series_is_calm_until_it_moves(method: str) -> None:
    x = np.full(200, 5.0)
    x[150] = 5.5
    detection = DETECTORS[method](x)
    assert np.nanmax(detection.score[:150]) == 0.0
    assert detection.score[150] > 0.99


@pytest.mark.parametrize("method", METHODS)
def test_gaps_and_broken_samples_score_nan_and_scoring_resumes(method: str) -> None:
    x = noisy()[0]
    x[100:140] = np.nan
    x[200] = np.inf
    score = DETECTORS[method](x).score
    assert np.isnan(score[100:140]).all() and np.isnan(score[200])
    assert np.isfinite(score[150:199]).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("x", [np.array([]), np.full(50, np.nan), np.arange(5.0)])
def test_degenerate_input_gives_no_opinion(method: str, x: np.ndarray) -> None:
    detection = DETECTORS[method](x)
    assert detection.score.shape == x.shape and np.isnan(detection.score).all()


@pytest.mark.parametrize("method", METHODS)
def test_many_series_at_once_equal_one_at_a_time(method: str) -> None:
    x = noisy(series=4)
    x[2, 50:60] = np.nan
    together = DETECTORS[method](x)
    for i in range(4):
        np.testing.assert_allclose(together.z[i], DETECTORS[method](x[i]).z, equal_nan=True)


finite = st.floats(-1e6, 1e6, allow_nan=False)


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=40, deadline=None)
@given(
    x=arrays(np.float64, st.integers(20, 120), elements=finite | st.just(np.nan)),
    cut=st.integers(10, 119),
    future=st.floats(-1e9, 1e9, allow_nan=False),
)
def test_causal_and_bounded(method: str, x: np.ndarray, cut: int, future: float) -> None:
    cut = min(cut, len(x) - 1)
    before = DETECTORS[method](x, min_periods=5)
    changed = x.copy()
    changed[cut:] = future  # rewrite the future
    after = DETECTORS[method](changed, min_periods=5)
    np.testing.assert_array_equal(before.score[:cut], after.score[:cut])
    assert np.all((before.score >= 0) | np.isnan(before.score))
    assert np.all((before.score <= 1) | np.isnan(before.score))


def test_rolling_zscore_matches_a_plain_loop() -> None:
    x = noisy(120)[0]
    x[30:35] = np.nan
    expected = np.full_like(x, np.nan)
    for t in range(len(x)):
        base = x[max(0, t - 20) : t]
        base = base[~np.isnan(base)]
        if len(base) >= 5 and not np.isnan(x[t]):
            expected[t] = (x[t] - base.mean()) / base.std(ddof=1)
    np.testing.assert_allclose(rolling_zscore(x, window=20, min_periods=5).z, expected)


def test_robust_baseline_is_not_thrown_by_one_outlier() -> None:
    x = 50 + rng.normal(0, 1, 400)
    x[200] += 1000
    # The plain z-score's baseline absorbs the outlier: the next normal points look calm,
    # and a second, smaller spike is hidden; the median/MAD baseline still sees it.
    x[210] += 12
    assert robust_zscore(x).score[210] > 0.99
    assert rolling_zscore(x).score[210] < 0.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 1}, "window"),
        ({"min_periods": 1}, "min_periods"),
        ({"min_periods": 99}, "between 2 and window"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rolling_zscore(np.ones(10), **{"window": 60, **kwargs})


def test_three_dimensional_input_is_refused() -> None:
    with pytest.raises(ValueError, match="1-D or 2-D"):
        rolling_zscore(np.ones((2, 2, 2)))
