"""Redaction of run history before anything leaves the database.

Pure core: no Prefect, no I/O. ``Redactor.text`` applies the text rules in a fixed order;
``Redactor.value`` / ``Redactor.record`` walk JSON-like data, apply the field rules (drop or
keyed-hash a value by dotted path) and run the text rules on every string, dict keys
included. The rules, their order and their known misses are documented in
``docs/policies/data_redaction.md``; keep the two in step.

Each text rule has triggers (``TRIGGERS``): Hyperscan patterns, each a necessary condition of
its rule firing. ``Redactor.text`` runs a rule only when one of them matches, and the export
scans whole batches with them (``neuralops.redaction_batch``).

Every replacement is a typed placeholder (``<EMAIL>``, ``<CARD>``, ...). Placeholders are
never matched by any rule, so redaction is idempotent: redacting redacted data changes
nothing. Output depends only on the input, the field rules and the hash key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time
from decimal import Decimal
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Final, Literal, NamedTuple
from uuid import UUID

import hyperscan
from detect_secrets.plugins.azure_storage_key import AzureStorageKeyDetector
from detect_secrets.plugins.discord import DiscordBotTokenDetector
from detect_secrets.plugins.github_token import GitHubTokenDetector
from detect_secrets.plugins.gitlab_token import GitLabTokenDetector
from detect_secrets.plugins.keyword import DENYLIST as _KEYWORD_DENYLIST
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.openai import OpenAIDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.slack import SlackDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.stripe import StripeDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector
from detect_secrets.plugins.twilio import TwilioKeyDetector

__all__ = [
    "DEFAULT_FIELD_RULES",
    "DEV_HASH_KEY",
    "PLACEHOLDERS",
    "TRIGGERS",
    "FieldAction",
    "Redactor",
    "Scanner",
    "SecretRedactor",
    "Trigger",
    "compiled_scanners",
    "default_redactor",
    "load_scanners",
    "scanner",
]

FieldAction = Literal["drop", "hash"]

# kind -> placeholder. ``Redactor.stats`` counts by placeholder, plus HASHED and DROPPED.
PLACEHOLDERS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "private_key": "<PRIVATE_KEY>",
        "jwt": "<JWT>",
        "bearer_token": "<BEARER_TOKEN>",
        "aws_access_key": "<AWS_ACCESS_KEY>",
        "aws_secret_key": "<AWS_SECRET_KEY>",
        "api_token": "<API_TOKEN>",
        "password": "<PASSWORD>",
        "secret": "<SECRET>",
        "email": "<EMAIL>",
        "card": "<CARD>",
        "ipv6": "<IPV6>",
        "ipv4": "<IPV4>",
        "phone": "<PHONE>",
    }
)
HASHED: Final = "<HASH>"  # stats key for values replaced by <HASH:...>
DROPPED: Final = "<DROPPED>"  # stats key for fields removed by a drop rule

# Used when NEURALOPS_REDACTION_KEY is unset. Public, so hashes made with it can be reversed
# by a dictionary attack: production must set its own key.
DEV_HASH_KEY: Final = b"neuralops-dev-redaction-key-NOT-FOR-PRODUCTION"

# Dotted paths into a run record; "*" matches any one key; lists are transparent (a rule for
# "inputs.users.email" applies to every element of inputs.users).
DEFAULT_FIELD_RULES: Final[Mapping[str, FieldAction]] = MappingProxyType(
    {
        "inputs.user_email": "hash",
        "inputs.email": "hash",
        "inputs.*.email": "hash",
        "inputs.user_id": "hash",
        "inputs.username": "hash",
        "inputs.phone": "hash",
        "outputs.user_email": "hash",
        "inputs.password": "drop",
        "inputs.*.password": "drop",
        "inputs.api_key": "drop",
        "inputs.*.api_key": "drop",
        "inputs.token": "drop",
        "inputs.secret": "drop",
        "inputs.private_key": "drop",
        "inputs.credentials": "drop",
        "inputs.kubeconfig": "drop",
    }
)

# Anything shaped like a placeholder (ours, <HASH:...>, or the run hook's <REDACTED>).
_PLACEHOLDER = re.compile(r"<[A-Z][A-Z0-9_]*(?::[0-9a-f]{16})?>")

# ---------------------------------------------------------------- the text rules' patterns

_PRIVATE_KEY = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    # to its END line, or (a truncated log line) over the rest of the base64 body
    r"(?:.*?-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,-]*)",
    re.DOTALL,
)
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_TOKEN_CHARS = r"[A-Za-z0-9._~+/-]+=*"
# "Authorization: Bearer x" (any token) and "Authorization: Basic x"
_AUTH_HEADER = re.compile(
    r"(?i)(authorization\\?[\"']?[ \t]*[:=][ \t]*\\?[\"']?(?:bearer|basic)[ \t]+)"
    rf"({_TOKEN_CHARS})"
)
# "bearer x" anywhere: x must look like a token (see _looks_like_token)
_BEARER = re.compile(rf"(?i)(\bbearer[ \t]+)({_TOKEN_CHARS})")
_AWS_ACCESS_KEY = re.compile(r"(?<![A-Za-z0-9])(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])")
_B64_40 = r"[A-Za-z0-9/+=]{40}(?![A-Za-z0-9/+=])"
_AWS_SECRET_CONTEXT = re.compile(
    r"(?i)((?:aws_?secret_?(?:access_?)?key|secret_?access_?key|aws_?secret)"
    r"\\?[\"']?[ \t]*(?:[:=]|=>)[ \t]*\\?[\"']?)" + rf"({_B64_40})"
)
# a 40-char base64 string with both cases (so never a git SHA), only next to a key id
_AWS_SECRET_NEAR_ID = re.compile(
    r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])" + _B64_40
)
_URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]{0,30}://[^\s:/?#@\"'<>]*:)([^\s/?#\"']+)@")
# Key names that hold secrets: detect-secrets' KeywordDetector list (its DENYLIST, a
# maintained set: password, api_key, auth_key, client_key, db_pass, contraseña, ...) plus
# what it lacks (hand-written: passphrase, token, credentials, ...). A key must END with one
# of them, so ``password_file`` or ``max_tokens`` are not secrets.
_OWN_SECRET_WORDS = (
    r"pass(?:phrase|code)|token|access[_-]?key|secret[_-]?key"
    r"|(?:encryption|signing|master|session|hmac)[_-]?key|credentials?"
)
_SECRET_WORDS = "(?:{})".format(
    "|".join([w.replace("_?", "[_-]?") for w in _KEYWORD_DENYLIST] + [_OWN_SECRET_WORDS])
)
_SECRET_KEY_NAME = re.compile(rf"(?i)[A-Za-z0-9_.-]*?{_SECRET_WORDS}|(?:proxy[_-])?authorization")
# Where a key could start, first a cheap look ahead: key characters (and the ñ of
# "contraseña", the one word character outside them) up to a ":" or "=". Without it the lazy
# key and the words' alternation were tried at every start of every word of the text, which
# made this the costliest rule (~40 µs on a 100-character log line); with it, the same matches.
_KEY_VALUE_AHEAD = r"(?=[A-Za-z0-9_.ñ-]*\\?[\"']?[ \t]*[:=])"
_KEY_VALUE = re.compile(
    rf"(?i)(?<![A-Za-z0-9_.-]){_KEY_VALUE_AHEAD}([A-Za-z0-9_.-]*?{_SECRET_WORDS}"
    r"\\?[\"']?[ \t]*[:=][ \t]*)"
    r"(?:\\\"((?:[^\"\\]|\\[^\"])*)\\\""  # escaped JSON inside a string: \"key\": \"v\"
    r"|\"((?:[^\"\\\n]|\\.)*)\""  # "v"
    r"|'([^'\n]*)'"  # 'v'
    r"|(?![{\[])([^\s,;&\"'\\]+))"  # bare v up to a delimiter
)
_NOT_A_SECRET = frozenset({"null", "none", "true", "false", "nil", "undefined"})

# Vendor API tokens: detect-secrets' regex plugins. Those with a literal prefix run only when
# _TOKEN_HINT (one search for every prefix, ours below included) finds one; the four without
# need 34+ characters and a character their tokens hold ("" for Twilio: cheap on its own).
# Plugins whose patterns need surrounding context or match common words (artifactory's
# ``AP[A-F]...``, npm's ``.npmrc`` line, the keyword and high-entropy heuristics) are not used.


def _to_token_end(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """A plugin's pattern, extended over the token characters after its match: several match
    a fixed length (ghp_ + 36), and a longer token must not keep its tail."""
    return re.compile(f"(?:{pattern.pattern})[A-Za-z0-9_-]*", pattern.flags)


_PREFIXED_TOKENS: Final[tuple[re.Pattern[str], ...]] = tuple(
    _to_token_end(pattern)
    for plugin in (
        GitHubTokenDetector,  # ghp_ gho_ ghu_ ghs_ ghr_
        GitLabTokenDetector,  # glpat- gldt- ... GR1348941
        SlackDetector,  # xox?- and hooks.slack.com webhooks
        OpenAIDetector,  # sk-...T3BlbkFJ...
        StripeDetector,  # sk_live_ rk_live_
        SendGridDetector,  # SG.
        PypiTokenDetector,  # pypi-
        SquareOAuthDetector,  # sq0csp-
        AzureStorageKeyDetector,  # AccountKey=
    )
    for pattern in plugin.denylist
)
_UNPREFIXED_TOKENS: Final[tuple[tuple[str, re.Pattern[str]], ...]] = tuple(
    (needle, _to_token_end(pattern))
    for needle, plugin in (
        ("", TwilioKeyDetector),  # AC/SK + 32
        ("-us", MailchimpDetector),  # 32 + -us1
        (":", TelegramBotTokenDetector),  # 8-10 digits : 35
        (".", DiscordBotTokenDetector),  # [MNO]... . ... . ...
    )
    for pattern in plugin.denylist
)
_TOKEN_HINT = re.compile(
    r"gh[pousr]_|github_pat_|gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-|GR1348941"
    r"|xox|XOX|hooks\.slack|T3BlbkFJ|k_live_|SG\.|pypi-|sq0csp-|AccountKey=|sk-|hv[sbr]\."
)
# Hand-written, because no plugin covers them: GitHub fine-grained tokens (github_pat_) and
# classic ones of another length than the plugin's 36; Slack tokens without the plugin's
# digit groups; OpenAI-style ``sk-`` keys without the legacy ``T3BlbkFJ`` marker (project
# and service-account keys), which must mix upper case, lower case and digits (so a long
# hyphenated name starting with "sk-" is not one); Vault/OpenBao service, batch and recovery
# tokens (hvs. / hvb. / hvr.).
_OWN_TOKENS: Final[tuple[tuple[re.Pattern[str], bool], ...]] = (
    (re.compile(r"(?<![A-Za-z0-9_])(?:gh[pousr]_|github_pat_)[A-Za-z0-9_]{20,}"), False),
    (re.compile(r"(?i)(?<![A-Za-z0-9])xox[abposre]-[A-Za-z0-9-]{10,}"), False),
    (re.compile(r"(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]*?[A-Za-z0-9]{20}[A-Za-z0-9_-]*"), True),
    (re.compile(r"(?<![A-Za-z0-9_.])hv[sbr]\.[A-Za-z0-9_-]{24,}"), False),
)
_MIXED = re.compile(r"(?=[^A-Z]*[A-Z])(?=[^a-z]*[a-z])(?=\D*\d)")

# Hand-written (detect-secrets scans code and config, not command lines or prose):
# ``--password X`` / ``-storepass X``: a flag named like a secret, a space, a value. The
# ``--password=X`` form is rule 7's.
_FLAG_VALUE = r"(\"[^\"\n]*\"|'[^'\n]*'|(?!-)[^\s\"';&|]+)"
_SECRET_FLAG = re.compile(
    rf"(?i)(?<![\w-])(--?[A-Za-z0-9_-]*?(?:{_SECRET_WORDS}|store[_-]?pass)[ \t]+){_FLAG_VALUE}"
)
# ``-p X`` / ``-pX`` is a password only for some commands (mysql, mongo, sshpass, docker
# login, useradd ...) or next to ``-u USER``; elsewhere it is a port (docker, ssh), "parents"
# (mkdir) or "previous" (kubectl logs). Port specs and paths are never a password.
_PASSWORD_COMMAND = re.compile(
    r"(?<![\w-])(?:mysql\w*|mariadb[\w-]*|mongo\w*|sshpass|useradd|usermod|login)(?![\w-])"
    r"|(?<![\w-])-u[ \t]*[^\s-]"
)
_SHORT_P = re.compile(rf"(?<![\w-])(-p(?:[ \t]+|(?=[^\s-])))(?!-){_FLAG_VALUE}")
_PORT = r"\d{1,5}(?:-\d{1,5})?"  # a port or a range: 8080, 8000-8010
_PORT_OR_PATH = re.compile(
    rf"(?:(?:\d{{1,3}}(?:\.\d{{1,3}}){{3}}|\[[0-9A-Fa-f:]*\]):)?{_PORT}(?::{_PORT})?"
    r"(?:/(?:tcp|udp|sctp))?|(?:~|\.{1,2})?/.*",  # or a path: /x ./x ../x ~/x
    re.ASCII,
)
# "the password is X", "passphrase was 'X'", "PIN set to X": hand-written (prose).
_SECRET_PHRASE = re.compile(
    r"(?i)(?<![\w-])((?:passw(?:or)?d|pass(?:phrase|code)|pwd|pin|secret|api[ _-]?key|token)s?"
    r"[ \t]+(?:is(?:[ \t]+now)?|was|(?:set|changed|reset)[ \t]+to)[ \t]*:?[ \t]+)"
    r"(\"[^\"\n]*\"|'[^'\n]*'|[^\s\"']+)"
)
# Words after "the password is" that describe it rather than being it.
_PHRASE_NOT_A_SECRET = frozenset((
    "a", "an", "the", "not", "no", "now", "set", "being", "still", "also", "too", "very",
    "wrong", "invalid", "incorrect", "correct", "expired", "expiring", "required", "missing",
    "empty", "blank", "valid", "revoked", "rotated", "changed", "reset", "stored", "saved",
    "hashed", "encrypted", "masked", "redacted", "hidden", "unknown", "unset", "null", "none",
    "nil", "true", "false", "same", "different", "weak", "strong", "short", "long", "out",
    "in", "on", "off", "ok", "fine", "case", "used", "needed", "sent", "known", "shared",
    "leaked", "compromised", "generated", "updated", "provided", "given", "for", "to", "of",
    "at", "from", "that", "this", "it", "available", "configured", "mandatory", "optional",
))  # fmt: skip
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9_%+-][A-Za-z0-9._%+-]*"
    r"@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"\.[A-Za-z]{2,63}(?![A-Za-z0-9-])"
)
# 13+ digits with single spaces or dashes between them; _card() picks the Luhn-valid windows
_CARD = re.compile(
    r"(?<![\w.])(?<![A-Za-z0-9]-)(?<!HASH:)\d(?:[ -]?\d){12,}(?!\w|[.-]\w)", re.ASCII
)
_HEX = r"[0-9A-Fa-f]"
_IPV6 = re.compile(
    rf"(?<![\w:.])(?:{_HEX}{{0,4}}:){{2,7}}"
    rf"(?:\d{{1,3}}(?:\.\d{{1,3}}){{3}}|{_HEX}{{1,4}})?"
    r"(?:%[0-9A-Za-z]+)?(?![\w:]|\.\d)",
    re.ASCII,
)
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?!\w|\.\d)", re.ASCII)
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d+(?:[ .-]?\(\d{1,4}\)[ .-]?\d+|[ .-]\d+)*(?!\w)", re.ASCII)
_PHONE_NANP = re.compile(
    r"(?<![\w.+/:-])(?:1[ .-])?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\w|[.-]\d)",
    re.ASCII,
)
_PHONE_TRUNK = re.compile(
    r"(?<![\w.+/:-])0\d{1,4}([ .-])\d{2,4}(?:\1\d{2,4}){1,3}(?!\w|[.:/-]?\d)", re.ASCII
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = ord(ch) - 48
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _is_card(digits: str, grouped: bool) -> bool:
    # A bare 13/16/19-digit number starting with 1 is an epoch timestamp in ms/µs/ns far more
    # often than a card (no major network issues cards starting with 1).
    if not grouped and digits[0] == "1" and len(digits) in (13, 16, 19):
        return False
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _looks_like_token(token: str) -> bool:
    """After a bare "bearer": a token, not an English word ("bearer of bad news")."""
    return len(token) >= 20 or (len(token) >= 8 and any(c.isdigit() for c in token))


def _has_secret_word(text: str) -> bool:
    """Cheap gate for the rules built on _SECRET_WORDS: true whenever one could match (each
    word holds one of these; casefold, like the regexes' IGNORECASE, maps the long s and the
    Kelvin sign to s and k). The regexes' cost grows with the number of words: this keeps it off
    the strings that name no secret at all."""
    folded = text.casefold()
    return (
        "pass" in folded or "pwd" in folded or "secret" in folded or "token" in folded
        or "key" in folded or "credent" in folded or "contrase" in folded
    )  # fmt: skip


# ------------------------------------------------------------------- the rules' triggers

# One or more per text rule, each a necessary condition of its rule firing (the rule's
# pattern with its lookarounds dropped, or the literal its gate needs), as Hyperscan
# patterns: a text none of a rule's triggers matches is one that rule returns unchanged.
# ``Redactor.text`` scans each text once for all of them and runs only the rules one of
# whose triggers matched (scanning again after a rule changed the text); the export scans
# whole chunks of serialised records with them (``neuralops.redaction_batch``), hence the
# trigger of no rule (a JSON escape) and the escaped quotes some allow. ASCII only: a text
# holding anything else runs every rule, and the export marks its record by a byte test
# (as a trigger, ``[^\x00-\x7f]`` made the whole scan a fifth slower).
# tests/test_redaction_batch.py holds them to the rules.


class Trigger(NamedTuple):
    pattern: str
    caseless: bool
    rule: str | None  # the Redactor method it gates; None: the export's own


# The secret words of _SECRET_WORDS that can occur in ASCII text.
_WORDS = "(?:{})".format(
    "|".join([w.replace("_?", "[_-]?") for w in _KEYWORD_DENYLIST if w.isascii()])
    + "|"
    + _OWN_SECRET_WORDS
)

TRIGGERS: Final[tuple[Trigger, ...]] = (
    # a JSON escape but \" (what it decodes to is hidden from the triggers: the export
    # redacts the value holding it as its text, neuralops.redaction_batch)
    Trigger(r'\\[^"]', False, None),
    Trigger("PRIVATE KEY", False, "_private_keys"),
    Trigger("eyJ", False, "_jwts"),
    # _AUTH_HEADER; also the secret-named key "(proxy-)authorization"
    Trigger("authorization", True, "_bearer_tokens"),
    Trigger("bearer[ \t]", True, "_bearer_tokens"),  # _BEARER
    Trigger("aws_?secret|secret_?access", True, "_aws"),  # _AWS_SECRET_CONTEXT
    # _AWS_ACCESS_KEY, _AWS_SECRET_NEAR_ID
    Trigger("AKIA|ASIA|<AWS_ACCESS_KEY>", False, "_aws"),
    # _api_tokens: the literals of _TOKEN_HINT (case-insensitive where a plugin is), with
    # "sk-" narrowed to the one pattern that needs no other literal
    Trigger(r"xox|hooks\.slack", True, "_api_tokens"),
    Trigger(
        r"gh[pousr]_|github_pat_|gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|agent|oas)-|GR1348941"
        r"|T3BlbkFJ|k_live_|SG\.|pypi-|sq0csp-|AccountKey=|hv[sbr]\.",
        False,
        "_api_tokens",
    ),
    Trigger("sk-[A-Za-z0-9_-]*[A-Za-z0-9]{20}", False, "_api_tokens"),
    Trigger("AC[a-z0-9]{32}|SK[a-z0-9]{32}", False, "_api_tokens"),  # Twilio
    Trigger("[0-9a-z]{32}-us[0-9]", False, "_api_tokens"),  # Mailchimp
    # Telegram (8-10 digits: the last 8 are enough)
    Trigger("[0-9]{8}:[0-9A-Za-z_-]{35}", False, "_api_tokens"),
    Trigger(r"\.[a-zA-Z0-9_-]{6}\.", False, "_api_tokens"),  # Discord (its middle part)
    Trigger("://", False, "_url_passwords"),
    Trigger(rf"-[A-Za-z0-9_-]*(?:{_WORDS}|store[_-]?pass)[ \t]", True, "_secret_flags"),
    Trigger("(?:^|[^0-9A-Za-z_-])-p", False, "_secret_flags"),  # _SHORT_P
    # _KEY_VALUE; also a secret-named key ("k":)
    Trigger(rf"{_WORDS}\\?[\"']?[ \t]*[:=]", True, "_key_values"),
    Trigger(
        r"(?:passw(?:or)?d|pass(?:phrase|code)|pwd|pin|secret|api[ _-]?key|token)s?[ \t]+"
        r"(?:is|was|set|changed|reset)",
        True,
        "_secret_phrases",
    ),
    Trigger("@", False, "_emails"),
    # also a card stored as a JSON number
    Trigger("[0-9](?:[ -]?[0-9]){12}", False, "_cards"),
    Trigger("(?:^|[^0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2}", False, "_ipv6"),
    Trigger(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", False, "_ipv4"),
    Trigger(r"\+(?:[ .()-]*[0-9]){8}", False, "_phones"),  # _PHONE_INTL (8 digits at least)
    Trigger(
        r"(?:\([0-9]{3}\)[ .-]?|[0-9]{3}[ .-])[0-9]{3}[ .-][0-9]{4}", False, "_phones"
    ),  # _PHONE_NANP
    Trigger(
        "(?:^|[^0-9A-Za-z_.+/:-])0[0-9]{1,4}[ .-][0-9]{2,4}[ .-][0-9]{2,4}", False, "_phones"
    ),  # _PHONE_TRUNK
)
_GATED: Final = frozenset(t.rule for t in TRIGGERS if t.rule)


class Scanner:
    """Triggers compiled once into one Hyperscan database (a scan needs its own scratch
    space, hence the lock). ``serialized``: the database as ``dumpb`` wrote it in another
    process of this machine, loaded instead of compiled again (~0.15 s a database)."""

    def __init__(self, triggers: tuple[Trigger, ...], serialized: bytes | None = None) -> None:
        self.triggers = triggers
        self.names = tuple(t.rule for t in triggers)  # by trigger id, for rules()
        if serialized is not None:
            self.database = hyperscan.loadb(serialized, hyperscan.HS_MODE_BLOCK)
            self.database.scratch = hyperscan.Scratch(self.database)
        else:
            self.database = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            self.database.compile(
                expressions=[t.pattern.encode("ascii") for t in triggers],
                ids=list(range(len(triggers))),
                elements=len(triggers),
                flags=[hyperscan.HS_FLAG_CASELESS if t.caseless else 0 for t in triggers],
            )
        self.lock = threading.Lock()

    def dump(self) -> bytes:
        return hyperscan.dumpb(self.database)

    def matches(self, data: bytes) -> list[tuple[int, int]]:
        """(trigger, end offset) of every match in ``data``."""
        out: list[tuple[int, int]] = []

        def found(trigger: int, _start: int, end: int, _flags: int, _context: object) -> None:
            out.append((trigger, end))

        self._scan(data, found)
        return out

    def rules(self, text: str) -> set[str | None] | None:
        """The rules some trigger matches in ``text`` (None: every rule, a non-ASCII text)."""
        if not text.isascii():
            return None
        # the names gathered as they are found: no list of matches to build and walk again
        # (asked after every change a rule makes: ~3.5 -> ~2.7 µs on a planted run's log lines)
        rules: set[str | None] = set()
        add, names = rules.add, self.names

        def found(trigger: int, _start: int, _end: int, _flags: int, _context: object) -> None:
            add(names[trigger])

        self._scan(text.encode(), found)
        return rules

    def _scan(self, data: bytes, found: Callable[[int, int, int, int, object], None]) -> None:
        with self.lock:  # one scratch space per database
            self.database.scan(data, match_event_handler=found)


_SCANNERS: dict[tuple[Trigger, ...], Scanner] = {}


def scanner(triggers: tuple[Trigger, ...]) -> Scanner:
    """The process's scanner for ``triggers``, compiled on first use."""
    found = _SCANNERS.get(triggers)
    if found is None:
        found = _SCANNERS.setdefault(triggers, Scanner(triggers))
    return found


