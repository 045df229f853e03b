"""What an approver decides from, as markdown: the signal and its metric around the incident,
the recommendation with its whole justification, the policy verdict rule by rule, what the
plan changes, and why the remediation waits for a person.

Pure functions on plain data, except ``signal_series``, which reads the signal's series from
the metric source the way detection does (the rule's query, on the rule's grid, the series
carrying the signal's labels). The remediate flow publishes the markdown as artifacts.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from neuralops import policy

SPARK = "▁▂▃▄▅▆▇█"
BEFORE_POINTS = 30  # context before the episode
AFTER_POINTS = 15  # and after it, where the source has them already
TABLE_POINTS = 20  # the latest points listed as numbers
DEFAULT_STEP = timedelta(minutes=1)  # an ad-hoc signal's rule is not in the rules file


@dataclass
class SeriesAround:
    """One series around an incident, on its rule's grid; ``missing`` says why it is not."""

    labels: dict[str, str]
    timestamps: list[float] = field(default_factory=list)  # unix seconds
    values: list[float | None] = field(default_factory=list)
    window_start: datetime | None = None
    window_end: datetime | None = None
    step: timedelta = DEFAULT_STEP
    query: str = ""
    missing: str | None = None

    def in_window(self, timestamp: float) -> bool:
        if self.window_start is None or self.window_end is None:
            return False
        return self.window_start.timestamp() <= timestamp <= self.window_end.timestamp()


def series_labels(signal: Any, rule: Any | None) -> dict[str, str]:
    """The signal's series labels: its labels without those its rule adds to every signal."""
    added = set(rule.labels) if rule is not None else set()
    return {k: v for k, v in signal.labels.items() if k not in added}


def series_around(
    signal: Any,
    source: Any,
    *,
    rule: Any | None = None,
    before: int = BEFORE_POINTS,
    after: int = AFTER_POINTS,
) -> SeriesAround:
    """The signal's series from ``before`` steps ahead of its episode to ``after`` steps past
    it (or the source's now, if sooner): the rule's query on the rule's step, the row whose
    labels are the signal's. Raises what the source raises; ``missing`` when the source
    answers without the series."""
    from neuralops.signals import range_end

    step = rule.step if rule is not None else DEFAULT_STEP
    query = rule.query if rule is not None else signal.query
    wanted = series_labels(signal, rule)
    start = range_end(signal.window_start, step) - before * step
    end = min(range_end(source.now(), step), range_end(signal.window_end, step) + after * step)
    end = max(end, start + step)
    around = SeriesAround(
        labels=wanted,
        window_start=signal.window_start,
        window_end=signal.window_end,
        step=step,
        query=query,
    )
    batch = source.query_range(query, start, end, step)
    rows = [
        i
        for i, labels in enumerate(batch.labels)
        if all(labels.get(k) == v for k, v in wanted.items() if k != "__name__")
    ]
    if not rows:
        around.missing = (
            f"the source returned {len(batch.labels)} series for the query, none with the "
            "signal's labels (gone since?)"
        )
        return around
    row = batch.values[rows[0]]
    around.timestamps = [float(t) for t in batch.timestamps]
    around.values = [None if math.isnan(v) else float(v) for v in row]
    return around


def signal_series(signal: Any, settings: Any, source: Any = None) -> SeriesAround:
    """``series_around`` from the settings' metric source and rules file; never raises: a
    source that does not answer, or no source at all, is ``missing`` with the reason."""
    from neuralops.signals import load_rules
    from neuralops.sources import source_from_settings

    try:
        rule = next((r for r in load_rules(settings.rules_file) if r.name == signal.rule), None)
    except Exception:  # a broken rules file: fall back to the signal's own query
        rule = None
    try:
        own = source is None
        source = source or source_from_settings(settings)
    except Exception as exc:
        return SeriesAround(labels=series_labels(signal, rule), missing=_why(exc))
    try:
        return series_around(signal, source, rule=rule)
    except Exception as exc:
        return SeriesAround(labels=series_labels(signal, rule), missing=_why(exc))
    finally:
        if own:
            source.close()


