"""Detectors: causal, vectorized, NaN-safe, scores in [0, 1], and they find what they should."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from neuralops.detectors import (
    DEFAULT_HOLD,
    DEFAULT_THRESHOLD,
    DETECTORS,
    PARTS,
    Detection,
    Stream,
    change,
    combined,
    combined_parts,
    context,
    detections,
    ewma,
    likelihood,
    robust_zscore,
    rolling_zscore,
    shape,
    variance,
)

METHODS = sorted(DETECTORS)
# The context detector compares with the same time a period earlier: short test series get
# a short "day".
PARAMS = {"context": {"period": 40}}


def run(method: str, x: np.ndarray, **kwargs: object) -> Detection:
    return DETECTORS[method](x, **{**PARAMS.get(method, {}), **kwargs})


rng = np.random.default_rng(7)


@pytest.fixture(autouse=True)
def _same_draws_whatever_ran_before() -> None:
    """Each test draws from a fresh generator: with one shared by the module, a test's data
    depended on which tests ran before it in its process (xdist, ordering), and an unlucky
    draw failed a spike test now and then."""
    global rng
    rng = np.random.default_rng(7)


def noisy(n: int = 400, series: int = 1) -> np.ndarray:
    t = np.arange(n)
    return 50 + 5 * np.sin(t / 20) + rng.normal(0, 1, (series, n))


# The change, variance and likelihood detectors average over recent points: one spike is
# not what they are for (their own tests below).
POINTWISE = [m for m in METHODS if m not in ("change", "likelihood", "variance")]


@pytest.mark.parametrize("method", POINTWISE)
def test_a_spike_scores_near_one_and_above_everything_else(method: str) -> None:
    x = noisy()[0]
    # The defaults are long baselines (tuned on NAB): a spike stands out against the whole
    # series, its seasonal swing (+-5) included, not just against the noise (sd 1).
    x[300] += 25
    score = run(method, x).score
    assert score[300] > 0.99
    assert score[300] > np.nanpercentile(np.delete(score, 300), 99)


@pytest.mark.parametrize("method", POINTWISE)
def test_flat_series_is_calm_until_it_moves(method: str) -> None:
    x = np.full(200, 5.0)
    x[150] = 5.5
    detection = run(method, x)
    assert np.nanmax(detection.score[:150]) == 0.0
    assert detection.score[150] > 0.99


@pytest.mark.parametrize("method", METHODS)
def test_gaps_and_broken_samples_score_nan_and_scoring_resumes(method: str) -> None:
    x = noisy()[0]
    x[100:140] = np.nan
    x[200] = np.inf
    score = run(method, x).score
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


def test_robust_matches_a_plain_nanmedian_loop() -> None:
    # Its own draw: the module's generator's state depends on which tests ran before, and a
    # draw whose first windows held tied values once met the MAD-0 fallback by chance.
    x = 50 + 5 * np.sin(np.arange(150) / 20) + np.random.default_rng(3).normal(0, 1, 150)
    x = np.round(x, 1)  # ties, as real data has
    x[40:47] = np.nan
    x[90] = np.nan
    x[100:115] = 50.0  # mostly one value: a MAD of 0 ...
    x[108] = 50.3
    expected = np.full_like(x, np.nan)
    flat = 0
    for t in range(len(x)):
        base = x[max(0, t - 21) : t]
        base = base[~np.isnan(base)]
        if len(base) >= 5 and not np.isnan(x[t]):
            median = np.median(base)
            spread = 1.4826 * np.median(np.abs(base - median))
            if spread == 0:  # ... where the mean absolute deviation stands in
                flat += 1
                spread = 1.2533 * np.mean(np.abs(base - median))
            expected[t] = (x[t] - median) / spread
    assert flat > 0
    np.testing.assert_allclose(
        robust_zscore(x, window=21, min_periods=5).z, expected, rtol=1e-12, atol=0
    )


def test_robust_spread_falls_back_to_the_mean_deviation_when_mad_is_zero() -> None:
    # Mostly one value: the MAD is 0, yet an ordinary value is not a billion-sigma event.
    x = np.tile([3.0, 3.0, 3.0, 4.0], 31)
    z = robust_zscore(x, window=20).z
    assert np.nanmax(np.abs(z[40:])) < 5
    base = x[103:123]
    expected = (x[123] - 3.0) / (1.2533 * np.mean(np.abs(base - 3.0)))
    assert z[123] == pytest.approx(expected)
    flat = np.full(60, 7.0)
    flat[50] = 7.1
    assert robust_zscore(flat, window=20).score[50] == 1.0  # only a flat baseline has no spread


def test_ewma_matches_a_plain_loop() -> None:
    x = noisy(200)[0]
    x[50:55] = np.nan
    alpha, expected = 0.1, np.full_like(x, np.nan)
    mean, var, seen = 0.0, 0.0, 0
    for t, value in enumerate(x):
        if np.isnan(value):
            continue
        if seen >= 5:
            expected[t] = (value - mean) / np.sqrt(var)
        seen += 1
        rate = alpha / (1 - (1 - alpha) ** seen)  # 1, then falling to alpha
        diff = value - mean
        mean += rate * diff
        var = (1 - rate) * (var + rate * diff * diff)
    np.testing.assert_allclose(ewma(x, alpha=alpha, min_periods=5).z, expected, rtol=1e-9)


def test_ewma_with_a_small_alpha_starts_from_the_plain_mean_and_variance() -> None:
    # A short series and a long memory: early points are judged against what came before,
    # not against the first point with a variance still growing.
    # Its own draw: the module's generator's state depends on which tests ran before.
    x = 50 + 5 * np.sin(np.arange(60) / 20) + np.random.default_rng(7).normal(0, 1, 60)
    z = ewma(x, alpha=0.001).z
    for t in (20, 40, 59):
        base = x[:t]
        assert z[t] == pytest.approx((x[t] - base.mean()) / base.std(), rel=0.02)


def test_a_large_offset_does_not_cancel_the_variance_away() -> None:
    # Its own draw: the module's generator's state depends on which tests ran before (a draw
    # whose spike landed on a low point, z ~5.4 by any method, once failed this in CI).
    x = 1e9 + np.random.default_rng(0).normal(0, 1, 300)
    x[250] += 8
    baseline = x[:250]
    exact = (x[250] - baseline.mean()) / baseline.std(ddof=1)  # numpy's two-pass sums
    assert exact == pytest.approx(8, abs=0.5)
    # Within a tenth of it: the spread is floored at FLOOR x the level (1 at 1e9).
    assert rolling_zscore(x).z[250] == pytest.approx(exact, rel=0.1)
    assert rolling_zscore(x).score[250] > 0.99


@pytest.mark.parametrize("method", METHODS)
def test_streaming_in_pieces_equals_the_whole_bit_for_bit(method: str) -> None:
    x = noisy(500, series=3)
    x[0, 100:130] = np.nan
    x[1, :20] = np.nan
    x[2, 300] = np.inf
    whole = DETECTORS[method](x, min_periods=5)
    cuts = [0, 1, 2, 9, 60, 61, 250, 499, 500]
    stream = Stream(method, min_periods=5)
    pieces = [stream.update(x[:, a:b]) for a, b in pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate([p.z for p in pieces], axis=1), whole.z)
    np.testing.assert_array_equal(np.concatenate([p.score for p in pieces], axis=1), whole.score)


def test_stream_checks_its_method_parameters_and_series_count() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        Stream("magic")
    with pytest.raises(ValueError, match="no parameter window"):
        Stream("ewma", window=10)
    with pytest.raises(ValueError, match="alpha"):
        Stream("ensemble", alpha=2.0)
    stream = Stream("zscore")
    stream.update(np.ones((2, 5)))
    with pytest.raises(ValueError, match="expected 2 series"):
        stream.update(np.ones((3, 5)))


def test_detections_fire_once_per_episode() -> None:
    score = np.array([0.0, 1, 1, 0, 0, 0, 1, 0, 1, np.nan, 1])
    assert detections(score, 0.5, hold=0).tolist() == (score >= 0.5).tolist()
    assert np.flatnonzero(detections(score, 0.5, hold=2)).tolist() == [1, 6]
    # 8 and 10 come within 3 points of one that reached it (6, 8): one episode. Per series.
    both = detections(np.stack([score, score[::-1]]), 0.5, hold=3)
    assert [np.flatnonzero(row).tolist() for row in both] == [[1, 6], [0, 8]]
    with pytest.raises(ValueError, match="hold"):
        detections(score, 0.5, hold=-1)


def test_detections_are_causal_and_default_to_the_module_threshold() -> None:
    x = noisy()[0]
    x[300] += 30
    found = detections(DETECTORS["ensemble"](x).score)
    assert found[300] and DEFAULT_HOLD > 0 and 0 < DEFAULT_THRESHOLD < 1
    score = DETECTORS["ensemble"](x).score
    changed = score.copy()
    changed[320:] = 1.0
    np.testing.assert_array_equal(detections(score)[:320], detections(changed)[:320])


def test_a_window_longer_than_the_data_equals_the_whole_history() -> None:
    x = noisy(n=150, series=3)
    np.testing.assert_array_equal(rolling_zscore(x, window=5000).z, rolling_zscore(x, 150).z)


def daily(days: int = 6, period: int = 48, series: int = 1, seed: int = 5) -> np.ndarray:
    """A daily pattern (a busy half day, a quiet one) with noise of sd 1."""
    t = np.arange(days * period)
    shape = np.where((t % period) < period // 2, 100.0, 20.0)
    return shape + np.random.default_rng(seed).normal(0, 1, (series, len(t)))


def test_context_sees_a_normal_value_at_an_abnormal_time() -> None:
    x = daily()[0]
    at = 4 * 48 + 30  # a quiet hour on day 5, at the busy level: ordinary for the series
    x[at] = 100.0
    assert at % 48 >= 24 and x[at] < x.max()  # a quiet time; a value the series often has
    ctx = context(x, period=48)
    level = ewma(x)
    assert ctx.score[at] > 0.999 and ctx.score[at] == np.nanmax(ctx.score)
    assert level.score[at] < 0.99  # far from the recent mean: no (the series swings there)
    # The same time next day is compared with the median of three days: no echo.
    assert ctx.score[at + 48] < 0.99


def test_change_sees_a_level_shift_and_averages_a_spike_away() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 800)
    spike = x.copy()
    spike[500] += 6
    shifted = x.copy()
    shifted[600:] += 2.5  # small against the points' spread, large for a mean of 6
    assert np.nanmax(change(spike).z[500:506]) < 4
    assert np.nanmax(change(shifted).z[600:606]) > 6
    assert np.nanmax(np.abs(ewma(shifted).z[600:606])) < 6  # point by point it is noise


def test_combined_takes_the_strongest_part_and_names_it() -> None:
    x = daily(days=8)[0]
    x[5 * 48 + 30] = 100.0  # context: busy level at a quiet time
    x[7 * 48 :] += 8.0  # change: the whole last day shifted
    found, which, parts = combined_parts(x, period=48)
    np.testing.assert_array_equal(found.z, combined(x, period=48).z)
    assert PARTS[which[5 * 48 + 30]] == "context"
    assert found.z[5 * 48 + 30] == parts[1][5 * 48 + 30]
    assert "change" in {PARTS[i] for i in which[7 * 48 : 7 * 48 + 6]}
    # Where a part decides, the z is its own (the change part weighted).
    for i, name in enumerate(PARTS):
        at = which == i
        weight = 1.5 if name == "change" else 1.0
        np.testing.assert_array_equal(found.z[at], weight * parts[i][at])
    assert (which[np.isnan(found.z)] == -1).all()


@pytest.mark.parametrize(
    ("method", "params"),
    [("context", {"period": 48}), ("combined", {"period": 48}), ("change", {"window": 4})],
)
def test_seasonal_streams_equal_the_whole_bit_for_bit(method: str, params: dict) -> None:
    x = daily(days=6, series=3)
    x[0, 100:130] = np.nan
    x[1, :60] = np.nan
    whole = DETECTORS[method](x, **params)
    stream = Stream(method, **params)
    cuts = [0, 1, 47, 48, 49, 150, 200, 288]
    z = np.concatenate([stream.update(x[:, a:b]).z for a, b in pairwise(cuts)], axis=1)
    np.testing.assert_array_equal(z, whole.z)
    # Bounded state: three days of points plus a few sums, whatever the length.
    assert stream.state_bytes() <= 8 * (3 * 48 + 40)


def test_seasonal_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="period"):
        context(np.ones(10), period=1)
    with pytest.raises(ValueError, match="period"):
        Stream("combined", period=0)
    with pytest.raises(ValueError, match="window"):
        change(np.ones(10), window=1)


def test_likelihood_flags_a_sustained_rise_of_the_raw_score_not_a_lone_blip() -> None:
    rng = np.random.default_rng(9)
    raw = np.clip(rng.normal(0.3, 0.1, 2000), 0, 1)  # a noisy raw score
    blip = raw.copy()
    blip[1500] = 1.0
    burst = raw.copy()
    burst[1500:1510] = 0.8  # moderately high, ten points in a row
    assert np.nanmax(likelihood(blip).score[1500:1510]) < 0.99
    found = likelihood(burst)
    assert np.nanmax(found.score[1500:1510]) > 0.9995
    assert np.nanargmax(found.score[1500:1520]) < 10  # while the burst lasts
    low = raw.copy()
    low[1500:1510] = 0.0  # only a rise is anomalous
    assert np.nanmax(likelihood(low).score[1500:1510]) == 0.0
    # A flat raw score: the spread's floor keeps the next small move ordinary.
    flat = np.full(500, 0.1)
    flat[400] = 0.15
    assert likelihood(flat).score[400] < 0.5


def test_context_without_a_day_of_history_has_no_opinion_and_streams_the_same() -> None:
    x = noisy(120, series=2)  # two hours of minutes, 1,440 points a day: no day before
    whole = context(x, period=1440)
    assert np.isnan(whole.z).all()
    stream = Stream("combined", period=1440)
    np.testing.assert_array_equal(stream.update(x).z, combined(x, period=1440).z)
    # combined is then the level and change parts alone.
    level, shift = ewma(x).z, 1.5 * change(x).z
    strongest = np.where(np.abs(shift) > np.abs(level), shift, level)
    np.testing.assert_array_equal(combined(x, period=1440).z[:, 20:], strongest[:, 20:])


def test_variance_sees_the_spread_change_not_the_level() -> None:
    rng = np.random.default_rng(12)
    x = 10 + rng.normal(0, 1, 1200)
    noisier = x.copy()
    noisier[800:] = 10 + rng.normal(0, 3, 400)  # same level, three times the spread
    shifted = x.copy()
    shifted[800:] += 5  # five sd up, same spread
    assert np.nanmax(variance(noisier).z[800:830]) > 4
    assert np.nanmax(np.abs(variance(x).z[200:])) < 4
    # A shift is one large step among 24: much less than a lasting change of spread.
    assert np.nanmax(variance(shifted).z[800:830]) < np.nanmax(variance(noisier).z[800:830]) / 2


def test_shape_sees_a_shape_the_series_has_not_drawn_at_an_ordinary_level() -> None:
    rng = np.random.default_rng(6)
    t = np.arange(3000)
    x = np.sin(t / 5) + rng.normal(0, 0.05, 3000)
    x[2000:2040] = rng.normal(0, 0.05, 40)  # the wave stops at its mean: no level moves
    found = shape(x)
    assert np.nanmax(found.z[2000:2050]) > 5
    assert np.nanmax(np.abs(found.z[500:1990])) < 3
    assert np.nanmax(np.abs(ewma(x).z[2000:2040])) < 2  # far from the mean: no
    # The history bounds the state: 2 windows + history points and a few sums per series.
    stream = Stream("shape")
    stream.update(x[np.newaxis])
    assert stream.state_bytes() <= 8 * (2 * 8 + 288 + 10)