def compiled_scanners(*wanted: tuple[Trigger, ...]) -> dict[tuple[Trigger, ...], bytes]:
    """The scanners for ``wanted``, serialized: the export's worker processes load them
    (``load_scanners``) rather than compile them again."""
    return {triggers: scanner(triggers).dump() for triggers in wanted}


def load_scanners(serialized: Mapping[tuple[Trigger, ...], bytes]) -> None:
    for triggers, data in serialized.items():
        _SCANNERS.setdefault(triggers, Scanner(triggers, data))


@lru_cache(maxsize=8192)
def _is_secret_key(name: str) -> bool:
    return _SECRET_KEY_NAME.fullmatch(name) is not None


# ------------------------------------------------------------------------ field-rule trie


@dataclass(eq=False)  # hashed by identity: the steps taken from each are remembered
class _Node:
    children: dict[str, _Node] = field(default_factory=dict)
    action: FieldAction | None = None


def _compile_rules(rules: Mapping[str, FieldAction]) -> _Node:
    root = _Node()
    for path, action in rules.items():
        if action not in ("drop", "hash"):
            raise ValueError(
                f"field rule {path!r}: action must be 'drop' or 'hash', not {action!r}"
            )
        parts = path.split(".") if isinstance(path, str) else []
        if not parts or any(not p for p in parts):
            raise ValueError(
                f"field rule {path!r}: use a dotted path such as 'inputs.user_email' "
                "(no empty segments)"
            )
        node = root
        for part in parts:
            node = node.children.setdefault(part, _Node())
        node.action = action
    return root


