"""Detector quality on the NAB corpus, and detector speed.

    .venv/bin/python bench/detection.py [--quick] [--only quality|speed] [--report PATH]

A full run writes sections ``quality`` and ``speed`` of reports/detection.md (other scripts
own other sections of that file). ``--quick`` runs a reduced grid on fewer series, for a
smoke test, and writes a report only where ``--report`` names one.

quality: every method over a parameter grid, scored with NAB's method (neuralops.evaluation)
on ../shared/data/nab-dev, per profile, on the raw scores (the threshold swept over every
distinct score) and with ``detections(score, threshold, hold)`` (one detection per episode;
the threshold swept over a grid), against a null and a random detector scored in the same
run; then leave-one-category-out cross-validation (parameters and threshold chosen on four
categories, the fifth scored), raw and held, beside the in-sample figure. The seasonal
detectors get each file's points per day from its spacing, as detect-file does. speed:
points per second of each method on 10,000 series x 1,440 points, against a plain pandas
rolling z-score, and the state the default carries per series.
"""

from __future__ import annotations

import argparse
import csv
import inspect
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path

import numpy as np

from neuralops import detectors as D
from neuralops.evaluation import PROFILES, Events, LabelledFile, events, load_corpus, score_at
from neuralops.evaluation import score_corpus as sweep_corpus
from neuralops.offline import detect_file, period_from_spacing

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # bench/ is not a package

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "detection.md"
TITLE = "Detection: quality on NAB and speed"
NAB_DEV = ROOT.parent / "shared" / "data" / "nab-dev"
PROFILE_NAMES = {
    "standard": "standard",
    "reward_low_FP_rate": "low FP",
    "reward_low_FN_rate": "low FN",
}

FULL_GRID = {
    "zscore": [{"window": w} for w in (30, 60, 120, 240, 480, 960, 1920, 3840)],
    "ewma": [{"alpha": a} for a in (0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)],
    "robust": [{"window": w} for w in (30, 60, 120, 240, 480, 960)],
    # The ensemble's parts take their own parameters: combinations of the parts' best.
    "ensemble": [
        {"window": w, "alpha": a, "robust_window": r}
        for w in (960, 1920)
        for a in (0.0005, 0.001, 0.002)
        for r in (120, 960)
    ],
    "context": [{"alpha": a} for a in (0.0005, 0.001, 0.002, 0.005)],
    "change": [{"window": w} for w in (3, 6, 12, 24)],
    "variance": [{"window": w} for w in (6, 12, 24, 48)],
    "shape": [{"window": w, "history": h} for w in (8, 16) for h in (96, 288)],
    # The default's own parameters; the EWMA part keeps the EWMA detector's default alpha.
    "combined": [
        {"context_alpha": a, "change_window": w, "change_weight": c}
        for a in (0.001, 0.002)
        for w in (6, 12)
        for c in (1.0, 1.5)
    ],
    # Anomaly likelihood over the combined detector's score (its defaults).
    "likelihood": [
        {"window": w, "likelihood_alpha": a} for w in (5, 10) for a in (0.0005, 0.001, 0.002)
    ],
}
QUICK_GRID = {
    "zscore": [{"window": 60}, {"window": 240}],
    "ewma": [{"alpha": 0.005}, {"alpha": 0.05}],
    "robust": [{"window": 60}],
    "ensemble": [{"window": 1920, "alpha": 0.0005, "robust_window": 120}],
    "context": [{"alpha": 0.001}],
    "change": [{"window": 6}],
    "variance": [{"window": 24}],
    "shape": [{"window": 8, "history": 288}],
    "combined": [{"context_alpha": 0.001, "change_window": 6, "change_weight": 1.5}],
    "likelihood": [{"window": 10, "likelihood_alpha": 0.001}],
}
# Detections held for DEFAULT_HOLD in the cross-validation (the signals' post-processing),
# besides the raw scores (hold 0).
CV_HOLDS = (0, D.DEFAULT_HOLD)
# Robust windows timed besides the default (on 1,000 series): what a longer one costs.
ROBUST_WINDOWS_TIMED = (240, 960)
FULL_HOLDS = (0, 25, 50, 100, 200, 400)
QUICK_HOLDS = (0, 100)


def command() -> str:
    """The command line of this run, as typed from the project's root."""
    return " ".join([".venv/bin/python", "bench/detection.py", *sys.argv[1:]])


def threshold_grid(quick: bool) -> np.ndarray:
    """Score thresholds for the held detections: |z| from 1 (the likelihood's tail z are
    small) to 16.5 (the score is 1.0 in float64 from |z| ~ 16.7 with SCORE_SCALE 2), and 1.0
    itself."""
    z = np.geomspace(1.0, 16.5, 20 if quick else 60)
    return np.unique(np.r_[D.score_from_z(z), 1.0])


