"""Batch redaction: find, over a whole batch at once, the records the redactor could change.

Most run records hold nothing to redact, yet ``Redactor.record`` walks every string of every
record through a dozen rules (about 11k records/s on one core). ``may_redact`` runs one
combined pattern over a batch's serialised records (polars, compiled once, all lines in one
call) and marks only the records where some rule *could* fire; the rest are already what
the redactor would return. The full redactor still decides every marked record, so what is
caught cannot change: each trigger below is a necessary condition of one rule of
``neuralops.redaction`` (a rule's pattern with its lookarounds dropped, or the literal its
gate needs), so a record none of them matches is left unchanged by every rule, field rule
and secret-named key. ``tests/test_redaction_batch.py`` checks that property against the
reference over the redaction tests' corpus and with hypothesis.

The input is JSON text (a record serialised, or a COPY line), scanned as it is. Escapes would
hide text from the triggers, so any escape but ``\\"`` marks its record (line breaks, tabs,
backslashes and ``\\uXXXX`` in run text are rare); ``\\"`` only adds a backslash before a
quote, which the one trigger that spans a quote allows. Any non-ASCII character also marks
its record, so the triggers only ever meet ASCII (where Rust's and Python's regex classes and
case folding agree; Python folds a few non-ASCII letters onto ASCII ones, such as the Kelvin
sign or the long s, which the redactor's case-insensitive rules would match).

Only the stock ``Redactor`` is pre-filtered: for a subclass (other rules) every record is
marked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl

from neuralops.redaction import _SECRET_WORDS, Redactor

__all__ = ["MAX_BRACKETS", "TRIGGERS", "may_redact", "trigger_pattern"]

# More opening brackets than this (an upper bound of the nesting depth) goes the full way:
# the reference path refuses deep nesting (quarantine) and must be the one to decide.
MAX_BRACKETS = 200
_MARK = "\x80"  # stands for a lone surrogate, which polars cannot hold (non-ASCII: marks)

# One per rule of neuralops.redaction (in its order); each is implied by that rule firing.
TRIGGERS: tuple[str, ...] = (
    r"[^\x00-\x7f]",  # non-ASCII (and _MARK): the full redactor decides
    r'\\[^"]',  # a JSON escape but \" (see the module docstring)
    "PRIVATE KEY",  # _private_keys
    "eyJ",  # _jwts
    r"(?i:authorization)",  # _AUTH_HEADER; secret-named key "(proxy-)authorization"
    r"(?i:bearer[ \t])",  # _BEARER
    r"(?i:aws_?secret|secret_?access)",  # _AWS_SECRET_CONTEXT
    "AKIA|ASIA|<AWS_ACCESS_KEY>",  # _AWS_ACCESS_KEY, _AWS_SECRET_NEAR_ID (after a key id)
    # _api_tokens: the literals of _TOKEN_HINT (case-insensitive where a plugin is), with
    # "sk-" narrowed to the one pattern that needs no other literal
    r"(?i:xox|hooks\.slack)|gh[pousr]_|github_pat_|gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent"
    r"|oas)-|GR1348941|T3BlbkFJ|k_live_|SG\.|pypi-|sq0csp-|AccountKey=|hv[sbr]\.",
    r"sk-[A-Za-z0-9_-]*[A-Za-z0-9]{20}",
    r"AC[a-z0-9]{32}|SK[a-z0-9]{32}",  # Twilio
    r"[0-9a-z]{32}-us[0-9]",  # Mailchimp
    r"[0-9]{8}:[0-9A-Za-z_-]{35}",  # Telegram (8-10 digits: the last 8 are enough)
    r"\.[a-zA-Z0-9_-]{6}\.",  # Discord (its middle part)
    "://",  # _url_passwords
    rf"(?i:-[A-Za-z0-9_-]*(?:{_SECRET_WORDS}|store[_-]?pass)[ \t])",  # _SECRET_FLAG
    r"(?:^|[^0-9A-Za-z_-])-p",  # _SHORT_P
    rf"(?i:{_SECRET_WORDS})\\?[\"']?[ \t]*[:=]",  # _KEY_VALUE; a secret-named key ("k":)
    r"(?i:(?:passw(?:or)?d|pass(?:phrase|code)|pwd|pin|secret|api[ _-]?key|token)s?[ \t]+"
    r"(?:is|was|set|changed|reset))",  # _SECRET_PHRASE
    "@",  # _emails
    r"[0-9](?:[ -]?[0-9]){12}",  # _cards; a card stored as a JSON number
    r"(?:^|[^0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2}",  # _ipv6
    r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}",  # _ipv4
    r"\+(?:[ .()-]*[0-9]){8}",  # _PHONE_INTL (8 digits at least)
    r"(?:\([0-9]{3}\)[ .-]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}",  # _PHONE_NANP
    r"(?:^|[^0-9A-Za-z_.+/:-])0[0-9]{1,4}[ .-][0-9]{2,4}[ .-][0-9]{2,4}",  # _PHONE_TRUNK
)

_SURROGATE = re.compile("[\ud800-\udfff]")


def trigger_pattern(redactor: Redactor) -> str | None:
    """The combined trigger for ``redactor``'s rules, or None when it cannot be
    pre-filtered (a subclass, or a field rule ending in ``*``)."""
    if type(redactor) is not Redactor:
        return None
    leaves = {path.split(".")[-1] for path in redactor.field_rules}
    if "*" in leaves or not all(
        leaf.isascii() and '"' not in leaf and "\\" not in leaf for leaf in leaves
    ):
        return None  # a leaf that may match any key, or one written with escapes
    keys = "|".join(sorted(re.escape(leaf) for leaf in leaves))
    # a field rule acts only on its leaf key, which appears in the text as "leaf"
    return "|".join((*TRIGGERS, *([f'"(?:{keys})"'] if keys else ())))


def may_redact(texts: Sequence[str], redactor: Redactor) -> list[bool]:
    """For each JSON text: True where the redactor could change the record (or refuse it),
    False where it certainly returns it unchanged."""
    pattern = trigger_pattern(redactor)
    if pattern is None or not texts:
        return [True] * len(texts)
    try:
        column = pl.Series("t", texts, dtype=pl.String)
    except UnicodeEncodeError:  # lone surrogates (undecodable input): always marked
        column = pl.Series("t", [_SURROGATE.sub(_MARK, t) for t in texts], dtype=pl.String)
    marked = column.str.contains(pattern) | (column.str.count_matches(r"[\[{]") > MAX_BRACKETS)
    return marked.to_list()
