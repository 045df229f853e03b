"""Numenta Anomaly Benchmark (NAB) scoring of anomaly scores (numpy, no Prefect).

The method of NAB's sweeper (numenta/NAB), as ../shared/data/nab-dev/README.md states it:

- the first ``min(floor(0.15 n), 750)`` rows of a file are probation: detections there count
  for nothing;
- a row is a detection when its score >= the threshold, one threshold per profile for the
  whole corpus, chosen to maximise the profile's total;
- in each labelled window only the first detection counts, earning
  ``tp * sigma(-(e - i + 1) / W) / sigma(-1)`` (window of W rows ending at row e, detection at
  row i, ``sigma(y) = 2 / (1 + exp(5 y)) - 1``); a window without one costs ``fn``;
- every detection outside the windows costs ``fp * sigma((i - e) / (W - 1))``, measured from
  the end e of the window before it, or ``fp`` in full with no window before it or more
  than three window widths after it;
- the corpus total is normalised to ``100 (raw - null) / (perfect - null)``, where null never
  fires (``-fn`` per window) and perfect detects each window on its first row (``tp``).

Sweeping thresholds is cheap: each file's scores become a short list of events (threshold
level, change of score), computed once; the total at every threshold is then one sort and
one cumulative sum over the corpus's events.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROBATION_FRACTION = 0.15
PROBATION_MAX_ROWS = 750
# Past this many window widths after a window, a false positive costs the full fp weight.
FP_HORIZON_WIDTHS = 3.0


@dataclass(frozen=True)
class Profile:
    """Weights of one NAB scoring profile (NAB's cost matrix, less its unused tnWeight)."""

    name: str
    tp: float
    fp: float
    fn: float


# NAB's config/profiles.json; load_profiles reads the file itself where it is at hand.
PROFILES: dict[str, Profile] = {
    "standard": Profile("standard", tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Profile("reward_low_FP_rate", tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Profile("reward_low_FN_rate", tp=1.0, fp=0.11, fn=2.0),
}


def load_profiles(path: str | Path) -> dict[str, Profile]:
    """Profiles from a NAB ``profiles.json`` (``{name: {"CostMatrix": {...}}}``)."""
    raw = json.loads(Path(path).read_text())
    return {
        name: Profile(
            name,
            tp=float(body["CostMatrix"]["tpWeight"]),
            fp=float(body["CostMatrix"]["fpWeight"]),
            fn=float(body["CostMatrix"]["fnWeight"]),
        )
        for name, body in raw.items()
    }


def probation_rows(n_rows: int) -> int:
    return min(math.floor(PROBATION_FRACTION * n_rows), PROBATION_MAX_ROWS)


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's ``2 / (1 + exp(5 y)) - 1``: 1 well before 0, 0 at 0, -1 well after."""
    with np.errstate(over="ignore"):
        return 2.0 / (1.0 + np.exp(5.0 * np.asarray(y, dtype=np.float64))) - 1.0


# --- one file's labels ----------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What a row is worth in one file, whatever the scores: computed once per file.

    ``windows`` are inclusive row ranges, in time order, not overlapping. ``tp_unit`` is the
    (unweighted) reward of a first detection at each row inside a window, ``fp_unit`` the
    (unweighted, negative) cost of a detection at each row outside them.
    """

    n_rows: int
    windows: np.ndarray  # (k, 2) int: first and last row of each window
    probation: int
    window_of: np.ndarray  # per row: index of its window, -1 outside every window
    tp_unit: np.ndarray
    fp_unit: np.ndarray

    @property
    def scored_windows(self) -> np.ndarray:
        """Windows with at least one row after probation (the rest NAB does not count)."""
        return np.flatnonzero(self.windows[:, 1] >= self.probation)


def layout(n_rows: int, windows: Sequence[tuple[int, int]] | np.ndarray) -> Layout:
    """The per-row rewards and costs of a file of ``n_rows`` with these window rows."""
    bounds = np.asarray(windows, dtype=np.int64).reshape(-1, 2)
    if len(bounds) and (
        (bounds[:, 0] > bounds[:, 1]).any()
        or bounds[0, 0] < 0
        or bounds[-1, 1] >= n_rows
        or (bounds[1:, 0] <= bounds[:-1, 1]).any()
    ):
        raise ValueError(f"windows must be ordered, disjoint row ranges within {n_rows} rows")
    rows = np.arange(n_rows)
    window_of = np.full(n_rows, -1, dtype=np.int64)
    tp_unit = np.zeros(n_rows)
    for index, (start, end) in enumerate(bounds):
        width = end - start + 1
        inside = rows[start : end + 1]
        window_of[start : end + 1] = index
        tp_unit[start : end + 1] = scaled_sigmoid(-(end - inside + 1) / width) / scaled_sigmoid(-1)

    # A detection outside the windows is measured from the end of the window before it.
    before = np.searchsorted(bounds[:, 1], rows, side="left") - 1  # last window ending < row
    fp_unit = np.full(n_rows, -1.0)
    after = (before >= 0) & (window_of < 0)
    end = bounds[before[after], 1]
    width = bounds[before[after], 1] - bounds[before[after], 0] + 1
    with np.errstate(divide="ignore"):
        position = (rows[after] - end) / (width - 1.0)  # a one-row window: inf, full cost
    fp_unit[after] = np.where(position > FP_HORIZON_WIDTHS, -1.0, scaled_sigmoid(position))
    fp_unit[window_of >= 0] = 0.0
    return Layout(n_rows, bounds, probation_rows(n_rows), window_of, tp_unit, fp_unit)


def window_rows(timestamps: np.ndarray, windows: Iterable[Sequence[str]]) -> np.ndarray:
    """Window time bounds (NAB's timestamp strings) as inclusive row ranges: from the first
    row at or after the start to the last row at or before the end."""
    times = np.asarray(timestamps, dtype="datetime64[us]")
    bounds = []
    for start, end in windows:
        first = int(np.searchsorted(times, np.datetime64(start, "us"), side="left"))
        last = int(np.searchsorted(times, np.datetime64(end, "us"), side="right")) - 1
        if last < first:
            raise ValueError(f"window {start} .. {end} holds no row")
        bounds.append((first, last))
    return np.asarray(bounds, dtype=np.int64).reshape(-1, 2)


# --- scores as threshold events -------------------------------------------------------------


@dataclass(frozen=True)
class Events:
    """A detector's scores on some files, as changes of the total when the threshold falls
    to ``level``: everything the sweep needs, profile-independent.

    At threshold t the raw score of a profile is ``-fn * windows`` plus, over the events with
    ``level >= t``, ``tp * tp_unit + fn * found + fp * fp_unit``.
    """

    level: np.ndarray
    tp_unit: np.ndarray  # change in the reward of a window's first detection
    found: np.ndarray  # 1 where a window gets its first detection (its fn cost goes)
    fp_unit: np.ndarray  # cost of one false-positive row
    windows: int  # windows that count

    @staticmethod
    def concat(parts: Sequence[Events]) -> Events:
        return Events(
            np.concatenate([p.level for p in parts]),
            np.concatenate([p.tp_unit for p in parts]),
            np.concatenate([p.found for p in parts]),
            np.concatenate([p.fp_unit for p in parts]),
            sum(p.windows for p in parts),
        )


def events(file: Layout, scores: np.ndarray) -> Events:
    """The threshold events of one file's scores (NaN, "no opinion", scores 0)."""
    score = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    if score.shape != (file.n_rows,):
        raise ValueError(f"expected {file.n_rows} scores, got shape {score.shape}")
    levels, tp, found, fp = [], [], [], []

    # Outside the windows every detection after probation counts, each row once.
    outside = np.flatnonzero(file.window_of[file.probation :] < 0) + file.probation
    levels.append(score[outside])
    fp.append(file.fp_unit[outside])
    tp.append(np.zeros(len(outside)))
    found.append(np.zeros(len(outside)))

    # Inside a window only the first detection counts: as the threshold falls, it moves to
    # each earlier row that beats every score before it (a "record" of the running max).
    for index in file.scored_windows:
        start = max(int(file.windows[index, 0]), file.probation)
        end = int(file.windows[index, 1])
        part = score[start : end + 1]
        running = np.maximum.accumulate(part)
        record = np.flatnonzero(np.r_[True, part[1:] > running[:-1]])[::-1]  # highest first
        unit = file.tp_unit[start + record]
        levels.append(part[record])
        tp.append(np.diff(unit, prepend=0.0))
        found.append(np.r_[1.0, np.zeros(len(record) - 1)])
        fp.append(np.zeros(len(record)))
    return Events(
        np.concatenate(levels),
        np.concatenate(tp),
        np.concatenate(found),
        np.concatenate(fp),
        len(file.scored_windows),
    )


@dataclass(frozen=True)
class Score:
    """One profile's result: the threshold, the raw and normalised totals and the counts."""

    profile: str
    threshold: float  # detection when score >= threshold; inf: never fires
    raw: float
    null: float
    perfect: float
    tp: int  # windows detected
    fn: int  # windows missed
    fp: int  # false-positive rows

    @property
    def normalised(self) -> float:
        span = self.perfect - self.null
        return 100.0 * (self.raw - self.null) / span if span else 0.0


def _contribution(e: Events, profile: Profile) -> np.ndarray:
    return profile.tp * e.tp_unit + profile.fn * e.found + profile.fp * e.fp_unit


def score_at(e: Events, threshold: float, profile: Profile) -> Score:
    """The profile's score with a fixed threshold."""
    on = e.level >= threshold
    null = -profile.fn * e.windows
    found = int(e.found[on].sum())
    return Score(
        profile.name,
        float(threshold),
        null + float(_contribution(e, profile)[on].sum()),
        null,
        profile.tp * e.windows,
        found,
        e.windows - found,
        int(np.count_nonzero(on & (e.fp_unit < 0))),
    )


def sweep(e: Events, profile: Profile) -> Score:
    """The profile's best score over every threshold (each distinct score, and never firing),
    ties going to the higher threshold as in NAB."""
    null = -profile.fn * e.windows
    order = np.argsort(-e.level, kind="stable")
    level = e.level[order]
    total = null + np.cumsum(_contribution(e, profile)[order])
    # The total at a threshold includes every event at that level: take each level's last.
    last = np.flatnonzero(np.r_[level[1:] != level[:-1], True]) if len(level) else level
    if not len(last) or total[last].max() <= null:
        return Score(profile.name, math.inf, null, null, profile.tp * e.windows, 0, e.windows, 0)
    best = last[int(np.argmax(total[last]))]
    found = int(e.found[order][: best + 1].sum())
    return Score(
        profile.name,
        float(level[best]),
        float(total[best]),
        null,
        profile.tp * e.windows,
        found,
        e.windows - found,
        int(np.count_nonzero(e.fp_unit[order][: best + 1] < 0)),
    )


# --- the corpus on disk ---------------------------------------------------------------------


@dataclass(frozen=True)
class LabelledFile:
    name: str  # "<category>/<file>.csv", the key of combined_windows.json
    timestamps: np.ndarray  # datetime64[us]
    values: np.ndarray
    layout: Layout


def read_series(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """A NAB data file (header ``timestamp,value``) as (datetime64[us], float64) arrays."""
    with open(path, newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header != ["timestamp", "value"]:
            raise ValueError(f"{path}: expected header timestamp,value, got {header}")
        body = list(rows)
    stamps = np.array([row[0] for row in body], dtype="datetime64[us]")
    return stamps, np.array([row[1] for row in body], dtype=np.float64)


def load_corpus(root: str | Path) -> list[LabelledFile]:
    """Every file listed in ``root/combined_windows.json``, read from ``root/data``."""
    root = Path(root)
    labels = json.loads((root / "combined_windows.json").read_text())
    corpus = []
    for name in sorted(labels):
        stamps, values = read_series(root / "data" / name)
        corpus.append(
            LabelledFile(
                name, stamps, values, layout(len(values), window_rows(stamps, labels[name]))
            )
        )
    return corpus


def score_corpus(
    corpus: Sequence[LabelledFile],
    scores: Sequence[np.ndarray],
    profiles: Mapping[str, Profile] = PROFILES,
) -> dict[str, Score]:
    """Each profile's best (swept) score of one detector's scores on the corpus."""
    combined = Events.concat([events(f.layout, s) for f, s in zip(corpus, scores, strict=True)])
    return {name: sweep(combined, profile) for name, profile in profiles.items()}
