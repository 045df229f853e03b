"""The product Redactor against a frozen copy of itself (tests/redaction_reference.py, taken
before its speed-ups): the same output, the same stats and the same errors on every string of
the redaction tests, on synthetic runs with planted secrets, and under hypothesis."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
import redaction_reference as ref
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_redaction import BENIGN_JSON, benign_text, secrets
from test_redaction_batch import TEXT as NEAR_MISS_TEXT
from test_redaction_batch import TRICKY

from neuralops import redaction
from neuralops.synthetic import synthetic_runs

HERE = Path(__file__).parent


def _strings_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    return sorted(found)


CORPUS = sorted(
    {
        *_strings_in(HERE / "test_redaction.py"),
        *_strings_in(HERE / "test_trust.py"),
        *_strings_in(HERE / "test_redaction_batch.py"),
        *TRICKY,
    }
)
# Systematic shapes around where a key=value or --flag match may start: what precedes the
# key (run characters or not), the key word, the separator and the value.
_WORDS = ("password", "db_pass", "api-key", "client.secret", "ACCESS_KEY", "token", "pwd",
          "credentials", "contrasena", "storepass", "passwordfile", "keys", "notakey")  # fmt: skip
EDGES = [
    f"{before}{lead}{word}{sep}{value}"
    for before in ("", "x", "x.", "x-", "x_", ".", "-", "a.b-c_", " ", "(", '"', "\u00e9", "9")
    for lead in ("", "-", "--", "-x-")
    for word in _WORDS
    for sep, value in (
        ("=", "hunter22"),
        (": ", '"v1"'),
        (" ", "hunter22"),
        ("\t", "'q x'"),
        (" \t = ", "v)"),
        ('\\": \\"', 'v2\\"'),
        ("'  :", "hunter22"),
        (" \t ", "hunter22"),
    )
]
CORPUS_PLUS = sorted({*CORPUS, *EDGES})
PAIRS = [
    (redaction.Redactor, ref.Redactor),
    (redaction.SecretRedactor, ref.SecretRedactor),
]


def _outcome(redactor: Any, method: str, arg: Any) -> tuple[Any, dict[str, int]]:
    try:
        out: Any = getattr(redactor, method)(arg)
    except (ValueError, TypeError, RecursionError) as exc:
        out = ("raised", type(exc).__name__, str(exc))
    return out, dict(redactor.stats)


def assert_same(method: str, items: list[Any]) -> None:
    for new_cls, old_cls in PAIRS:
        new, old = new_cls(), old_cls()
        for item in items:
            got, want = _outcome(new, method, item), _outcome(old, method, item)
            assert got == want, (new_cls.__name__, item)
            if method == "text" and isinstance(got[0], str):
                assert new.text(got[0]) == got[0]  # idempotent


def test_every_string_of_the_redaction_tests() -> None:
    assert_same("text", CORPUS_PLUS)
    # and inside records: keys, values, secret-named keys, field rules
    assert_same(
        "record",
        [
            {"inputs": {"note": s, s: 1, "password": s, "user_email": s}, "outputs": [s]}
            for s in CORPUS
        ],
    )


def test_synthetic_runs_with_planted_secrets() -> None:
    records = [json.loads(r.model_dump_json()) for r in synthetic_runs(800, seed=7)]
    assert_same("record", records)


SECRETISH = st.sampled_from(
    [
        "pass", "PASS", "pwd", "secret", "Token", "key", "KEY", "credential", "contrasena",
        "contraseña", "api_key", "db-pass", "storepass", "aws_secret_access_key", "client_secret",
        "=", ":", " = ", '"', "'", '\\"', "\\", "-", "--", "-p", "_", ".", " ", "\t", "\n",
        ",", ";", "&", "(", ")", "[", "{", "}", "]", "x", "9", "hunter22", "null", "<SECRET>",
        "\u212a", "\u017f", "\u00df", "é", "AKIA", "eyJ",
    ]
)  # fmt: skip
KEYISH_TEXT = st.lists(SECRETISH | st.text(max_size=4), max_size=16).map("".join)
TEXTS = KEYISH_TEXT | NEAR_MISS_TEXT | benign_text() | secrets().map(lambda s: s[0])


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TEXTS, min_size=1, max_size=4))
def test_hypothesis_text(texts: list[str]) -> None:
    assert_same("text", [" ".join(texts), *texts])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(BENIGN_JSON, TEXTS, st.dictionaries(KEYISH_TEXT, TEXTS, max_size=3))))
def test_hypothesis_records(parts: list[tuple[Any, str, dict[str, str]]]) -> None:
    records = [{"inputs": {"x": b, "note": t, **d}, "outputs": d} for b, t, d in parts]
    assert_same("record", records)
    for b, _, _ in parts:  # benign data stays as it is
        assert redaction.Redactor().value(b) == b


@pytest.mark.parametrize("n", [1, 3, 10])
def test_repeated_and_long_strings(n: int) -> None:
    joined = " ".join(CORPUS[::7]) * n
    assert_same(
        "text", [joined, joined.replace(" ", "\n"), joined.encode("ascii", "ignore").decode()]
    )