def _why(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 500 else text[:497] + "..."


# --- plots ---------------------------------------------------------------------------------


def sparkline(values: Sequence[float | None]) -> str:
    """One block character per point, lowest to highest (a space where there is none)."""
    known = [v for v in values if v is not None and math.isfinite(v)]
    if not known:
        return ""
    low, high = min(known), max(known)
    span = high - low
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        elif span == 0:
            out.append(SPARK[0])
        else:
            out.append(SPARK[min(len(SPARK) - 1, int((v - low) / span * len(SPARK)))])
    return "".join(out)


def svg_chart(around: SeriesAround, width: int = 480, height: int = 90) -> str:
    """A small SVG line chart of the series, the episode shaded: a ``data:`` URI that the
    Prefect UI's markdown shows as an image. Empty without two points."""
    points = [
        (t, v)
        for t, v in zip(around.timestamps, around.values, strict=True)
        if v is not None and math.isfinite(v)
    ]
    if len(points) < 2:
        return ""
    t0, t1 = around.timestamps[0], around.timestamps[-1]
    low = min(v for _, v in points)
    high = max(v for _, v in points)
    pad, margin = 4, 14  # the labels sit in the margins, above and below the plot

    def x(t: float) -> float:
        return pad + (t - t0) / ((t1 - t0) or 1) * (width - 2 * pad)

    def y(v: float) -> float:
        return height - margin - (v - low) / ((high - low) or 1) * (height - 2 * margin)

    shade = ""
    if around.window_start is not None and around.window_end is not None:
        a = x(max(t0, around.window_start.timestamp()))
        b = x(min(t1, around.window_end.timestamp() + around.step.total_seconds()))
        if b > a:
            shade = (
                f'<rect x="{a:.1f}" y="0" width="{b - a:.1f}" height="{height}" '
                'fill="#f59e0b" fill-opacity="0.25"/>'
            )
    line = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}"><rect width="{width}" height="{height}" '
        f'fill="#ffffff"/>{shade}<polyline points="{line}" fill="none" stroke="#2563eb" '
        f'stroke-width="1.5"/><text x="{pad}" y="12" font-size="10" fill="#374151">'
        f'{_num(high)}</text><text x="{pad}" y="{height - 3}" font-size="10" '
        f'fill="#374151">{_num(low)}</text><text x="{width - pad}" y="12" font-size="10" '
        f'fill="#374151" text-anchor="end">{_hm(t0)} to {_hm(t1)} UTC</text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}"


def _hm(when: datetime | float) -> str:
    moment = when if isinstance(when, datetime) else datetime.fromtimestamp(when, tz=UTC)
    return f"{moment.astimezone(UTC):%H:%M}"