_Step = tuple[FieldAction | None, tuple[_Node, ...]]  # the action at a key, the nodes below


def _step(nodes: tuple[_Node, ...], key: str) -> _Step:
    """Follow ``key`` (and "*") from each active node: the action here, the nodes below."""
    found: list[_Node] = []
    for node in nodes:
        child = node.children.get(key)
        if child is not None:
            found.append(child)
        star = node.children.get("*")
        if star is not None:
            found.append(star)
    actions = {n.action for n in found if n.action}
    action: FieldAction | None = "drop" if "drop" in actions else ("hash" if actions else None)
    return action, tuple(n for n in found if n.children)


_DIGIT = re.compile(r"\d", re.ASCII)


_KeyStep = tuple[FieldAction | None, tuple[_Node, ...], bool]  # ``_Step``, named like a secret


def _key_step(nodes: tuple[_Node, ...], key: Any) -> _KeyStep:
    """A key's field-rule action, the trie's nodes below it, and whether it is named like a
    secret (``_is_secret_key``)."""
    name = key if isinstance(key, str) else str(key)
    action, below = _step(nodes, name) if nodes else (None, ())
    return action, below, isinstance(key, str) and _is_secret_key(key)


def _joined(path: str, key: Any) -> str:
    """The dotted path of ``key`` under ``path`` (for error messages)."""
    name = key if isinstance(key, str) else str(key)
    return f"{path}.{name}" if path else name


