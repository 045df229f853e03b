"""NAB scoring: the rules of ../shared/data/nab-dev/README.md, on small synthetic files, and
the vectorized sweep against a row-by-row port of NAB's sweeper."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from neuralops.evaluation import (
    PROFILES,
    Events,
    Layout,
    events,
    layout,
    load_corpus,
    load_profiles,
    probation_rows,
    scaled_sigmoid,
    score_at,
    score_corpus,
    sweep,
)

NAB_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "nab-dev"
needs_corpus = pytest.mark.skipif(
    not (NAB_DEV / "combined_windows.json").exists(),
    reason=f"NAB corpus not found at {NAB_DEV} (the shared data checkout is absent)",
)
STANDARD = PROFILES["standard"]

# 1000 rows: probation is rows 0-149; windows of 50 and 100 rows.
FILE = layout(1000, [(300, 349), (600, 699)])


def detect_at(file: Layout, *rows: int) -> np.ndarray:
    scores = np.zeros(file.n_rows)
    scores[list(rows)] = 1.0
    return scores


def raw(file: Layout, *rows: int, profile: str = "standard") -> float:
    return score_at(events(file, detect_at(file, *rows)), 1.0, PROFILES[profile]).raw


def test_null_detector_scores_zero_and_perfect_scores_100() -> None:
    for profile in PROFILES.values():
        null = sweep(events(FILE, np.zeros(1000)), profile)
        assert null.normalised == 0.0 and math.isinf(null.threshold)
        assert null.raw == -profile.fn * 2
        perfect = sweep(events(FILE, detect_at(FILE, 300, 600)), profile)
        assert perfect.normalised == pytest.approx(100.0)
        assert (perfect.tp, perfect.fn, perfect.fp, perfect.threshold) == (2, 0, 0, 1.0)


def test_probation_is_min_of_15_percent_and_750_rows() -> None:
    assert [probation_rows(n) for n in (10, 1000, 4032, 5000, 15902)] == [1, 150, 604, 750, 750]


def test_detections_in_probation_are_ignored() -> None:
    assert raw(FILE, 0, 10, 149) == raw(FILE)
    assert raw(FILE, 150) < raw(FILE)  # the first row after probation is scored


def test_window_reward_follows_the_scaled_sigmoid() -> None:
    # Window 300..349 (W = 50): a detection at row i earns sigma(-(349 - i + 1) / 50) / sigma(-1).
    for row in (300, 320, 349):
        expected = scaled_sigmoid(-(349 - row + 1) / 50) / scaled_sigmoid(-1.0)
        assert raw(FILE, row) - raw(FILE) == pytest.approx(1.0 + expected)  # fn cost goes too


def test_a_late_detection_in_a_window_earns_less_than_an_early_one() -> None:
    rewards = [raw(FILE, row) for row in (300, 310, 325, 340, 349)]
    assert rewards == sorted(rewards, reverse=True)
    assert rewards[0] == pytest.approx(raw(FILE) + 2.0)  # full tp, and no fn
    assert rewards[-1] > raw(FILE)  # even the last row beats missing the window


def test_only_the_first_detection_in_a_window_counts() -> None:
    assert raw(FILE, 310, 311, 330, 349) == raw(FILE, 310)


def test_a_false_positive_right_after_a_window_costs_less_than_a_far_one() -> None:
    costs = {row: raw(FILE) - raw(FILE, row) for row in (350, 360, 400, 450, 500)}
    assert 0 < costs[350] < costs[360] < costs[400] < costs[450] <= STANDARD.fp
    # sigma((i - e) / (W - 1)) from the end of window 300..349.
    assert costs[360] == pytest.approx(-STANDARD.fp * scaled_sigmoid((360 - 349) / 49))
    # More than three window widths after it, or with no window before, the full weight.
    assert costs[500] == pytest.approx(STANDARD.fp)
    assert raw(FILE) - raw(FILE, 200) == pytest.approx(STANDARD.fp)
    # Every false-positive row costs, not just the first of a run.
    assert raw(FILE) - raw(FILE, 200, 201, 202) == pytest.approx(3 * STANDARD.fp)


def test_profiles_weigh_misses_and_false_positives() -> None:
    assert raw(FILE, 200, profile="reward_low_FP_rate") - raw(
        FILE, profile="reward_low_FP_rate"
    ) == pytest.approx(-0.22)
    assert raw(FILE, profile="reward_low_FN_rate") == -4.0


def test_the_sweep_picks_the_threshold_that_maximises_the_total() -> None:
    scores = np.zeros(1000)
    scores[300] = 0.9  # an early detection
    scores[200:230] = 0.8  # 30 false positives (-3.3) below it
    scores[340] = 0.95  # a late detection at a higher threshold
    scores[650] = 0.5  # the second window (+1.86) only below the false positives
    e = events(FILE, scores)
    best = sweep(e, STANDARD)
    candidates = [score_at(e, t, STANDARD).raw for t in (np.inf, 0.95, 0.9, 0.8, 0.5)]
    assert best.raw == pytest.approx(max(candidates))
    assert best.threshold == 0.9 and (best.tp, best.fn, best.fp) == (1, 1, 0)


def test_nan_scores_are_no_opinion() -> None:
    scores = np.full(1000, np.nan)
    assert sweep(events(FILE, scores), STANDARD).normalised == 0.0


def test_windows_must_be_ordered_and_inside_the_file() -> None:
    for bad in ([(10, 5)], [(0, 1000)], [(10, 20), (15, 30)]):
        with pytest.raises(ValueError, match="windows"):
            layout(1000, bad)


# --- the sweep against NAB's own algorithm --------------------------------------------------


def nab_sweep(file: Layout, scores: np.ndarray, threshold: float, profile: str) -> float:
    """A row-by-row port of NAB's Sweeper.calcSweepScore and calcScoreByThreshold at one
    threshold (nab/sweeper.py), the reference for the vectorized code."""
    weights = PROFILES[profile]
    max_tp = scaled_sigmoid(-1.0)
    parts: dict[object, float] = {"fp": 0.0}
    windows = [tuple(w) for w in file.windows]
    current, previous = None, None
    points = []
    for i, score in enumerate(scores):
        if windows and i == windows[0][0]:
            current = windows.pop(0)
        if current is not None:
            width = current[1] - current[0] + 1
            weighted = scaled_sigmoid(-(current[1] - i + 1) / width) * weights.tp / max_tp
        elif previous is None:
            weighted = -1.0 * weights.fp
        else:
            position = abs(previous[1] - i) / (previous[1] - previous[0])
            weighted = (-1.0 if position > 3.0 else scaled_sigmoid(position)) * weights.fp
        name = "probationary" if i < file.probation else current
        points.append((score, weighted, name))
        if current is not None and i == current[1]:
            previous, current = current, None
    for _, _, name in points:
        if name not in ("probationary", None):
            parts[name] = -weights.fn
    for score, weighted, name in points:
        if score < threshold or name == "probationary":
            continue
        if name is None:
            parts["fp"] += weighted
        else:
            parts[name] = max(parts[name], weighted)
    return sum(parts.values())


@pytest.mark.parametrize("seed", range(6))
def test_vectorized_scores_match_nab_row_by_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(60, 400))
    cuts = np.sort(rng.choice(np.arange(5, n), size=6, replace=False))
    file = layout(n, cuts.reshape(3, 2))
    scores = np.round(rng.random(n), 2)  # ties between rows, as real detectors have
    e = events(file, scores)
    for profile in PROFILES:
        for threshold in (0.3, 0.7, 0.95):
            expected = nab_sweep(file, scores, threshold, profile)
            assert score_at(e, threshold, PROFILES[profile]).raw == pytest.approx(expected)
        best = sweep(e, PROFILES[profile])
        exhaustive = max(
            [nab_sweep(file, scores, t, profile) for t in np.unique(scores)] + [best.null]
        )
        assert best.raw == pytest.approx(exhaustive)


def test_events_of_many_files_add_up() -> None:
    other = layout(500, [(100, 119)])
    a, b = detect_at(FILE, 310, 200), detect_at(other, 105)
    together = sweep(Events.concat([events(FILE, a), events(other, b)]), STANDARD)
    assert together.raw == pytest.approx(raw(FILE, 310, 200) + raw(other, 105))
    assert together.perfect == 3 and together.null == -3


# --- the shared corpus ----------------------------------------------------------------------


@needs_corpus
def test_corpus_loads_and_the_reference_detectors_score_0_and_100() -> None:
    corpus = load_corpus(NAB_DEV)
    assert len(corpus) == 34
    assert sum(len(f.layout.windows) for f in corpus) == 67
    assert load_profiles(NAB_DEV / "profiles.json") == PROFILES
    perfect = [detect_at(f.layout, *f.layout.windows[:, 0]) for f in corpus]
    null = [np.zeros(f.layout.n_rows) for f in corpus]
    for name, score in score_corpus(corpus, perfect).items():
        assert score.normalised == pytest.approx(100.0), name
    for name, score in score_corpus(corpus, null).items():
        assert score.normalised == 0.0, name