def _labels(labels: Mapping[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "__name__") or "-"


def _duration(delta: timedelta) -> str:
    minutes = round(delta.total_seconds() / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes / 60:.1f} h"


# --- the signal ------------------------------------------------------------------------------


def signal_markdown(signal: Any | None, around: SeriesAround | None) -> list[str]:
    """The signal section of the incident artifact: hint, series, window, score, the metric
    around the incident (sparkline, chart, the latest points), correlated series."""
    if signal is None:
        return [
            "### Signal",
            "",
            "No signal: the incident was given by hand, so there is no series to show.",
        ]
    window = signal.window_end - signal.window_start
    z = "-" if signal.z is None else f"{signal.z:+.1f}"
    lines = [
        "### Signal",
        "",
        f"> {signal.hint}",
        "",
        f"- **Rule:** `{signal.rule}` (method {signal.method}; score {signal.score:.5f}, "
        f"z {z}, value {_num(signal.value)})",
        f"- **Series:** `{_labels(around.labels if around else signal.labels)}`",
        f"- **Labels:** `{_labels(signal.labels)}`",
        f"- **Window:** {signal.window_start:%Y-%m-%d %H:%M} to {signal.window_end:%H:%M} UTC "
        f"({_duration(window)}); seen {signal.occurrences}x, last at "
        f"{signal.last_seen_at:%H:%M} UTC",
        f"- **Signal id:** `{signal.id}`",
        "",
    ]
    lines += metric_markdown(around)
    if signal.correlated:
        lines += ["", "**Moved with it:**", ""]
        lines += [
            f"- `{c.get('rule')}` `{_labels(c.get('labels') or {})}`: r = "
            f"{c.get('correlation', 0):+.2f}"
            for c in signal.correlated
        ]
    return lines


def metric_markdown(around: SeriesAround | None) -> list[str]:
    """The metric around the incident, or why it is not shown."""
    lines = ["#### The metric around the incident", ""]
    if around is None or around.missing or not around.timestamps:
        why = around.missing if around and around.missing else "no points"
        return [*lines, f"Series not available: {why}."]
    known = [v for v in around.values if v is not None]
    first, last = around.timestamps[0], around.timestamps[-1]
    lines += [
        f"`{around.query}`, one point per {_step(around.step)}, {_hm(first)} to {_hm(last)} "
        f"UTC; min {_num(min(known) if known else None)}, max "
        f"{_num(max(known) if known else None)}. The anomalous episode is shaded in the chart "
        "and marked in the table.",
        "",
        "```",
        sparkline(around.values),
        "```",
        "",
    ]
    if chart := svg_chart(around):
        lines += [f"![the metric around the incident]({chart})", ""]
    points = list(zip(around.timestamps, around.values, strict=True))
    # The episode with a few points of calm before it, and what came after.
    start = next((i for i, (t, _) in enumerate(points) if around.in_window(t)), len(points))
    shown = points[max(0, start - 3) :][-TABLE_POINTS:]
    lines += ["| time (UTC) | value | |", "| --- | ---: | --- |"]
    lines += [
        f"| {_hm(t)} | {_num(v)} | {'anomalous' if around.in_window(t) else ''} |" for t, v in shown
    ]
    return lines


def _step(step: timedelta) -> str:
    seconds = int(step.total_seconds())
    return f"{seconds // 60} min" if seconds % 60 == 0 else f"{seconds} s"


# --- the recommendation --------------------------------------------------------------------


def recommendation_markdown(recommendations: Sequence[Mapping[str, Any]]) -> list[str]:
    """The ranked playbooks, each with its whole justification (a table cell clips it)."""
    lines = ["### Recommendation", ""]
    if not recommendations:
        return [*lines, "No playbook was recommended."]
    for rank, r in enumerate(recommendations, start=1):
        rate = r.get("success_rate")
        success = "no similar runs" if rate is None else f"{rate:.0%} success"
        lines.append(
            f"{rank}. **{r['playbook_id']}**: score {r['score']:.3f}, {success} on "
            f"{r.get('similar_runs', 0)} similar runs, safety {r.get('safety_mode', '-')}.  "
        )
        lines.append(f"   {r.get('justification') or '(no justification)'}")
    return lines


# --- the dry-run -----------------------------------------------------------------------------


def policy_rows(result: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(check, verdict, detail) for every check the dry-run made, in order: the signature,
    each policy rule (pass, or fail with the violations), the server-side dry-run. A check
    the dry-run did not reach (it stopped earlier) is ``not checked``."""
    rendered = "steps" in result  # the steps rendered: the policy rules were all checked
    signature = result.get("signature")
    rows = [
        (
            "signature",
            "pass" if signature == "verified" else ("FAIL" if signature else "not checked"),
            "verified against the pinned key"
            if signature == "verified"
            else str(signature or result.get("reason") or "-"),
        )
    ]
    violations: dict[str, list[str]] = {}
    for v in result.get("violations") or []:
        violations.setdefault(v["rule"], []).append(v["message"])
    for rule in policy.RULES:
        if rule in violations:
            rows.append((rule, "FAIL", "; ".join(violations[rule])))
        else:
            rows.append(
                (rule, "pass" if rendered else "not checked", policy.RULE_CHECKS.get(rule, ""))
            )
    server = result.get("server_dry_run") or []
    note = result.get("server_dry_run_note")
    if note:
        rows.append(("server-side dry-run", "deferred", note))
    elif server:
        failed = [s for s in server if s.get("status") != "Completed"]
        detail = "; ".join(f"{s['name']}: {s.get('message', '')}" for s in failed) or (
            f"{len(server)} steps accepted by {result.get('runtime', 'the runtime')}"
        )
        rows.append(("server-side dry-run", "FAIL" if failed else "pass", detail))
    else:
        rows.append(("server-side dry-run", "not checked", "the dry-run stopped before it"))
    return rows


def dry_run_markdown(
    result: Mapping[str, Any], plan_digest: str | None, playbook_id: str | None
) -> str:
    """The dry-run artifact: verdict, every check with its verdict, what changes (against
    the objects' current state) and the diff."""
    ok = bool(result.get("ok"))
    verdict = "passed" if ok else f"FAILED: {result.get('reason', '')}"
    rows = policy_rows(result)
    failed = sum(1 for _, v, _ in rows if v == "FAIL")
    checked = sum(1 for _, v, _ in rows if v in ("pass", "FAIL"))
    changes = result.get("changes") or []
    lines = [
        f"## Dry-run {verdict}",
        "",
        f"Playbook `{result.get('playbook', playbook_id or '-')}` version "
        f"{result.get('version', '-')}; runtime {result.get('runtime', '-')}; plan digest "
        f"`{plan_digest or '-'}` (an approval binds to it; execution refuses any other plan)",
        "",
        f"### Policy verdict: {'passed' if ok else 'failed'} ({checked} checks, {failed} failed)",
        "",
        *(f"- **{v}** `{name}`: {detail}" for name, v, detail in rows),
        "",
        "### What would change",
        "",
    ]
    if changes:
        lines += [f"- {c}" for c in changes]
    elif "steps" in result:
        lines.append("No field of a known object changes (see the diff for new objects).")
    else:
        lines.append("Nothing rendered: the dry-run stopped before the plan.")
    lines += [
        "",
        "Diff against each object's current state (`now` → `after`):",
        "",
        "```diff",
        result.get("diff") or "(nothing rendered)",
        "```",
    ]
    return "\n".join(lines)


# --- why a person must approve ----------------------------------------------------------------

# The safety policy's gates (neuralops.safety.decide_mode), each with the words its reason
# carries and what it reads as when it did not fire.
GATES = (
    ("playbook safety mode", ("is manual", "asks for auto"), "auto, with org-admin allowed"),
    ("kill switch (NEURALOPS_KILL_SWITCH)", ("kill switch",), "off"),
    ("incident storm breaker", ("incident storm",), "not tripped"),
    ("consecutive-failure breaker", ("executions in a row",), "not tripped"),
    ("plan unchanged since the dry-run", ("changed since the dry-run", "no plan digest"), "yes"),
)


def approval_reasons_markdown(
    mode: str | None,
    reasons: Sequence[str],
    *,
    expires_at: datetime | None,
    plan_lines: Sequence[str] = (),
) -> str:
    """Why the remediation waits for a person (or why policy approved it): the recorded
    reasons, and every gate of the safety policy with its state."""
    manual = mode != "auto"
    lines = [
        "## Waiting for approval" if manual else "## Approved by policy (auto mode)",
        "",
        (
            "This remediation does not run until a person with the org-admin role approves "
            "it in the Resume form (or `neuralops approve`). Why:"
            if manual
            else "The safety policy let this remediation run without a person:"
        ),
        "",
        *(f"- {r}" for r in reasons or ["(no reason recorded)"]),
        "",
        "The safety policy's gates:",
        "",
    ]
    for gate, words, quiet in GATES:
        fired = [r for r in reasons if any(w in r for w in words)]
        state = f"**{'; '.join(fired)}**" if fired else quiet
        lines.append(f"- {gate}: {state}")
    if manual and expires_at is not None:
        lines += [
            "",
            f"Decide before **{expires_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC**: then the "
            "incident expires and nothing runs.",
        ]
    if plan_lines:
        lines += ["", "The plan an approval lets run:", "", "```", *plan_lines, "```"]
    return "\n".join(lines)


# --- an ad-hoc analysis ------------------------------------------------------------------------


def analysis_markdown(result: Any, *, lookback: str) -> str:
    """The ``analyze`` artifact: verdict, score, hint, the series and its recent points."""
    if result.score is None:
        verdict = "No verdict"
    elif result.signal_id is not None:
        verdict = "Anomalous"
    else:
        verdict = "Normal"
    z = "-" if result.z is None else f"{result.z:+.1f}"
    score = "-" if result.score is None else f"{result.score:.5f}"
    lines = [
        f"## {verdict}: `{result.query}`",
        "",
        f"> {result.hint}",
        "",
        f"- **Score:** {score} (method {result.method}, z {z}, value {_num(result.value)}; "
        "a signal is recorded from the threshold up)",
        f"- **Series:** `{_labels(result.labels)}` (the most anomalous of {result.series})",
        f"- **Lookback:** {lookback}",
    ]
    if result.signal_id is not None:
        status = "new signal" if result.new_signal else "already signalled (deduplicated)"
        lines.append(f"- **Signal:** `{result.signal_id}` ({status})")
    if result.series == 0:
        lines += [
            "",
            "The query matched no series in the metric source: check the metric name and "
            "labels (`neuralops doctor` shows the source).",
        ]
    points = list(result.points)
    if points:
        values = [p.value for p in points]
        lines += [
            "",
            f"### The last {len(points)} points ({_hm(points[0].at)} to {_hm(points[-1].at)} UTC)",
            "",
            "```",
            sparkline(values),
            "```",
            "",
            "| time (UTC) | value |",
            "| --- | ---: |",
            *(f"| {p.at.astimezone(UTC):%H:%M:%S} | {_num(p.value)} |" for p in points),
        ]
    return "\n".join(lines)