# --- quality ---------------------------------------------------------------------------------


@dataclass
class Result:
    method: str
    params: dict
    hold: int
    scores: dict  # profile -> evaluation.Score


@dataclass
class Quality:
    results: list[Result] = field(default_factory=list)
    references: dict = field(default_factory=dict)  # name -> {profile: (mean, lo, hi)}
    categories: list[str] = field(default_factory=list)
    windows: dict = field(default_factory=dict)  # category -> windows that count
    # (method, params label, hold) -> raw totals [threshold, category, profile]
    tables: dict = field(default_factory=dict)
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fixed: dict = field(default_factory=dict)  # method -> raw totals [category, profile]
    defaults: dict = field(default_factory=dict)  # method -> {profile: Score}
    checks: list[str] = field(default_factory=list)
    seconds: float = 0.0


def defaults(method: str) -> dict:
    signature = inspect.signature(D.DETECTORS[method]).parameters
    return {k: p.default for k, p in signature.items() if k != "values"}


def label(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def held_best(
    corpus: list[LabelledFile], score: list[np.ndarray], hold: int, thresholds: np.ndarray
) -> dict:
    """Each profile's best score over the threshold grid, detections held for ``hold``."""
    best: dict = {}
    for threshold in thresholds[::-1]:  # high to low: ties keep the higher threshold
        found = [D.detections(s, threshold, hold) for s in score]
        combined = Events.concat([events(f.layout, d) for f, d in zip(corpus, found, strict=True)])
        for name, profile in PROFILES.items():
            # Detections are 0/1 scores: "at 1.0" is "at this threshold".
            result = replace(score_at(combined, 1.0, profile), threshold=float(threshold))
            if name not in best or result.raw > best[name].raw + 1e-12:
                best[name] = result
    return best


def category(f: LabelledFile) -> str:
    return f.name.split("/")[0]


def period_of(f: LabelledFile) -> int:
    """Points per day of a file, read off its spacing as detect-file does."""
    return period_from_spacing(f.timestamps.astype("datetime64[us]").astype(np.int64) / 1e6)


def run(f: LabelledFile, method: str, params: dict | None = None) -> D.Detection:
    """A detector on one file, the seasonal ones with the file's points per day."""
    extra = {"period": period_of(f)} if method in ("context", "combined") else {}
    return D.DETECTORS[method](f.values, **extra, **(params or {}))


def score_of(method: str, z: np.ndarray) -> np.ndarray:
    """The score of a z: the likelihood is one-sided (only a rise of the raw score counts)."""
    return D.score_from_z(np.maximum(z, 0.0) if method == "likelihood" else z)


def per_category(
    corpus: list[LabelledFile],
    score: list[np.ndarray],
    hold: int,
    thresholds: np.ndarray,
    categories: list[str],
) -> np.ndarray:
    """Raw NAB totals [threshold, category, profile] of ``detections(score, t, hold)`` (hold
    0: every point at or above t)."""
    out = np.zeros((len(thresholds), len(categories), len(PROFILES)))
    names = [category(f) for f in corpus]
    for ti, threshold in enumerate(thresholds):
        parts: dict[str, list[Events]] = {c: [] for c in categories}
        for f, s, c in zip(corpus, score, names, strict=True):
            found = D.detections(s, threshold, hold) if hold else s >= threshold
            parts[c].append(events(f.layout, found.astype(np.float64)))
        for ci, c in enumerate(categories):
            combined = Events.concat(parts[c])
            for pi, profile in enumerate(PROFILES.values()):
                out[ti, ci, pi] = score_at(combined, 1.0, profile).raw
    return out


def z_of(corpus: list[LabelledFile], method: str, params: dict, cache: dict) -> list[np.ndarray]:
    """The z of every file; the ensemble and the combined detector are built from their
    parts' cached z the same way ensemble() and combined() do (checked in run_quality)."""
    key = (method, tuple(sorted(params.items())))
    if key not in cache:
        if method == "combined":
            weights = (1.0, 1.0, params["change_weight"])
            parts = (
                z_of(corpus, "ewma", {"alpha": D.EWMA_ALPHA}, cache),
                z_of(corpus, "context", {"alpha": params["context_alpha"]}, cache),
                z_of(corpus, "change", {"window": params["change_window"]}, cache),
            )
            cache[key] = [D._strongest(list(zs), weights)[0] for zs in zip(*parts, strict=True)]
        elif method == "ensemble":
            parts = (
                z_of(corpus, "zscore", {"window": params["window"]}, cache),
                z_of(corpus, "ewma", {"alpha": params["alpha"]}, cache),
                z_of(corpus, "robust", {"window": params["robust_window"]}, cache),
            )
            cache[key] = [D._median_of_three(*zs) for zs in zip(*parts, strict=True)]
        else:
            cache[key] = [run(f, method, params).z for f in corpus]
    return cache[key]


def run_quality(quick: bool) -> Quality:
    started = time.perf_counter()
    corpus = load_corpus(NAB_DEV)
    quality = Quality()
    rows = sum(f.layout.n_rows for f in corpus)
    windows = sum(len(f.layout.windows) for f in corpus)
    print(f"quality: {len(corpus)} files, {rows:,} rows, {windows} windows", flush=True)

    # References, measured here: never firing, perfect, and uniform random scores.
    null = sweep_corpus(corpus, [np.zeros(f.layout.n_rows) for f in corpus])
    perfect_scores = []
    for f in corpus:
        s = np.zeros(f.layout.n_rows)
        s[f.layout.windows[:, 0]] = 1.0
        perfect_scores.append(s)
    perfect = sweep_corpus(corpus, perfect_scores)
    seeds = range(3 if quick else 10)
    random_runs = [
        sweep_corpus(corpus, [np.random.default_rng(seed).random(f.layout.n_rows) for f in corpus])
        for seed in seeds
    ]
    quality.references = {
        "null (never fires)": {p: (null[p].normalised,) * 3 for p in PROFILES},
        "perfect (first row of each window)": {p: (perfect[p].normalised,) * 3 for p in PROFILES},
        f"random uniform scores ({len(seeds)} seeds: mean, min-max)": {
            p: (
                float(np.mean([r[p].normalised for r in random_runs])),
                min(r[p].normalised for r in random_runs),
                max(r[p].normalised for r in random_runs),
            )
            for p in PROFILES
        },
    }

    grid = QUICK_GRID if quick else FULL_GRID
    holds = QUICK_HOLDS if quick else FULL_HOLDS
    thresholds = threshold_grid(quick)
    quality.thresholds = thresholds
    quality.categories = sorted({category(f) for f in corpus})
    quality.windows = {
        c: sum(len(f.layout.scored_windows) for f in corpus if category(f) == c)
        for c in quality.categories
    }
    cache: dict = {}
    for method, configs in grid.items():
        for params in configs:
            t0 = time.perf_counter()
            z = z_of(corpus, method, params, cache)
            score = [np.nan_to_num(score_of(method, zz), nan=0.0) for zz in z]
            for hold in holds:
                if hold == 0:
                    result = sweep_corpus(corpus, score)  # exact: every distinct score
                else:
                    result = held_best(corpus, score, hold, thresholds)
                quality.results.append(Result(method, params, hold, result))
            for hold in CV_HOLDS:
                quality.tables[(method, label(params), hold)] = per_category(
                    corpus, score, hold, thresholds, quality.categories
                )
            best = max(r.scores["standard"].normalised for r in quality.results[-len(holds) :])
            print(
                f"  {method:8s} {label(params):24s} best standard {best:5.1f}"
                f"  ({time.perf_counter() - t0:.1f}s)",
                flush=True,
            )

    # The module's defaults as they stand: fixed threshold and hold, not swept.
    for method in D.DETECTORS:
        score = [np.nan_to_num(run(f, method).score, nan=0.0) for f in corpus]
        found = [D.detections(s) for s in score]
        combined = Events.concat([events(f.layout, d) for f, d in zip(corpus, found, strict=True)])
        quality.defaults[method] = {n: score_at(combined, 1.0, p) for n, p in PROFILES.items()}
        quality.fixed[method] = per_category(
            corpus, [d.astype(np.float64) for d in found], 0, np.array([1.0]), quality.categories
        )[0]

    # The ensemble built from cached parts is ensemble() itself.
    params = grid["ensemble"][0]
    for f, zz in zip(corpus, z_of(corpus, "ensemble", params, cache), strict=True):
        np.testing.assert_array_equal(zz, D.ensemble(f.values, **params).z)
    quality.checks.append(f"ensemble z built from cached parts equals ensemble() ({label(params)})")
    params = grid["combined"][-1]
    for f, zz in zip(corpus, z_of(corpus, "combined", params, cache), strict=True):
        np.testing.assert_array_equal(zz, run(f, "combined", params).z)
    quality.checks.append(f"combined z built from cached parts equals combined() ({label(params)})")
    # min_periods only acts in a series' first points and after gaps: the corpus has no gaps
    # and every file's probation (>= 169 rows) outlasts it.
    for method in ("zscore", "ewma", "robust"):
        a = sweep_corpus(
            corpus, [D.DETECTORS[method](f.values, min_periods=10).score for f in corpus]
        )
        b = sweep_corpus(
            corpus, [D.DETECTORS[method](f.values, min_periods=60).score for f in corpus]
        )
        same = all(a[p].raw == b[p].raw for p in PROFILES)
        quality.checks.append(
            f"{method}: min_periods 10 and 60 score {'the same' if same else 'DIFFERENTLY'}"
        )
    quality.seconds = time.perf_counter() - started
    return quality


@dataclass
class CrossValidation:
    method: str
    hold: int
    profile: str
    in_sample: float
    in_sample_choice: str
    folds: list[tuple[str, float, str]]  # category, normalised (raw total without windows), choice
    pooled: float  # the held-out folds' totals together, normalised over the corpus
    fold_mean: float  # mean of the normalised folds that have windows


def normalised(raw: float, windows: int, profile: str) -> float:
    p = PROFILES[profile]
    null, perfect = -p.fn * windows, p.tp * windows
    return 100.0 * (raw - null) / (perfect - null) if windows else float("nan")


def cross_validate(q: Quality, method: str, hold: int, profile: str) -> CrossValidation | None:
    """Leave one category out: the parameters and the threshold that maximise the profile's
    total on the other categories, scored on the one left out."""
    keys = [k for k in q.tables if k[0] == method and k[2] == hold]
    if not keys:
        return None
    pi = list(PROFILES).index(profile)
    # [config, threshold, category]; thresholds high to low so that ties keep the higher one.
    table = np.stack([q.tables[k][::-1, :, pi] for k in keys])
    levels = q.thresholds[::-1]
    total_windows = sum(q.windows.values())

    def choice(index: tuple[int, int]) -> str:
        return f"{keys[index[0]][1]}; threshold |z| {z_for_score(levels[index[1]])}"

    total = table.sum(axis=2)
    best = np.unravel_index(int(np.argmax(total)), total.shape)
    folds, pooled = [], 0.0
    for ci, c in enumerate(q.categories):
        train = total - table[:, :, ci]
        pick = np.unravel_index(int(np.argmax(train)), train.shape)
        raw = float(table[pick[0], pick[1], ci])
        pooled += raw
        windows = q.windows[c]
        folds.append((c, normalised(raw, windows, profile) if windows else raw, choice(pick)))
    with_windows = [score for c, score, _ in folds if q.windows[c]]
    return CrossValidation(
        method,
        hold,
        profile,
        normalised(float(total[best]), total_windows, profile),
        choice(best),
        folds,
        normalised(pooled, total_windows, profile),
        float(np.mean(with_windows)),
    )


def cv_markdown(q: Quality) -> list[str]:
    short = {c: c.replace("artificial", "art").replace("real", "") for c in q.categories}
    out = [
        "### Generalization: leave one category out",
        "",
        "For each of the five categories in turn, the parameters (over the grid above) and "
        "the threshold (over the same threshold grid) are chosen on the other four and the "
        "category left out is scored with them. *CV pooled*: the five held-out results "
        "added up and normalised over the corpus (what one would see on new data, chosen "
        "this way); *fold mean*: the mean of the four categories with windows "
        f"({short.get('artificialNoAnomaly', '')} has no "
        "window: its column is the raw cost of its false positives, 0 at best). *in-sample*: "
        "the best over the whole corpus, parameters and threshold fitted on what is scored. "
        f"*held*: `detections(score, threshold, hold={D.DEFAULT_HOLD})`; *raw*: every point "
        "at or above the threshold.",
        "",
        "| method | post | profile | in-sample | CV pooled | fold mean | "
        + " | ".join(short[c] for c in q.categories)
        + " | in-sample choice |",
        "| --- | --- | --- | ---: | ---: | ---: | " + "---: | " * len(q.categories) + "--- |",
    ]
    for method in D.DETECTORS:
        for hold in CV_HOLDS:
            for profile in PROFILES:
                cv = cross_validate(q, method, hold, profile)
                if cv is None:
                    continue
                out.append(
                    f"| {method} | {'raw' if hold == 0 else 'held'} | {PROFILE_NAMES[profile]} | "
                    f"{cv.in_sample:.1f} | **{cv.pooled:.1f}** | {cv.fold_mean:.1f} | "
                    + " | ".join(f"{score:.1f}" for _, score, _ in cv.folds)
                    + f" | {cv.in_sample_choice} |"
                )
    ranked = sorted(
        (cv for m in D.DETECTORS if (cv := cross_validate(q, m, D.DEFAULT_HOLD, "standard"))),
        key=lambda cv: -cv.pooled,
    )
    if ranked:
        top = ranked[0]
        out += [
            "",
            f"Best cross-validated (standard, held): **{top.method}** ({top.pooled:.1f}; "
            "the folds chose: " + "; ".join(f"{short[c]}: {ch}" for c, _, ch in top.folds) + "). "
            f"The module's default is {D.DEFAULT_METHOD}.",
        ]
    out += [
        "",
        "The module's defaults as they stand (fixed threshold "
        f"{D.DEFAULT_THRESHOLD}, hold {D.DEFAULT_HOLD}, nothing refitted), per category, "
        "standard profile:",
        "",
        "| method | total | " + " | ".join(short[c] for c in q.categories) + " |",
        "| --- | ---: | " + "---: | " * len(q.categories),
    ]
    for method, table in q.fixed.items():
        raw = table[:, 0]
        cells = [
            f"{normalised(float(r), q.windows[c], 'standard'):.1f}" if q.windows[c] else f"{r:.1f}"
            for c, r in zip(q.categories, raw, strict=True)
        ]
        total = normalised(float(raw.sum()), sum(q.windows.values()), "standard")
        out.append(f"| {method} | {total:.1f} | " + " | ".join(cells) + " |")
    return out


def best_of(results: Iterable[Result], profile: str) -> Result:
    # Ties: the earlier (smaller hold, earlier grid entry) wins.
    return max(results, key=lambda r: round(r.scores[profile].normalised, 9))


def show_score(score: float) -> str:
    """A threshold score with enough digits to tell it from 1 (0.99999999958, not 1)."""
    if not np.isfinite(score) or score >= 1.0 or score <= 0.0:
        return f"{score:g}"
    digits = min(15, int(np.ceil(-np.log10(1.0 - score))) + 2)
    return f"{score:.{digits}f}"


def z_for_score(score: float) -> str:
    if not np.isfinite(score):
        return "never"
    if score >= 1.0:
        return ">= 16.7"
    from scipy.special import erfinv

    return f"{erfinv(score) * D.SCORE_SCALE * np.sqrt(2):.2f}"


def quality_markdown(q: Quality, args: argparse.Namespace) -> str:
    out = [
        "## Quality on NAB (nab-dev)",
        "",
        f"`{command()}` ({date.today()}, {q.seconds:.0f} s)",
        "",
        "Corpus: ../shared/data/nab-dev, 34 files and 67 windows of the Numenta Anomaly "
        "Benchmark, scored with NAB's method (`neuralops/evaluation.py`): per profile, one "
        "threshold for the whole corpus, the best one, and the total normalised so that "
        "never firing scores 0 and detecting each window on its first row scores 100. "
        "Scores are the detectors' `score` (NaN written 0). *raw*: the threshold swept over "
        "every distinct score. *hold h*: `detections(score, threshold, hold=h)`, one detection "
        "per episode (a point detects when no point in the h before it reached the threshold), "
        f"the threshold swept over {len(threshold_grid(args.quick))} scores (|z| 1 to 16.5, "
        "and 1.0). Scores reach 1.0 in float64 from |z| ~ 16.7: above that thresholds cannot "
        "be told apart. min_periods is 10 throughout (see the checks).",
        "",
        "### References (measured in this run)",
        "",
        "| detector | standard | low FP | low FN |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, by_profile in q.references.items():
        cells = []
        for p in PROFILES:
            mean, lo, hi = by_profile[p]
            cells.append(f"{mean:.1f}" if lo == hi else f"{mean:.1f} ({lo:.1f}-{hi:.1f})")
        out.append(f"| {name} | " + " | ".join(cells) + " |")

    out += [
        "",
        "### Best per method and profile",
        "",
        "Threshold: the score at and above which a point detects (and the |z| it stands for); "
        "TP: windows detected of 67; FP: false-positive detections.",
        "",
        "| method | profile | post-processing | parameters | NAB score | threshold (score) "
        "| threshold |z| | TP | FP |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method in D.DETECTORS:
        mine = [r for r in q.results if r.method == method]
        if not mine:
            continue
        for profile in PROFILES:
            for pool in ([r for r in mine if r.hold == 0], [r for r in mine if r.hold > 0]):
                if not pool:
                    continue
                r = best_of(pool, profile)
                s = r.scores[profile]
                post = "raw" if r.hold == 0 else f"hold {r.hold}"
                # Where nothing beats never firing, every configuration ties at 0.
                params = label(r.params) if s.raw > s.null else "any (none beats 0)"
                out.append(
                    f"| {method} | {PROFILE_NAMES[profile]} | {post} | {params} | "
                    f"{s.normalised:.1f} | {show_score(s.threshold)} | "
                    f"{z_for_score(s.threshold)} | {s.tp} | {s.fp} |"
                )
    robust_raw = [r for r in q.results if r.method == "robust" and r.hold == 0]
    if robust_raw and all(
        r.scores["standard"].raw <= r.scores["standard"].null for r in robust_raw
    ):
        out += [
            "",
            "The median/MAD detector's raw scores never beat never firing: on NAB's "
            "artificial daily series (three of them without any anomaly) its baseline sits "
            "on one plateau, so each regular change of level scores 1.0 (|z| above 16.7, "
            "beyond any threshold) for several points in a row. One detection per episode "
            "(hold) leaves one false positive per change instead of a run of them.",
        ]
    holds = sorted({r.hold for r in q.results})
    out += [
        "",
        "### Standard profile over the grid",
        "",
        "NAB score (standard profile) of every configuration; columns: raw scores, then each hold.",
    ]
    for method in D.DETECTORS:
        mine = [r for r in q.results if r.method == method]
        if not mine:
            continue
        out += [
            "",
            f"**{method}**",
            "",
            "| parameters | " + " | ".join("raw" if h == 0 else f"hold {h}" for h in holds) + " |",
            "| --- |" + " ---: |" * len(holds),
        ]
        for params in dict.fromkeys(label(r.params) for r in mine):
            row = {r.hold: r for r in mine if label(r.params) == params}
            out.append(
                f"| {params} | "
                + " | ".join(f"{row[h].scores['standard'].normalised:.1f}" for h in holds)
                + " |"
            )
    out += [
        "",
        f"### Defaults chosen from this section (standard profile, hold {D.DEFAULT_HOLD})",
        "",
        "| method | best in the grid | its score | default in detectors.py | its score |",
        "| --- | --- | ---: | --- | ---: |",
    ]
    for method in D.DETECTORS:
        pool = [r for r in q.results if r.method == method and r.hold == D.DEFAULT_HOLD]
        if not pool:
            continue
        best = best_of(pool, "standard")
        chosen = {k: v for k, v in defaults(method).items() if k in best.params}
        mine = [r for r in pool if r.params == chosen]
        score = f"{mine[0].scores['standard'].normalised:.1f}" if mine else "not in the grid"
        out.append(
            f"| {method} | {label(best.params)} | {best.scores['standard'].normalised:.1f} | "
            f"{label(chosen)} | {score} |"
        )
    out += [
        "",
        "The z-score, EWMA, median/MAD and ensemble defaults are the ones chosen earlier on "
        "this table (in-sample; kept: rules and the seeds name these detectors). Where one "
        "is not the grid's best, the reason is cost: the median/MAD detector sorts every "
        "window, so a 960-point window costs many times the time of a 120-point one "
        "(section speed times both) for a few NAB points; the ensemble takes the "
        "median/MAD's default window. The context, change, variance, shape, combined and "
        "likelihood "
        "defaults are chosen by the cross-validation below, not by this table; the change "
        "detector's own window (6) is the one the combined detector uses, and where the "
        "table prefers another for the detector alone, the default stays with the "
        "combination's.",
    ]
    out += [
        "",
        "### The module's defaults",
        "",
        f"Each method with its defaults in `neuralops/detectors.py`, `DEFAULT_THRESHOLD` = "
        f"{D.DEFAULT_THRESHOLD} (|z| {z_for_score(D.DEFAULT_THRESHOLD)}) and `DEFAULT_HOLD` = "
        f"{D.DEFAULT_HOLD}, fixed (not swept):",
        "",
        "| method | defaults | standard | low FP | low FN | TP | FP |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, scores in q.defaults.items():
        params = defaults(method)
        s = scores["standard"]
        out.append(
            f"| {method} | {label(params)} | "
            + " | ".join(f"{scores[p].normalised:.1f}" for p in PROFILES)
            + f" | {s.tp} | {s.fp} |"
        )
    out += ["", *cv_markdown(q)]
    out += ["", "Checks: " + "; ".join(q.checks) + "."]
    return "\n".join(out)


# --- speed -----------------------------------------------------------------------------------


def random_walks(n_series: int, n_points: int, seed: int = 11) -> np.ndarray:
    """Random walks with NaN gaps: about two gaps of 1-30 points per series."""
    rng = np.random.default_rng(seed)
    x = 100 + np.cumsum(rng.normal(0, 1, (n_series, n_points)), axis=1)
    counts = rng.poisson(2, n_series)
    rows = np.repeat(np.arange(n_series), counts)
    starts = rng.integers(0, n_points, len(rows))
    lengths = rng.integers(1, 31, len(rows))
    for row, start, length in zip(rows, starts, lengths, strict=True):
        x[row, start : start + length] = np.nan
    return x


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: first touches of fresh memory cost more than the work on this machine
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def pandas_zscore(frame: object, window: int, min_periods: int) -> object:
    """The plain baseline: pandas rolling mean and std (series as columns), shifted one
    point so each point is compared with the window before it."""
    rolling = frame.rolling(window, min_periods=min_periods)  # type: ignore[attr-defined]
    return (frame - rolling.mean().shift(1)) / rolling.std().shift(1)


def nanmedian_robust(x: np.ndarray, window: int, min_periods: int) -> np.ndarray:
    """The robust detector before this change (nanmedian over sliding windows), for the
    before/after figure and as the reference its replacement must equal."""
    import warnings

    n_series, n_points = x.shape
    padded = np.concatenate([np.full((n_series, window), np.nan), x], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=1)[:, :n_points]
    z = np.full_like(x, np.nan)
    rows = max(1, 20_000_000 // (n_points * window))
    for block in range(0, n_series, rows):
        part = windows[block : block + rows]
        n = np.sum(~np.isnan(part), axis=2)
        with np.errstate(all="ignore"), warnings.catch_warnings(action="ignore"):
            median = np.nanmedian(part, axis=2)
            mad = np.nanmedian(np.abs(part - median[..., None]), axis=2)
        block_z = D._standardize(x[block : block + rows], median, 1.4826 * mad)
        block_z[n < min_periods] = np.nan
        z[block : block + rows] = block_z
    z[np.isnan(x)] = np.nan
    return z


@dataclass
class Speed:
    shape: tuple[int, int]
    rows: list[tuple[str, str, float, float]] = field(default_factory=list)  # name, note, s, pts/s
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_speed(quick: bool) -> Speed:
    import pandas as pd

    started = time.perf_counter()
    n_series, n_points = (1_000, 1_440) if quick else (10_000, 1_440)
    repeats = 1 if quick else 3
    x = random_walks(n_series, n_points)
    speed = Speed((n_series, n_points))
    points = x.size
    print(f"speed: {n_series:,} x {n_points:,} points, best of {repeats}", flush=True)
    for name, detect in D.DETECTORS.items():
        if name == "shape":  # history x window operations a point: timed on fewer series below
            continue
        seconds = best_time(lambda detect=detect: detect(x), repeats)
        speed.rows.append((name, "defaults", seconds, points / seconds))
        print(f"  {name:10s} {seconds:7.2f} s  {points / seconds:12,.0f} points/s", flush=True)
    # What a stream of the default carries between pieces, per series (independent of the
    # series' length: three days of points for the context part, a few sums for the rest).
    for method in dict.fromkeys((D.DEFAULT_METHOD, "likelihood")):
        stream = D.Stream(method)
        stream.update(x[:, : n_points // 2])
        np.testing.assert_array_equal(
            np.concatenate([stream.update(x[:, n_points // 2 :]).z], axis=1)[:, :5],
            D.DETECTORS[method](x).z[:, n_points // 2 : n_points // 2 + 5],
        )
        speed.notes.append(
            f"a `Stream('{method}')` carries {stream.state_bytes() / 1024:.1f} KiB per series "
            f"between pieces (period {D.CONTEXT_PERIOD} points a day: "
            f"{D.CONTEXT_DAYS} x {D.CONTEXT_PERIOD} values for the context part), whatever "
            "the length of the series; its second piece equals the whole-series call"
        )

    frame = pd.DataFrame(x.T)  # pandas rolls down columns: one column per series
    min_periods = defaults("zscore")["min_periods"]
    for window in dict.fromkeys((defaults("zscore")["window"], 60)):
        if window != defaults("zscore")["window"]:
            seconds = best_time(lambda window=window: D.rolling_zscore(x, window), repeats)
            speed.rows.append(("zscore", f"window={window}", seconds, points / seconds))
        seconds = best_time(
            lambda window=window: pandas_zscore(frame, window, min_periods), repeats
        )
        speed.rows.append(("pandas rolling z-score", f"window={window}", seconds, points / seconds))
        print(
            f"  pandas w{window} {seconds:7.2f} s  {points / seconds:12,.0f} points/s", flush=True
        )
        # Same numbers as rolling_zscore where both have a spread (pandas: NaN/inf for none).
        theirs = pandas_zscore(frame, window, min_periods).to_numpy().T
        ours = D.rolling_zscore(x, window, min_periods).z
        both = np.isfinite(theirs) & np.isfinite(ours)
        np.testing.assert_allclose(ours[both], theirs[both], rtol=1e-6, atol=1e-6)
    speed.notes.append(
        "pandas z agrees with `rolling_zscore` to 1e-6 wherever both are finite (both windows)"
    )

    subset = x[: 100 if quick else 1_000]
    seconds = best_time(lambda: D.shape(subset), 1)
    speed.rows.append(
        ("shape", f"defaults, {len(subset):,} series", seconds, subset.size / seconds)
    )
    robust = defaults("robust")
    seconds = best_time(
        lambda: nanmedian_robust(subset, robust["window"], robust["min_periods"]), 1
    )
    speed.rows.append(
        ("robust, before (nanmedian)", f"{len(subset):,} series", seconds, subset.size / seconds)
    )
    before = nanmedian_robust(subset, robust["window"], robust["min_periods"])
    np.testing.assert_array_equal(D.robust_zscore(subset).z, before)
    speed.notes.append(
        "`robust_zscore` returns exactly (bit for bit) the z of the nanmedian version it "
        "replaced on these series (they differ only where the MAD is 0, now a fallback)"
    )

    if not quick:
        subset = x[:1_000]
        window = defaults("robust")["window"]
        base = best_time(lambda: D.robust_zscore(subset), 1)
        ratios = []
        for longer in ROBUST_WINDOWS_TIMED:
            seconds = best_time(lambda longer=longer: D.robust_zscore(subset, longer), 1)
            speed.rows.append(
                ("robust", f"window={longer}, 1,000 series", seconds, subset.size / seconds)
            )
            ratios.append(f"{longer} takes {seconds / base:.1f} times")
            print(f"  robust w{longer} {seconds:7.2f} s", flush=True)
        speed.notes.append(
            f"on 1,000 series the median/MAD with window {', '.join(ratios)} the time it "
            f"takes with its default window ({window})"
        )

    # The offline command: one long series as a CSV stream.
    n_rows = 20_000 if quick else 200_000
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.csv", Path(folder) / "out.csv"
        walk = random_walks(1, n_rows)[0]
        with open(source, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["timestamp", "value"])
            start = np.datetime64("2024-01-01T00:00:00")
            stamps = (start + np.arange(n_rows) * np.timedelta64(60, "s")).astype(str)
            writer.writerows(
                zip(stamps, ["" if np.isnan(v) else repr(v) for v in walk.tolist()], strict=True)
            )
        seconds = best_time(lambda: detect_file(source, target), 1)
        speed.rows.append(
            (
                f"detect_file ({D.DEFAULT_METHOD}, CSV in and out, 1,440 points a day)",
                f"1 series x {n_rows:,}",
                seconds,
                n_rows / seconds,
            )
        )
    speed.seconds = time.perf_counter() - started
    return speed


def speed_markdown(s: Speed, args: argparse.Namespace) -> str:
    import pandas as pd
    import scipy

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    n_series, n_points = s.shape
    out = [
        "## Speed",
        "",
        f"`{command()}` ({date.today()}, {s.seconds:.0f} s)",
        "",
        f"Machine: {os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}, pandas {pd.__version__}; one "
        "process, numpy's own threading only. Data: float64 random walks, "
        f"{n_series:,} series x {n_points:,} points, about two NaN gaps of 1-30 points per "
        "series; each figure is the best of "
        f"{1 if args.quick else 3} runs after a warm-up run, defaults of each method.",
        "",
        "| detector | run | seconds | points / s |",
        "| --- | --- | ---: | ---: |",
    ]
    for name, note, seconds, rate in s.rows:
        out.append(f"| {name} | {note} | {seconds:.2f} | {rate:,.0f} |")
    out += ["", "Checks: " + "; ".join(s.notes) + "."]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="reduced grid and data (smoke)")
    parser.add_argument("--only", choices=("quality", "speed"), help="run one section")
    parser.add_argument("--report", type=Path, help=f"report to write (full run: {REPORT})")
    args = parser.parse_args()
    report = args.report or (None if args.quick else REPORT)

    if args.only in (None, "quality"):
        if not (NAB_DEV / "combined_windows.json").exists():
            print(f"quality: skipped, the NAB corpus is not at {NAB_DEV}")
        else:
            text = quality_markdown(run_quality(args.quick), args)
            print(text)
            if report:
                write_section(report, "quality", text, title=TITLE)
    if args.only in (None, "speed"):
        text = speed_markdown(run_speed(args.quick), args)
        print(text)
        if report:
            write_section(report, "speed", text, title=TITLE)


if __name__ == "__main__":
    main()