_CLEAN_MAX, _CLEAN_MAX_LEN = 50_000, 128
_SAFE_SCALARS = (bool, float, Decimal, datetime, date, time, UUID)


class Redactor:
    """Text rules plus field rules; ``stats`` counts replacements by placeholder."""

    def __init__(
        self,
        field_rules: Mapping[str, FieldAction] | None = None,
        hash_key: bytes | None = None,
    ) -> None:
        if hash_key is not None and (not isinstance(hash_key, bytes) or not hash_key):
            raise ValueError("hash_key must be non-empty bytes")  # never echo the key
        self.field_rules: Mapping[str, FieldAction] = MappingProxyType(
            dict(DEFAULT_FIELD_RULES if field_rules is None else field_rules)
        )
        self._root = _compile_rules(self.field_rules)
        self._key = hash_key or DEV_HASH_KEY
        self.uses_dev_key = hash_key is None or hash_key == DEV_HASH_KEY
        self.stats: Counter[str] = Counter()
        # Order matters: specific shapes first, so e.g. a JWT is not half-eaten as a
        # key=value secret and a DSN's password is not mistaken for an e-mail.
        self._rules: tuple[Callable[[str], str], ...] = (
            self._private_keys,
            self._jwts,
            self._bearer_tokens,
            self._aws,
            self._api_tokens,
            self._url_passwords,
            self._secret_flags,
            self._key_values,
            self._secret_phrases,
            self._emails,
        )
        self._numeric_rules: tuple[Callable[[str], str], ...] = (
            self._cards,
            self._ipv6,
            self._ipv4,
            self._phones,
        )
        # Short strings that came back unchanged (statuses, names, keys): run records repeat
        # them endlessly. Bounded; redaction is deterministic, so the cache cannot go stale.
        self._clean: set[str] = set()
        # Keys the walk met at a place in the rules' trie and text() left unchanged: a run's
        # keys repeat from record to record. Bounded, as the keys come from the data.
        self._clean_keys: dict[tuple[tuple[_Node, ...], str], _KeyStep] = {}
        # The triggers gate the stock rules only: a subclass may have changed what they do.
        self._gated = type(self) in (Redactor, SecretRedactor)
        self._scanner: Scanner | None = None  # the process's, taken on first use

    def __repr__(self) -> str:  # the key stays out of reprs and logs
        key = "dev key" if self.uses_dev_key else "key set"
        return f"Redactor({len(self.field_rules)} field rules, {key})"

    # ------------------------------------------------------------------ public interface

    def text(self, value: str) -> str:
        """All text rules, in order; placeholders are never re-matched."""
        if not isinstance(value, str):
            raise TypeError(f"text() takes a str, not {type(value).__name__}")
        if len(value) < 5 or value in self._clean:  # < 5: shorter than any match ("pwd=x")
            return value
        original = value
        may_fire = self._may_fire(value)
        value, may_fire = self._apply(self._rules, value, may_fire)
        # IPv6 can be digit-free ("dead::beef"); cards, IPv4 and phones cannot. Rules only
        # ever insert digit-free placeholders, so testing the input is enough.
        if _DIGIT.search(original) is not None or "::" in value:
            for _ in range(4):  # a match can leave a neighbour that matches on its own
                before = value
                value, may_fire = self._apply(self._numeric_rules, value, may_fire)
                if value == before:
                    break
        if value == original and len(value) <= _CLEAN_MAX_LEN and len(self._clean) < _CLEAN_MAX:
            self._clean.add(value)
        return value

    def _may_fire(self, text: str) -> set[str | None] | None:
        """The rules that could change ``text`` (None: all of them)."""
        if not self._gated:
            return None
        if self._scanner is None:  # not per text: the lookup hashes all the triggers
            self._scanner = scanner(TRIGGERS)
        return self._scanner.rules(text)

    def _apply(
        self,
        rules: tuple[Callable[[str], str], ...],
        value: str,
        may_fire: set[str | None] | None,
    ) -> tuple[str, set[str | None] | None]:
        """``rules`` in order over ``value``, skipping those none of whose triggers match it
        (they would return it unchanged); after a change the text is scanned again."""
        for rule in rules:
            name = rule.__name__
            if may_fire is not None and name in _GATED and name not in may_fire:
                continue
            changed = rule(value)
            if changed != value:
                value, may_fire = changed, self._may_fire(changed)
        return value, may_fire

    def value(self, obj: Any, path: str = "") -> Any:
        """Redact JSON-like ``obj`` found at dotted ``path``; returns a new object.

        A drop rule on ``path`` itself returns None (there is no parent to remove it from).
        """
        nodes: tuple[_Node, ...] = (self._root,)
        action: FieldAction | None = None
        for part in path.split(".") if path else ():
            action, nodes = _step(nodes, part)
            if action:
                break
        if action == "drop":
            self.stats[DROPPED] += 1
            return None
        if action == "hash":
            return self._hash_value(obj)
        return self._walk(obj, nodes, path)

    def record(self, run: Mapping[str, Any]) -> dict[str, Any]:
        """A whole exported run, field rules rooted at the record ("inputs.user_email")."""
        if not isinstance(run, Mapping):
            raise TypeError(f"record() takes a mapping, not {type(run).__name__}")
        return self._walk(run, (self._root,), "")

    # ------------------------------------------------------------------- the walk

    def _walk(self, obj: Any, nodes: tuple[_Node, ...], path: str) -> Any:
        if isinstance(obj, str):
            if obj in self._clean:  # the common case first: seen before, unchanged
                return obj
            return obj if _PLACEHOLDER.fullmatch(obj) else self.text(obj)
        if isinstance(obj, Mapping):
            out: dict[Any, Any] = {}
            clean_keys, clean = self._clean_keys, self._clean
            for key, item in obj.items():
                known = clean_keys.get((nodes, key))
                if known is not None and key not in out:  # met here before, unchanged by text()
                    (action, below, secret), new_key = known, key
                else:
                    action, below, secret = _key_step(nodes, key)
                    if action == "drop":
                        self.stats[DROPPED] += 1
                        continue
                    new_key = self._redact_key(key, out)
                    if new_key == key and type(key) is str and len(clean_keys) < _CLEAN_MAX:
                        clean_keys[nodes, key] = (action, below, secret)
                if action is None and not secret and type(item) is str and item in clean:
                    out[new_key] = item  # the common case, without a call: seen, unchanged
                elif action == "hash":
                    out[new_key] = self._hash_value(item)
                elif secret:
                    out[new_key] = self._secret_value(item, below, _joined(path, key))
                else:
                    out[new_key] = self._walk(item, below, _joined(path, key))
            return out
        if isinstance(obj, list | tuple):
            return [self._walk(item, nodes, path) for item in obj]
        if obj is None or isinstance(obj, _SAFE_SCALARS):
            return obj
        if isinstance(obj, int):
            # a card number stored as a JSON number
            digits = str(abs(obj))
            if 13 <= len(digits) <= 19 and _is_card(digits, grouped=False):
                self.stats[PLACEHOLDERS["card"]] += 1
                return PLACEHOLDERS["card"]
            return obj
        raise TypeError(
            f"cannot redact {type(obj).__name__} at {path or '(root)'}: "
            "convert it to JSON types (dict, list, str, number, bool, None) first"
        )

    def _redact_key(self, key: Any, out: dict[Any, Any]) -> Any:
        """Keys are text too (a dict keyed by e-mail); collisions get ~2, ~3, ..."""
        if not isinstance(key, str):
            return key
        new = self.text(key)
        candidate, n = new, 1
        while candidate in out:
            n += 1
            candidate = f"{new}~{n}"
        return candidate

    def _secret_value(self, obj: Any, nodes: tuple[_Node, ...], path: str) -> Any:
        """Value under a key named like a secret (password, api_key, ...): scalars go."""
        if isinstance(obj, str):
            if not obj or _PLACEHOLDER.fullmatch(obj):
                return obj
        elif isinstance(obj, list | tuple):
            return [self._secret_value(item, nodes, path) for item in obj]
        elif not isinstance(obj, int | float) or isinstance(obj, bool):
            return self._walk(obj, nodes, path)  # dicts are walked; None/bool stay
        self.stats[PLACEHOLDERS["secret"]] += 1
        return PLACEHOLDERS["secret"]

    def _hash_value(self, obj: Any) -> Any:
        """Keyed hash of each scalar; containers keep their shape, None/bool stay."""
        if isinstance(obj, str):
            if _PLACEHOLDER.fullmatch(obj):  # already redacted: idempotence
                return obj
            data = obj.encode("utf-8")
        elif isinstance(obj, Mapping):
            out: dict[Any, Any] = {}
            for key, item in obj.items():
                out[self._redact_key(key, out)] = self._hash_value(item)
            return out
        elif isinstance(obj, list | tuple):
            return [self._hash_value(item) for item in obj]
        elif obj is None or isinstance(obj, bool):
            return obj
        else:
            data = json.dumps(obj, default=str).encode("utf-8")
        self.stats[HASHED] += 1
        digest = hmac.new(self._key, data, hashlib.sha256).hexdigest()[:16]
        return f"<HASH:{digest}>"

    # ------------------------------------------------------------------- text rules

    def _sub(self, kind: str, pattern: re.Pattern[str], text: str) -> str:
        # a literal replacement (no backslash, no group reference): substituted without a
        # call back into Python for each match
        placeholder = PLACEHOLDERS[kind]
        text, count = pattern.subn(placeholder, text)
        if count:
            self.stats[placeholder] += count
        return text

    def _private_keys(self, text: str) -> str:
        if "PRIVATE KEY" not in text:
            return text
        return self._sub("private_key", _PRIVATE_KEY, text)

    def _jwts(self, text: str) -> str:
        return self._sub("jwt", _JWT, text) if "eyJ" in text else text

    def _bearer_tokens(self, text: str) -> str:
        lower = text.lower()
        if "bearer" not in lower and "basic" not in lower:
            return text
        token_ph = PLACEHOLDERS["bearer_token"]

        def header(m: re.Match[str]) -> str:
            prefix = m.group(1)
            ph = token_ph if prefix.rstrip().lower().endswith("bearer") else PLACEHOLDERS["secret"]
            self.stats[ph] += 1
            return prefix + ph

        def loose(m: re.Match[str]) -> str:
            if not _looks_like_token(m.group(2)):
                return m.group(0)
            self.stats[token_ph] += 1
            return m.group(1) + token_ph

        if "authorization" in lower:
            text = _AUTH_HEADER.sub(header, text)
        return _BEARER.sub(loose, text) if "bearer" in lower else text

    def _aws(self, text: str) -> str:
        has_id = "AKIA" in text or "ASIA" in text
        if has_id:
            text = self._sub("aws_access_key", _AWS_ACCESS_KEY, text)
        secret_ph = PLACEHOLDERS["aws_secret_key"]

        def context(m: re.Match[str]) -> str:
            self.stats[secret_ph] += 1
            return m.group(1) + secret_ph

        if "ecret" in text or "ECRET" in text:
            text = _AWS_SECRET_CONTEXT.sub(context, text)
        if PLACEHOLDERS["aws_access_key"] in text:  # a key id makes a bare 40-char secret likely
            text = self._sub("aws_secret_key", _AWS_SECRET_NEAR_ID, text)
        return text

    def _api_tokens(self, text: str) -> str:
        if len(text) < 24:  # the shortest: sk- + 20, xoxb- + 10, gh?_ + 20
            return text
        ph = PLACEHOLDERS["api_token"]

        def mixed(m: re.Match[str]) -> str:
            if _MIXED.match(m.group(0)) is None:
                return m.group(0)
            self.stats[ph] += 1
            return ph

        if _TOKEN_HINT.search(text) is not None:
            for pattern in _PREFIXED_TOKENS:
                text = self._sub("api_token", pattern, text)
            for pattern, must_mix in _OWN_TOKENS:
                text = (
                    pattern.sub(mixed, text) if must_mix else self._sub("api_token", pattern, text)
                )
        if len(text) >= 34:
            for needle, pattern in _UNPREFIXED_TOKENS:
                if needle in text:
                    text = self._sub("api_token", pattern, text)
        return text

    def _secret_flags(self, text: str) -> str:
        if "-" not in text:
            return text
        ph = PLACEHOLDERS["secret"]

        def repl(m: re.Match[str]) -> str:
            value = m.group(2)
            quote = value[0] if value[0] in "\"'" else ""
            inner = value[1:-1] if quote else value
            if not inner or _PLACEHOLDER.match(inner) or inner.lower() in _NOT_A_SECRET:
                return m.group(0)
            if m.group(1).startswith("-p") and _PORT_OR_PATH.fullmatch(inner):
                return m.group(0)
            self.stats[ph] += 1
            return m.group(1) + quote + ph + quote

        if _has_secret_word(text):
            text = _SECRET_FLAG.sub(repl, text)
        if "-p" in text and _PASSWORD_COMMAND.search(text) is not None:
            text = _SHORT_P.sub(repl, text)
        return text

    def _secret_phrases(self, text: str) -> str:
        if not (
            " is" in text or " was" in text or " to" in text or "\t" in text
            or " IS" in text or " WAS" in text or " TO" in text
        ):  # fmt: skip
            return text
        ph = PLACEHOLDERS["secret"]

        def repl(m: re.Match[str]) -> str:
            value = m.group(2)
            if value[0] in "\"'":
                inner = value[1:-1]
                if not inner or _PLACEHOLDER.match(inner):
                    return m.group(0)
                self.stats[ph] += 1
                return m.group(1) + value[0] + ph + value[0]
            bare = value.rstrip(".,;:!?)")
            tail = value[len(bare) :]
            if not bare or _PLACEHOLDER.match(bare) or bare.lower() in _PHRASE_NOT_A_SECRET:
                return m.group(0)
            self.stats[ph] += 1
            return m.group(1) + ph + tail

        return _SECRET_PHRASE.sub(repl, text)

    def _url_passwords(self, text: str) -> str:
        if "://" not in text:
            return text
        ph = PLACEHOLDERS["password"]

        def repl(m: re.Match[str]) -> str:
            if _PLACEHOLDER.fullmatch(m.group(2)):
                return m.group(0)
            self.stats[ph] += 1
            return f"{m.group(1)}{ph}@"

        return _URL_PASSWORD.sub(repl, text)

    def _key_values(self, text: str) -> str:
        if ("=" not in text and ":" not in text) or not _has_secret_word(text):
            return text
        ph = PLACEHOLDERS["secret"]

        def repl(m: re.Match[str]) -> str:
            prefix = m.group(1)
            escaped, double, single, bare = m.group(2, 3, 4, 5)
            if bare is not None:
                if _PLACEHOLDER.match(bare) or bare.lower() in _NOT_A_SECRET:
                    return m.group(0)
                # "Config(password=x)": keep closers the value did not open
                tail = ""
                while (
                    bare
                    and bare[-1] in ")]}"
                    and bare.count(bare[-1]) > bare.count({")": "(", "]": "[", "}": "{"}[bare[-1]])
                ):
                    tail = bare[-1] + tail
                    bare = bare[:-1]
                if not bare:
                    return m.group(0)
                self.stats[ph] += 1
                return prefix + ph + tail
            inner = next(v for v in (escaped, double, single) if v is not None)
            if not inner or _PLACEHOLDER.fullmatch(inner):
                return m.group(0)
            quote = '\\"' if escaped is not None else ('"' if double is not None else "'")
            self.stats[ph] += 1
            return f"{prefix}{quote}{ph}{quote}"

        return _KEY_VALUE.sub(repl, text)

    def _emails(self, text: str) -> str:
        return self._sub("email", _EMAIL, text) if "@" in text else text

    def _cards(self, text: str) -> str:
        ph = PLACEHOLDERS["card"]

        def repl(m: re.Match[str]) -> str:
            # Split the run into digit groups and replace the longest Luhn-valid windows, so
            # a card followed by another number ("4111 ... 1111 2026") is still found.
            parts = re.split(r"([ -])", m.group(0))
            groups, seps = parts[0::2], parts[1::2]
            out: list[str] = []
            i = 0
            while i < len(groups):
                best, total = -1, 0
                for j in range(i, len(groups)):
                    total += len(groups[j])
                    if total > 19:
                        break
                    if total >= 13 and _is_card("".join(groups[i : j + 1]), grouped=j > i):
                        best = j
                if best >= 0:
                    self.stats[ph] += 1
                    out.append(ph)
                    i = best + 1
                else:
                    out.append(groups[i])
                    i += 1
                if i < len(groups):
                    out.append(seps[i - 1])
            return "".join(out)

        return _CARD.sub(repl, text)

    def _ipv6(self, text: str) -> str:
        if "::" not in text and text.count(":") < 7:
            return text
        ph = PLACEHOLDERS["ipv6"]

        def repl(m: re.Match[str]) -> str:
            candidate = m.group(0)
            if candidate == "::":  # code ("a :: b"), not an address
                return candidate
            try:
                ipaddress.IPv6Address(candidate.split("%", 1)[0])
            except ValueError:
                return candidate  # times (12:03:04), MACs, ...
            self.stats[ph] += 1
            return ph

        return _IPV6.sub(repl, text)

    def _ipv4(self, text: str) -> str:
        return self._sub("ipv4", _IPV4, text) if "." in text else text

    def _phones(self, text: str) -> str:
        ph = PLACEHOLDERS["phone"]

        def counted(low: int, high: int) -> Callable[[re.Match[str]], str]:
            def repl(m: re.Match[str]) -> str:
                found = m.group(0)
                end = len(found)
                # Too many digits: the last groups may be a following number ("... 0958 10"),
                # so drop groups from the end until it fits.
                while (digits := sum(c.isdigit() for c in found[:end])) > high:
                    end = max(found.rfind(sep, 0, end) for sep in " .-")
                    if end <= 0:
                        return found
                if digits < low:
                    return found
                self.stats[ph] += 1
                return ph + found[end:]

            return repl

        if "+" in text:
            text = _PHONE_INTL.sub(counted(8, 16), text)  # E.164 max 15, +1 for "(0)"
        if " " not in text and "-" not in text and "." not in text:
            return text  # both national forms need a separator
        text = _PHONE_NANP.sub(counted(10, 11), text)
        return _PHONE_TRUNK.sub(counted(9, 12), text)


def default_redactor() -> Redactor:
    """DEFAULT_FIELD_RULES, hash key from NEURALOPS_REDACTION_KEY (else the dev key)."""
    from neuralops.settings import get_settings

    secret = get_settings().redaction_key
    key = secret.get_secret_value().encode("utf-8") if secret is not None else None
    return Redactor(hash_key=key or None)


class SecretRedactor(Redactor):
    """Credentials only: private keys, JWTs, bearer tokens, AWS keys, URL passwords and
    secret-named keys or ``key=value`` pairs; no field rules. Addresses and personal data
    stay, because in metric labels they are identities (``instance="10.0.0.1:9100"``)."""

    def __init__(self) -> None:
        super().__init__(field_rules={})
        self._rules = (
            self._private_keys,
            self._jwts,
            self._bearer_tokens,
            self._aws,
            self._api_tokens,
            self._url_passwords,
            self._secret_flags,
            self._key_values,
            self._secret_phrases,
        )
        self._numeric_rules = ()
