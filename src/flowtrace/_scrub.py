"""Scrubbing: secrets in a log record are replaced before the record leaves the process.

Pure (no I/O). The delivery worker calls `sanitize(record, scrubber, redact)` on every request
body it builds (a dict shaped like `POST /flows/log` or `PATCH /flows/logs/{id}`,
docs/contract.md), before the body is encoded, spooled, stored or sent; never on the call path.
It returns a new record (the input is never mutated; containers with nothing to scrub are the
same objects, not copies) and what it scrubbed, counted by rule. It never raises: an
unexpected failure is reported through `flowtrace._guard.internal_error` and the fields it
could not scrub are left out of the record rather than sent as they were.

Every field is scrubbed except the log's identity, times and status (`IDENTITY_FIELDS`):
inputs, messages, output, output_message, stdout, error, metadata, provider_request,
provider_response, user, flow (its attributes), environment, source.

1. Secret-looking keys. In mappings at any depth (lists included; header mappings;
   `[name, value]` pairs and `{"name" or "key": ..., "value": ...}` entries whose name looks
   like a header name) the value under a key that matches a rule becomes the marker
   `[scrubbed: <rule>]` (`_contract.scrubbed`). A key is normalized (lowercased, every run of
   other characters such as `_`, `-`, `.` or spaces made one `_`), both as written and with
   camelCase split: `X-Api-Key`, `apiKey` and `api key` are `x_api_key` / `api_key`, and
   `AuThOrIzAtIoN` is still `authorization`. The rules are tried in this order, each on both
   spellings; the first that matches names the marker:

   =============  ===================================================================
   rule           the normalized key contains
   =============  ===================================================================
   password       password, passwd, passphrase
   secret         secret (client_secret, secret_key, aws_secret_access_key; not
                  secretary)
   token          `<qualifier>_token` or `<qualifier>token` at its end, the qualifier one
                  of `TOKEN_QUALIFIERS` (access, refresh, id, bearer, session, auth, api,
                  oauth, csrf, client, github, slack, ...; x-auth-token, idToken); jwt as a
                  word
   api key        api_key, apikey (x-api-key, openai_api_key)
   private key    private, signing, encryption, master or ssh key
   access key     access_key
   credential     credential(s); cred or creds as a word
   auth           auth, authorization, authentication, authn, authz, authkey or bearer as a
                  word (proxy-authorization, basic_auth, x-auth)
   cookie         cookie (set-cookie, cookies)
   csrf           csrf, xsrf
   =============  ===================================================================

   Not secrets, so kept: a key whose last word says what a secret is rather than holding it
   (`DESCRIPTOR_WORDS`: `api_key_id`, `secret_name`, `auth_type`, `token_url`, `password_length`,
   `access_key_id`, ...); `token` alone and every plural (`tokens`, `input_tokens`, `max_tokens`,
   `completion_tokens`: token counts), `token_count`, `usage`, `time_to_first_token`, `eos_token`;
   `key` alone (`cache_key`, `primary_key`); `author`, `authority`, `authored_by`, `oauth_provider`;
   `session_id`; `pass` (first_pass, pass_rate). None, booleans, empty strings and empty
   containers stay whatever their key: they hold no secret.

2. Secret-looking text, wherever it appears in a string (stdout, error, prompts, chat message
   contents, header values...): only the secret part is replaced (`VALUE_RULES`):

   ==================  ==============================================================
   rule                text
   ==================  ==============================================================
   bearer token        `Bearer <token>` / `bearer <token>`: the token (8+ characters of
                       RFC 6750's token alphabet with a digit, or 20+ characters)
   openai key          `sk-` + 20 or more of `[A-Za-z0-9_-]` with a digit (`sk-proj-...`)
   anthropic key       `sk-ant-` + 20 or more of `[A-Za-z0-9_-]`
   aws access key id   `AKIA` / `ASIA` + 16 of `[A-Z0-9]`
   google api key      `AIza` + 35 of `[A-Za-z0-9_-]`
   jwt                 `eyJ...` `.` `...` `.` `...` (three base64url segments)
   pem private key     `-----BEGIN ... PRIVATE KEY-----` to its END line (or to where the
                       base64 ends, when truncated)
   github token        `ghp_`, `gho_`, `ghu_`, `ghs_`, `ghr_` + 30 or more alphanumerics;
                       `github_pat_` + 22 or more
   slack token         `xoxb-`, `xoxp-`, `xoxa-`, `xoxr-`, `xoxs-`, `xoxo-`, `xoxe-`,
                       `xapp-`
   slack webhook       the secret path of `https://hooks.slack.com/services/...`
   stripe key          `sk_live_`, `sk_test_`, `rk_live_`, `rk_test_` + 16 or more
   hugging face token  `hf_` + 30 or more alphanumerics
   url password        the password of `scheme://user:password@host`
   ==================  ==============================================================

   A token must start a word (`task-...` is not `sk-...`). Text that is `name=value`,
   `"name": "value"`, `'name': 'value'` or, at the start of a line, `Name: value` (an HTTP
   header line: to the end of the line) has its value scrubbed when the name is a
   secret-looking key by the rules of 1 (found where the name ends with one of their
   words): `password=hunter2`, `OPENAI_API_KEY=...`, `{'api_key': '...'}`, `Authorization:
   Basic ...`. A prompt that merely mentions a password ("reset my password") is kept.

3. JSON text. A string that is a JSON object or array (the `output` of a function that
   returned a dict, tool-call arguments) is parsed and scrubbed as a structure; when
   something was scrubbed it is encoded again (compact), else kept as it was. Text that only
   looks like JSON gets the text rules, which never replace a quote.

`ScrubOptions` adds key rules (`extra_patterns`: regular expressions searched in normalized
key names, no exception for descriptor words; plain words among them are also looked for
before `=` in text), text rules (`extra_value_patterns`), keys to keep as they are
(`allow_keys`: normalized names, the record's own fields included; the value under such a
key is kept whole), and a `callback(match) -> bool` that sees each match (`ScrubMatch`:
path, key, rule, value) and keeps the value when it returns True. A `redact(record) ->
record` hook runs after scrubbing (`sanitize`).

Anything that is not JSON (bytes, sets, objects) is left as it is, unless it is under a
secret-looking key; subclasses of str, dict, list and tuple are read without calling their
methods. Data URLs (`data:...;base64,`) are not scanned. Structures nested deeper than
`MAX_DEPTH` are replaced by `[scrubbed: depth limit]`.

Cost: the worker's, per log (bench/scrub_bench.py, bench/RESULTS.md). A string shorter than
any rule can match, or found clean before, is not scanned again; each text rule runs only if
the text contains its trigger character; containers with nothing to scrub are not copied.
"""

from __future__ import annotations

import json
import marshal
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Union, cast

from flowtrace._contract import LOG_FIELDS, SCRUBBED_PREFIX, STATUS_FIELDS, scrubbed
from flowtrace._guard import internal_error, logger
from flowtrace._serialize import limits, snapshot, to_json

__all__ = [
    "DESCRIPTOR_WORDS",
    "IDENTITY_FIELDS",
    "KEY_RULES",
    "MAX_DEPTH",
    "TOKEN_QUALIFIERS",
    "VALUE_RULES",
    "RedactHook",
    "ScrubMatch",
    "ScrubOptions",
    "ScrubResult",
    "Scrubber",
    "normalize_key",
    "redact_from_setting",
    "sanitize",
    "scrubber_from_setting",
]

#: What scrubbing never touches: which log a record is, when, and its status.
IDENTITY_FIELDS: Final = frozenset(
    {
        "log_id",
        "id",
        "path",
        "trace_parent_id",
        "start_time",
        "end_time",
        "created_at",
        "provider_latency",
        "save",
        "run_id",
        "source_datapoint_id",
        *STATUS_FIELDS,
    }
)

#: Nesting levels scanned; anything deeper is replaced (it cannot be checked, so it is not sent).
MAX_DEPTH: Final = 128

# --- 1. key rules ----------------------------------------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: What may come before `token` in a key that holds one (`access_token`, `idToken`, `x-auth-token`).
#: Anything else (`max_tokens`, `eos_token`, `page_token`, `time_to_first_token`) is not a secret.
TOKEN_QUALIFIERS: Final = _words(
    """access refresh id bearer session auth authorization api oauth oauth2 csrf xsrf security
    secret client private user app bot service deploy job github gh gitlab slack hf huggingface
    npm pypi registry vault identity sso login reset verification webhook jwt"""
)

#: (rule, regular expression searched in the normalized key), in the order they are tried.
KEY_RULES: Final[tuple[tuple[str, str], ...]] = (
    ("password", r"pass(?:word|wd|phrase)"),
    ("secret", r"secret(?!ar(?:y|ies|iat))"),
    ("token", rf"(?:^|_)(?:{'|'.join(TOKEN_QUALIFIERS)})_?token$|(?:^|_)jwts?(?:$|_)"),
    ("api key", r"api_?key"),
    ("private key", r"(?:private|signing|encryption|master|ssh)_?key"),
    ("access key", r"access_?key"),
    ("credential", r"credential|(?:^|_)creds?(?:$|_)"),
    ("auth", r"(?:^|_)(?:auth|authorization|authentication|authn|authz|authkey|bearer)(?:$|_)"),
    ("cookie", r"cookie"),
    ("csrf", r"[cx]srf"),
)

#: A key ending in one of these words names, counts or describes a secret; it does not hold one.
_DESCRIPTORS = """id ids name names type types kind path paths file files filename dir env var
    field param arn length len count size min max url uri endpoint method methods scheme mode
    provider policy format prefix suffix enabled required expiry expires expiration ttl age at
    in version status error errors"""
DESCRIPTOR_WORDS: Final = frozenset(_words(_DESCRIPTORS))

# The words a secret-looking key ends with, as written in text (any case): where the text
# scanner looks for `name=value`. A prefilter only; the key rules decide.
_KEY_ENDINGS: Final = _words(
    """word words sswd hrase ecret ecrets oken jwt jwts key keys ential entials cred creds auth
    authn authz orization ntication earer ookie ookies srf"""
)

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NOT_ALNUM = re.compile(r"[^a-z0-9]+")


def normalize_key(key: str) -> str:
    """`X-Api-Key`, `apiKey`, `API_KEY` and `api key` are all `x_api_key` / `api_key`."""
    return _NOT_ALNUM.sub("_", _CAMEL_BOUNDARY.sub("_", key).lower()).strip("_")


# --- 2. text rules ---------------------------------------------------------------------------

_T = "A-Za-z0-9_-"  # base64url characters (inside a [class])
_B = r"[A-Za-z0-9._~+/-]"  # an RFC 6750 b64token character

#: rule -> what it finds (documentation; the scanners below implement them).
VALUE_RULES: Final = {
    "bearer token": "Bearer <token>",
    "openai key": "sk-... / sk-proj-...",
    "anthropic key": "sk-ant-...",
    "aws access key id": "AKIA... / ASIA...",
    "google api key": "AIza...",
    "jwt": "eyJ....eyJ....sig",
    "pem private key": "-----BEGIN ... PRIVATE KEY-----",
    "github token": "ghp_... / github_pat_...",
    "slack token": "xoxb-... / xapp-...",
    "slack webhook": "https://hooks.slack.com/services/...",
    "stripe key": "sk_live_... / rk_test_...",
    "hugging face token": "hf_...",
    "url password": "scheme://user:password@host",
}

# Python's regex engine scans fast for a literal prefix, ~15x slower for a pattern that may
# start at several characters. So the text rules are grouped by a character they all contain,
# checked first with `in` (a memchr: nothing else runs on text without it), and each group's
# regex starts with that literal, looking behind it for the rest of the prefix: `-(?<=sk-)`
# finds `sk-` at the speed of finding `-`. A branch is (group, rule, characters of the secret
# before the group's start).
_Branch = tuple[str, str, int]


def _after(prefix: str, word: str = _T) -> str:
    """Just after `prefix` (a regex of fixed width), which starts a word: `sk-` but not `task-`.
    The positive lookbehind first: it fails at once almost everywhere."""
    return f"(?<={prefix})(?<![{word}]{prefix})"


_DASH = (
    "-",
    r"-(?:"
    rf"{_after('sk-')}(?:(?P<anthropic>ant-[{_T}]{{20,}})"
    rf"|(?P<openai>(?=[A-Za-z_-]*[0-9])[{_T}]{{20,}}))"
    rf"|{_after('xox[abposre]-')}(?P<slack>[A-Za-z0-9-]{{10,}})"
    rf"|{_after('xapp-')}(?P<slack_app>[0-9]-[A-Za-z0-9-]{{10,}})"
    # to the END line, or (cut short by a budget) as far as the base64 goes; never across a
    # quote, so JSON text stays JSON
    r"|(?P<pem>----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"
    r"(?:[^\"'<>]*?-----END[A-Z0-9 ]*PRIVATE KEY-----|(?:[A-Za-z0-9+/=\s]|\\[nrt])*))"
    r")",
    (
        ("anthropic", "anthropic key", 3),
        ("openai", "openai key", 3),
        ("slack", "slack token", 5),
        ("slack_app", "slack token", 5),
        ("pem", "pem private key", 1),
    ),
)
_ALNUM_ = "A-Za-z0-9_"
_UNDERSCORE = (
    "_",
    r"_(?:"
    rf"{_after('gh[pousr]_', _ALNUM_)}(?P<github>[A-Za-z0-9]{{30,}})"
    rf"|{_after('github_', _ALNUM_)}(?P<github_pat>pat_[A-Za-z0-9_]{{22,}})"
    rf"|{_after('hf_', _ALNUM_)}(?P<hf>[A-Za-z0-9]{{30,}})"
    rf"|{_after('[rs]k_', _ALNUM_)}(?P<stripe>(?:live|test)_[A-Za-z0-9]{{16,}})"
    r")",
    (
        ("github", "github token", 4),
        ("github_pat", "github token", 7),
        ("hf", "hugging face token", 3),
        ("stripe", "stripe key", 3),
    ),
)
_CAPITAL_A = (
    "A",
    r"A(?=[KSI])(?<![A-Za-z0-9]A)(?:"
    r"(?P<aws>(?:KIA|SIA)[A-Z0-9]{16})(?![A-Za-z0-9])"
    rf"|(?P<google>Iza[{_T}]{{35}})(?![{_T}])"
    r")",
    (("aws", "aws access key id", 1), ("google", "google api key", 1)),
)
_JWT = (
    "J",
    rf"eyJ(?<![{_T}]eyJ)(?P<jwt>[{_T}]{{2,}}\.[{_T}]{{2,}}\.[{_T}]*)",
    (("jwt", "jwt", 3),),
)
_BEARER = (
    "earer",
    rf"earer(?<=[Bb]earer)(?<![A-Za-z0-9_][Bb]earer)[ \t]+"
    rf"(?P<bearer>(?=[A-Za-z._~+/-]*[0-9]|{_B}{{20}}){_B}{{8,}}=*)",
    (("bearer", "bearer token", 0),),
)
_URL_PASSWORD = (
    "@",
    r"://[^\s/:@\"'<>]*:(?P<url>[^\s/@\"'<>]+)@",
    (("url", "url password", 0),),
)
_SLACK_WEBHOOK = (
    "/",
    r"hooks\.slack\.com/(?:services|workflows|triggers)/(?P<webhook>[A-Za-z0-9/_-]+)",
    (("webhook", "slack webhook", 0),),
)
_TEXT_RULES: Final = (
    _DASH,
    _UNDERSCORE,
    _CAPITAL_A,
    _JWT,
    _BEARER,
    _URL_PASSWORD,
    _SLACK_WEBHOOK,
)

# `name=value` in text: the name is found from the separator backwards. A lookbehind per
# ending would cost ~1 µs at every `=` and `:` of a log line, so the scan runs forwards over
# the text lowercased and reversed: the separator is the regex's literal prefix, the endings
# (reversed, as a trie) follow it. A prefilter: the key rules decide on the whole name.
_ASSIGNMENT_INFIX: Final = {"=": "(?: )?", ":": "[\"']?"}

# A value after `name=` or `name:`: quoted (the inside is the secret), or unquoted up to a
# delimiter (not `==`, not an opening bracket: `password == x` and `secret: {` are code).
_ASSIGNED_VALUE = re.compile(
    r"[ \t]*(?:\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|(?![\[{(=])[^\s\"',;&)}\]]+)"
)
_KEY_CHARS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_NOTHING: Final = frozenset(
    {"null", "None", "none", "NULL", "nil", "true", "false", "True", "False", "undefined"}
)
_LINE_PREFIX_CHARS: Final = " \t>*#-<|"
_ASCII_LOWER: Final = {code: code + 32 for code in range(ord("A"), ord("Z") + 1)}


def _trie(words: Iterable[str]) -> str:
    """A regex matching any of `words`, as a trie: the engine tries a few branches, not all."""
    by_first: dict[str, list[str]] = {}
    for word in words:
        by_first.setdefault(word[0], []).append(word[1:])
    branches = []
    for first, rests in sorted(by_first.items()):
        longer = [rest for rest in rests if rest]
        if not longer:
            branches.append(re.escape(first))
        else:
            optional = "?" if len(longer) < len(rests) else ""
            branches.append(f"{re.escape(first)}(?:{_trie(set(longer))}){optional}")
    return "|".join(branches)


@dataclass(frozen=True)
class ScrubMatch:
    """One thing scrubbing is about to replace, as `ScrubOptions.callback` sees it."""

    #: where: the record's field, then the keys and list indexes down to the value
    path: tuple[object, ...]
    #: the secret-looking key (or the name of `name=value` in text); for a secret found by a
    #: text rule, the nearest key above the string (at least the record's field)
    key: str | None
    rule: str
    #: the value under the key, or the matching part of the text
    value: object


@dataclass(frozen=True)
class ScrubOptions:
    """What `configure(scrub=...)` takes besides True and False (or a dict of these fields)."""

    #: more key rules: regular expressions searched (ignoring case) in normalized key names;
    #: a list (each is its own rule name) or a dict of rule name to expression
    extra_patterns: Sequence[str] | Mapping[str, str] = ()
    #: keys whose values are kept as they are, nested content included (normalized names)
    allow_keys: Sequence[str] = ()
    #: sees each match; returning True keeps the value
    callback: Callable[[ScrubMatch], bool] | None = None
    #: more text rules: regular expressions searched in every string (a group named `secret`,
    #: if present, is the part replaced); a list or a dict of rule name to expression
    extra_value_patterns: Sequence[str] | Mapping[str, str] = ()


@dataclass(frozen=True)
class ScrubResult:
    """A scrubbed record and what was done to it."""

    record: dict[str, Any]
    #: values and substrings replaced, by rule
    counts: Mapping[str, int]
    #: matches the callback kept
    kept: int = 0
    #: fields left out because scrubbing them or the redact hook failed
    dropped: tuple[str, ...] = ()


RedactHook = Callable[[dict[str, Any]], dict[str, Any]]

# A position in the record, built as the walk goes down (a linked list: cheap to extend, made
# a tuple only when a callback needs it): (parent, key or index), None at the record.
_Path = Union[tuple[Any, object], None]  # noqa: UP007 (a runtime alias)
# A span of text to replace: (start, end, rule, key)
_Span = tuple[int, int, str, Union[str, None]]  # noqa: UP007


class _Keep:
    """The decision for an allow-listed key: its value is kept whole."""


_KEEP: Final = _Keep()
_Decision = Union[str, _Keep, None]  # noqa: UP007 (a rule name, keep, or an ordinary key)
_NOT_JSON: Final = object()
_DROPPED: Final = object()  # a field that could not be scrubbed
_DECISIONS_KEPT: Final = 4096  # distinct keys remembered per scrubber
# Strings found clean are remembered (prompts, roles and model names come in log after log):
# at most this many, of at most this length (2 M characters at most).
_CLEAN_KEPT: Final = 4096
_CLEAN_CHARS: Final = 512


class _Scanner:
    """Text rules sharing a trigger: a substring the text must contain for the regex to run."""

    __slots__ = ("branches", "regex", "trigger")

    def __init__(self, trigger: str, regex: re.Pattern[str], branches: dict[str, _Branch]):
        self.trigger = trigger
        self.regex = regex
        self.branches = branches

    def find(self, text: str, spans: list[_Span]) -> None:
        for match in self.regex.finditer(text):
            group = match.lastgroup or ""
            _, rule, back = self.branches[group]
            start, end = match.span(group or 0)
            spans.append((start - back, end, rule, None))


class _UserScanner(_Scanner):
    """An `extra_value_patterns` rule: the whole match, or its group `secret`."""

    __slots__ = ()

    def find(self, text: str, spans: list[_Span]) -> None:
        rule = self.branches[""][1]
        secret = "secret" if "secret" in self.regex.groupindex else 0
        for match in self.regex.finditer(text):
            start, end = match.span(secret)
            if end > start:
                spans.append((start, end, rule, None))


class _Assignments:
    """`name=value`, `"name": "value"` and header lines `Name: value` with a secret name."""

    __slots__ = ("reversed_regexes",)

    def __init__(self, endings: Iterable[str]) -> None:
        trie = _trie({ending.lower()[::-1] for ending in endings})
        self.reversed_regexes = tuple(
            (separator, re.compile(f"{re.escape(separator)}{infix}(?:{trie})"))
            for separator, infix in _ASSIGNMENT_INFIX.items()
        )

    def find(self, text: str, spans: list[_Span], scrubber: Scrubber) -> None:
        backwards: str | None = None
        for separator, regex in self.reversed_regexes:
            if separator not in text:
                continue
            if backwards is None:
                backwards = _lowered(text)[::-1]
            last = len(text) - 1
            for match in regex.finditer(backwards):
                span = _assigned(text, last - match.start(), separator, scrubber)
                if span is not None:
                    spans.append(span)


def _lowered(text: str) -> str:
    """`text` in lower case, each character where it was (some lowercase to two characters)."""
    lowered = text.lower()
    return lowered if len(lowered) == len(text) else text.translate(_ASCII_LOWER)


def _assigned(text: str, separator_at: int, separator: str, scrubber: Scrubber) -> _Span | None:
    """The value's span if the name before `separator_at` is a secret-looking key."""
    key_end = separator_at
    while key_end > 0 and text[key_end - 1] in " \t":
        key_end -= 1
    quote = text[key_end - 1] if key_end > 0 and text[key_end - 1] in "\"'" else ""
    key_end -= len(quote)
    key_start = key_end
    while key_start > max(0, key_end - 128) and text[key_start - 1] in _KEY_CHARS:
        key_start -= 1
    if key_start == key_end or (quote and text[key_start - 1 : key_start] != quote):
        return None
    key = text[key_start:key_end]
    rule = scrubber._decision(key)
    if not isinstance(rule, str):
        return None
    value = _ASSIGNED_VALUE.match(text, separator_at + 1)
    if value is None:
        return None
    start, end = value.span()
    while text[start] in " \t":
        start += 1
    if text[start] in "\"'":
        start, end = start + 1, end - 1
    elif text[start:end] in _NOTHING:
        return None
    elif separator == ":" and not quote:
        if not _starts_line(text, key_start):
            return None  # `word: value` in a sentence is prose, not a header
        end = _line_end(text, start)
    if end <= start or text.startswith(SCRUBBED_PREFIX, start):
        return None
    return (start, end, rule, key)


def _starts_line(text: str, position: int) -> bool:
    line_start = text.rfind("\n", 0, position) + 1
    return not text[line_start:position].strip(_LINE_PREFIX_CHARS)


def _line_end(text: str, start: int) -> int:
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    while end > start and text[end - 1] in " \t\r":
        end -= 1
    return end


def _builtin_scanners() -> list[_Scanner]:
    scanners: list[_Scanner] = []
    for trigger, pattern, branches in _TEXT_RULES:
        table = {group: (group, rule, back) for group, rule, back in branches}
        scanners.append(_Scanner(trigger, re.compile(pattern), table))
    return scanners


_ORDINARY: Final[tuple[None, bool]] = (None, False)
# What a header name looks like (RFC 9110 token characters, mostly): the name of a pair
_NAME_LIKE: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_NONE_TYPE: Final = type(None)


def _is_scalar(kind: type) -> bool:
    # identity, not a set lookup: hashing a type runs its metaclass's __hash__
    return kind is int or kind is float or kind is bool or kind is _NONE_TYPE


class Scrubber:
    """Scrubs log records. Built once from settings; immutable; safe to share across threads.

    `Scrubber()` applies the documented rules; `Scrubber(ScrubOptions(...))` adds to them.
    Wrong options raise TypeError or ValueError here, never later.
    """

    __slots__ = (
        "_allow",
        "_assignments",
        "_callback",
        "_clean",
        "_decisions",
        "_key_rules",
        "_min_chars",
        "_scanners",
        "options",
    )

    def __init__(self, options: ScrubOptions | None = None) -> None:
        options = ScrubOptions() if options is None else options
        if not isinstance(options, ScrubOptions):
            raise TypeError(f"Scrubber takes ScrubOptions, not {type(options).__name__}")
        builtin = [(rule, re.compile(pattern), True) for rule, pattern in KEY_RULES]
        extra_keys = _compiled_rules(options.extra_patterns, "extra_patterns", re.IGNORECASE)
        extra_values = _compiled_rules(options.extra_value_patterns, "extra_value_patterns", 0)
        self._key_rules = (*builtin, *((rule, rx, False) for rule, rx in extra_keys))
        self._allow = frozenset(normalize_key(key) for key in _strings(options.allow_keys))
        if options.callback is not None and not callable(options.callback):
            raise TypeError("callback must be a function (match) -> bool, or None")
        self._callback = options.callback
        self._scanners = _builtin_scanners()
        for rule, regex in extra_values:
            self._scanners.append(_UserScanner("", regex, {"": ("", rule, 0)}))
        self._assignments = _Assignments((*_KEY_ENDINGS, *_plain_words(extra_keys)))
        # the shortest text a rule finds: `jwt=x`; a user's rule may find less
        self._min_chars = 1 if extra_keys or extra_values else 5
        self._decisions: dict[str, tuple[_Decision, bool]] = {}
        self._clean: dict[str, None] = {}  # short strings with nothing in them
        self.options = options

    # --- the record ----------------------------------------------------------------------

    def scrub(self, record: Mapping[str, Any]) -> ScrubResult:
        """The record with its secrets replaced, and what was replaced. Never raises."""
        try:
            return self._scrub_record(record)
        except Exception as exc:
            internal_error("scrub", exc)
            return _without_content(record, {}, 0)

    def _scrub_record(self, record: Mapping[str, Any]) -> ScrubResult:
        if not isinstance(record, dict):
            raise TypeError(f"a record is a dict, not {type(record).__name__}")
        run = _Run(self._callback)
        out: dict[str, Any] | None = None
        dropped: list[str] = []
        for name, value in dict.items(record):
            if name in IDENTITY_FIELDS:
                continue
            if self._allow and type(name) is str and self._decision(name) is _KEEP:
                continue  # a field the user keeps as it is (`allow_keys=["stdout"]`)
            try:
                new = self._value(value, (None, name), run, 0)
            except Exception as exc:  # left out rather than sent unscrubbed
                internal_error("scrub-field", exc)
                dropped.append(name)
                new = _DROPPED
            if new is not value:
                if out is None:
                    out = dict(dict.items(record))
                if new is _DROPPED:
                    del out[name]
                else:
                    out[name] = new
        return ScrubResult(record if out is None else out, run.counts, run.kept, tuple(dropped))

    # --- values --------------------------------------------------------------------------

    def _value(self, value: object, path: _Path, run: _Run, depth: int) -> object:
        kind = type(value)
        if kind is str:
            return self._text(value, path, run, depth)  # type: ignore[arg-type]
        if kind is dict:
            return self._mapping(value, path, run, depth)  # type: ignore[arg-type]
        if kind is list:
            return self._sequence(value, value, path, run, depth)  # type: ignore[arg-type]
        if kind is int or kind is float or kind is bool or value is None:
            return value
        return self._other(value, path, run, depth)

    def _other(self, value: object, path: _Path, run: _Run, depth: int) -> object:
        """Subclasses of str, dict and list, and tuples, read without calling their methods;
        anything else (not JSON) is left as it is."""
        kind = type(value)  # not isinstance: that may ask the object (a proxy) its __class__
        if issubclass(kind, str):
            text = str.__str__(cast(str, value))
            new = self._text(text, path, run, depth)
            return value if new is text else new
        if issubclass(kind, dict):
            return self._mapping(cast("dict[Any, Any]", value), path, run, depth)
        if issubclass(kind, list):
            items = list(list.__iter__(cast("list[Any]", value)))
            return self._sequence(value, items, path, run, depth)
        if issubclass(kind, tuple):
            items = list(tuple.__iter__(cast("tuple[Any, ...]", value)))
            return self._sequence(value, items, path, run, depth)
        return value

    def _mapping(self, value: dict[Any, Any], path: _Path, run: _Run, depth: int) -> object:
        if depth >= MAX_DEPTH:
            return run.too_deep()
        decisions = self._decisions
        min_chars = self._min_chars
        pair_rule = self._pair_rule(value) if dict.__contains__(value, "value") else None
        changes: list[tuple[object, object, object]] | None = None
        renamed = False
        for key, item in dict.items(value):
            info = decisions.get(key) if type(key) is str else None
            if info is _ORDINARY and pair_rule is None:
                # the common case, inlined: an ordinary key seen before
                kind = type(item)
                if kind is str:
                    if len(item) < min_chars:
                        continue
                    new = self._text(item, (path, key), run, depth + 1)
                elif kind is dict:
                    new = self._mapping(item, (path, key), run, depth + 1)
                elif kind is list:
                    new = self._sequence(item, item, (path, key), run, depth + 1)
                elif _is_scalar(kind):
                    continue
                else:
                    new = self._other(item, (path, key), run, depth + 1)
                new_key: object = key
            else:
                new_key, new = self._entry(key, item, pair_rule, path, run, depth)
                renamed = renamed or new_key is not key
            if new is not item or new_key is not key:
                if changes is None:
                    changes = []
                changes.append((key, new_key, new))
        if changes is None:
            return value
        if renamed:
            return _renamed(value, changes)
        out = dict(dict.items(value))
        for key, _, new in changes:
            out[key] = new
        return out

    def _entry(
        self, key: object, item: object, pair_rule: str | None, path: _Path, run: _Run, depth: int
    ) -> tuple[object, object]:
        """(key, value) of one entry of a mapping, scrubbed: a key met for the first time, a
        secret-looking or allow-listed one, one with a secret in it, a key that is not a str,
        the value of a header entry."""
        here = (path, key)
        if type(key) is str or issubclass(type(key), str):
            name = key if type(key) is str else str.__str__(cast(str, key))
            decision, secret_inside = self._key_info(name)
        else:  # a number, None, a tuple...: no name to judge by
            return key, self._value(item, here, run, depth + 1)
        if pair_rule is not None and name == "value" and decision is not _KEEP:
            decision = pair_rule
        if decision is None:
            new = self._value(item, here, run, depth + 1)
        elif isinstance(decision, str):
            new = self._secret(item, here, decision, name, run)
        else:
            new = item  # allow-listed: kept whole
        if not secret_inside:
            return key, new
        new_name = self._text_only(name, here, run)
        return (key if new_name is name else new_name), new

    def _sequence(
        self, value: object, items: list[Any], path: _Path, run: _Run, depth: int
    ) -> object:
        """A list or tuple (`value`) given as its items."""
        if depth >= MAX_DEPTH:
            return run.too_deep()
        out: list[object] | None = None
        min_chars = self._min_chars
        for index, item in enumerate(items):
            kind = type(item)
            if kind is str:
                if len(item) < min_chars:
                    continue
                new = self._text(item, (path, index), run, depth + 1)
            elif _is_scalar(kind):
                continue
            elif (kind is list or kind is tuple) and len(item) == 2 and type(item[0]) is str:
                new = self._pair(item, (path, index), run, depth + 1)
            else:
                new = self._value(item, (path, index), run, depth + 1)
            if new is not item:
                if out is None:
                    out = list(items)
                out[index] = new
        if out is None:
            return value
        return tuple(out) if issubclass(type(value), tuple) else out

    def _pair(
        self, item: list[Any] | tuple[Any, ...], path: _Path, run: _Run, depth: int
    ) -> object:
        """`[name, value]` in a list (headers as pairs): the value is scrubbed by the name."""
        name: str = item[0]
        decision = self._decision(name) if _NAME_LIKE.fullmatch(name) else None
        if not isinstance(decision, str):
            return self._value(item, path, run, depth)
        if depth >= MAX_DEPTH:
            return run.too_deep()
        new_name = self._text_only(name, (path, 0), run)  # `api_key_sk-...`: a name, and more
        new = self._secret(item[1], (path, 1), decision, name, run)
        if new is item[1] and new_name is name:
            return item
        return [new_name, new] if type(item) is list else (new_name, new)

    def _pair_rule(self, value: dict[Any, Any]) -> str | None:
        """`{"name": "Authorization", "value": ...}` (HAR headers): the rule of the name."""
        if dict.__len__(value) > 3:
            return None
        for name_field in ("name", "key"):
            name = dict.get(value, name_field)
            if type(name) is str:
                decision = self._decision(name) if _NAME_LIKE.fullmatch(name) else None
                return decision if isinstance(decision, str) else None
        return None

    def _secret(self, value: object, path: _Path, rule: str, key: str, run: _Run) -> object:
        """The value under a secret-looking key: the marker, unless there is nothing in it."""
        kind = type(value)
        if value is None or kind is bool:
            return value
        if (kind is str or kind is dict or kind is list) and not value:
            return value
        if kind is str and value.startswith(SCRUBBED_PREFIX):  # type: ignore[attr-defined]
            return value  # scrubbed already
        if run.keeps(path, key, rule, value):
            return value
        return run.scrubbed(rule)

    # --- text ----------------------------------------------------------------------------

    def _text(self, text: str, path: _Path, run: _Run, depth: int) -> object:
        length = len(text)
        if length < self._min_chars or (length <= _CLEAN_CHARS and text in self._clean):
            return text
        first = text[0]
        if (first == "{" or first == "[") and (text[-1] == "}" or text[-1] == "]"):
            # parsed and walked: cheaper than the text rules on it, and it sees the structure
            parsed = _json_container(text)
            if parsed is not _NOT_JSON:
                new = self._value(parsed, path, run, depth)
                return text if new is parsed else _json_text(new)
        elif first == "d" and text.startswith("data:") and ";base64," in text[:256]:
            return text  # an image or file: base64, nothing to read
        return self._text_only(text, path, run)

    def _text_only(self, text: str, path: _Path, run: _Run) -> str:
        spans = self._spans(text)
        if not spans:
            if len(text) <= _CLEAN_CHARS:
                if len(self._clean) >= _CLEAN_KEPT:
                    self._clean.clear()
                self._clean[text] = None
            return text
        if run.callback is not None:
            owner = _owning_key(path)
            spans = [
                span
                for span in spans
                if not run.keeps(path, span[3] or owner, span[2], text[span[0] : span[1]])
            ]
        return _replaced(text, spans, run) if spans else text

    def _spans(self, text: str) -> list[_Span]:
        spans: list[_Span] = []
        for scanner in self._scanners:
            if scanner.trigger in text:
                scanner.find(text, spans)
        self._assignments.find(text, spans, self)
        return spans

    # --- key decisions -------------------------------------------------------------------

    def _decision(self, key: str) -> _Decision:
        return (self._decisions.get(key) or self._key_info(key))[0]

    def _key_info(self, key: str) -> tuple[_Decision, bool]:
        """What the key is (a rule name, keep, or ordinary) and whether text rules match in
        it (a secret used as a key). Remembered: the same keys come again and again."""
        info = self._decisions.get(key)
        if info is None:
            secret_inside = len(key) >= self._min_chars and bool(self._spans(key))
            decision = self._decide(key)
            # the one _ORDINARY tuple for ordinary keys: _mapping's fast path tests identity
            info = (
                _ORDINARY if decision is None and not secret_inside else (decision, secret_inside)
            )
            if len(self._decisions) >= _DECISIONS_KEPT:
                self._decisions.clear()
            self._decisions[key] = info
        return info

    def _decide(self, key: str) -> _Decision:
        # as written, and with camelCase split (`apiKey`, `basicAuth`); not split, a header
        # name in any case (`AuThOrIzAtIoN`) is still itself
        names = [normalize_key(key.lower())]
        split = normalize_key(key)
        if split != names[0]:
            names.append(split)
        if self._allow.intersection(names):
            return _KEEP
        descriptors = [name.rsplit("_", 1)[-1] in DESCRIPTOR_WORDS for name in names]
        for rule, regex, builtin in self._key_rules:
            for name, descriptor in zip(names, descriptors, strict=True):
                if (not builtin or not descriptor) and regex.search(name):
                    return rule
        return None


class _Run:
    """The state of scrubbing one record: counts, and the callback's decisions."""

    __slots__ = ("callback", "counts", "kept")

    def __init__(self, callback: Callable[[ScrubMatch], bool] | None) -> None:
        self.callback = callback
        self.counts: dict[str, int] = {}
        self.kept = 0

    def scrubbed(self, rule: str) -> str:
        self.counts[rule] = self.counts.get(rule, 0) + 1
        return scrubbed(rule)

    def too_deep(self) -> str:
        return self.scrubbed("depth limit")

    def keeps(self, path: _Path, key: str | None, rule: str, value: object) -> bool:
        """True if the user's callback keeps this match. A callback that raises keeps nothing."""
        if self.callback is None:
            return False
        try:
            keep = bool(self.callback(ScrubMatch(_flattened(path), key, rule, value)))
        except Exception as exc:
            _warn_once(
                "scrub-callback",
                "flowtrace: the scrub callback raised %s; the value was scrubbed "
                "(further failures are not logged)",
                type(exc).__name__,
            )
            return False
        if keep:
            self.kept += 1
        return keep


def _replaced(text: str, spans: list[_Span], run: _Run) -> str:
    """`text` with each span replaced by its marker (overlapping spans merged into the first)."""
    spans.sort(key=lambda span: (span[0], -span[1]))
    pieces: list[str] = []
    position = 0
    merged: list[list[Any]] = []
    for start, end, rule, _ in spans:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, rule])
    for start, end, rule in merged:
        pieces.append(text[position:start])
        pieces.append(run.scrubbed(rule))
        position = end
    pieces.append(text[position:])
    return "".join(pieces)


def _renamed(value: dict[Any, Any], changes: list[tuple[object, object, object]]) -> dict[Any, Any]:
    """`value` rebuilt in order with some keys replaced (a secret used as a key)."""
    by_key = {id(key): (new_key, new) for key, new_key, new in changes}
    out: dict[Any, Any] = {}
    for key, item in dict.items(value):
        new_key, new = by_key.get(id(key), (key, item))
        while new_key in out:  # two secrets scrubbed to the same text
            new_key = f"{new_key} "
        out[new_key] = new
    return out


def _owning_key(path: _Path) -> str | None:
    while path is not None:
        path, key = path
        if isinstance(key, str):
            return key
    return None


def _flattened(path: _Path) -> tuple[object, ...]:
    keys: list[object] = []
    while path is not None:
        path, key = path
        keys.append(key)
    keys.reverse()
    return tuple(keys)


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


#: One decoder for every string (`json.loads` with an option builds a new one per call).
_JSON_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)


def _json_container(text: str) -> object:
    """The object or array `text` holds as JSON, else _NOT_JSON."""
    try:
        value = _JSON_DECODER.decode(text)
    except (ValueError, RecursionError):
        return _NOT_JSON
    return value if type(value) is dict or type(value) is list else _NOT_JSON


def _json_text(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --- options ---------------------------------------------------------------------------------


def _strings(value: object, name: str = "allow_keys") -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list of strings, not {type(value).__name__}")
    items = list(value)
    wrong = [item for item in items if not isinstance(item, str)]
    if wrong:
        raise TypeError(f"{name} must hold strings only; got {type(wrong[0]).__name__}")
    return items


def _compiled_rules(value: object, name: str, flags: int) -> list[tuple[str, re.Pattern[str]]]:
    """A list of expressions (each its own rule name) or a dict of rule name to expression."""
    if isinstance(value, Mapping):
        named = list(value.items())
        if any(not isinstance(rule, str) or not rule for rule, _ in named):
            raise TypeError(f"{name}: rule names must be non-empty strings")
        wrong = [p for _, p in named if not isinstance(p, str)]
        if wrong:
            raise TypeError(f"{name}: expressions must be strings; got {type(wrong[0]).__name__}")
    else:
        named = [(pattern, pattern) for pattern in _strings(value, name)]
    compiled = []
    for rule, pattern in named:
        try:
            regex = re.compile(pattern, flags)
        except re.error as exc:
            raise ValueError(f"{name}: {pattern!r} is not a regular expression: {exc}") from None
        if regex.search("") is not None:
            raise ValueError(f"{name}: {pattern!r} matches the empty string (so: everything)")
        compiled.append((rule, regex))
    return compiled


_PLAIN_ALTERNATIVES = re.compile(r"[A-Za-z0-9_]+(?:\|[A-Za-z0-9_]+)*")


def _plain_words(rules: list[tuple[str, re.Pattern[str]]]) -> list[str]:
    """The endings of extra key rules made of plain words (`ssn|social_security`): what the
    text scanner looks for before `=` or `:` (a rule that is an expression is not found there)."""
    endings = []
    for _, regex in rules:
        if _PLAIN_ALTERNATIVES.fullmatch(regex.pattern):
            for word in regex.pattern.split("|"):
                last = word.rstrip("_").rsplit("_", 1)[-1]
                endings.append(last[-9:] if last else word[-9:])
    return endings


_OPTION_NAMES: Final = tuple(f.name for f in fields(ScrubOptions))
_default_scrubber: Scrubber | None = None


def scrubber_from_setting(value: object) -> Scrubber | None:
    """The scrubber for `configure(scrub=value)`: True (the default rules), False (None: no
    scrubbing), a `ScrubOptions`, a dict of its fields, or a `Scrubber`.

    Raises TypeError for a value of another kind or an unknown option, ValueError for an
    expression that does not compile or matches the empty string.
    """
    global _default_scrubber
    if value is True:
        if _default_scrubber is None:
            _default_scrubber = Scrubber()
        return _default_scrubber
    if value is False:
        return None
    if isinstance(value, Scrubber):
        return value
    if isinstance(value, ScrubOptions):
        return Scrubber(value)
    if isinstance(value, Mapping):
        unknown = sorted(str(key) for key in value if key not in _OPTION_NAMES)
        if unknown:
            raise TypeError(
                f"scrub options: unknown {', '.join(unknown)} (known: {', '.join(_OPTION_NAMES)})"
            )
        return Scrubber(ScrubOptions(**value))
    raise TypeError(
        "scrub must be True, False, a ScrubOptions or a dict of its fields "
        f"({', '.join(_OPTION_NAMES)}), not {type(value).__name__}"
    )


def redact_from_setting(value: object) -> RedactHook | None:
    """The hook for `configure(redact=value)`: a function record -> record, or None."""
    if value is None:
        return None
    if not callable(value):
        raise TypeError(f"redact must be a function (record) -> record, not {type(value).__name__}")
    return value


# --- scrub, then redact ----------------------------------------------------------------------

#: The fields a redact hook may return (the others are restored from the record).
_CONTENT_FIELDS: Final = (frozenset(LOG_FIELDS) | {"flow"}) - IDENTITY_FIELDS
_TEXT_FIELDS: Final = frozenset({"output", "stdout", "error", "user", "environment", "source"})
_OBJECT_FIELDS: Final = frozenset({"inputs", "metadata", "provider_request", "provider_response"})


def sanitize(
    record: dict[str, Any], scrubber: Scrubber | None, redact: RedactHook | None
) -> ScrubResult:
    """What leaves the process for `record`: scrubbed (unless `scrubber` is None), then given
    to the user's `redact` hook. Never raises; a failing hook costs the record its payloads
    (warned about once), never their privacy."""
    result = scrubber.scrub(record) if scrubber is not None else ScrubResult(record, {})
    return result if redact is None else _redacted(result, redact)


def _redacted(result: ScrubResult, redact: RedactHook) -> ScrubResult:
    record = result.record
    try:
        given = _private_copy(record)
    except Exception as exc:
        internal_error("redact-copy", exc)
        return _without_content(record, result.counts, result.kept)
    try:
        returned = redact(given)
    except Exception as exc:
        _warn_once(
            "redact-raised",
            "flowtrace: the redact hook raised %s; logs it fails on are sent without their "
            "payloads (further failures are not logged)",
            type(exc).__name__,
        )
        return _without_content(record, result.counts, result.kept)
    if not isinstance(returned, dict):
        _warn_once(
            "redact-type",
            "flowtrace: the redact hook returned %s, not the record (a dict); logs it fails "
            "on are sent without their payloads (further failures are not logged)",
            type(returned).__name__,
        )
        return _without_content(record, result.counts, result.kept)
    try:
        final = _reshaped(returned, record)
    except Exception as exc:
        internal_error("redact-result", exc)
        return _without_content(record, result.counts, result.kept)
    return ScrubResult(final, result.counts, result.kept, result.dropped)


def _private_copy(record: dict[str, Any]) -> dict[str, Any]:
    """A deep copy the hook may change (the scrubbed record shares containers with the input)."""
    try:
        copy: dict[str, Any] = marshal.loads(marshal.dumps(record))
        return copy
    except (ValueError, TypeError):  # not plain data: the careful copy
        safe = snapshot(record, limits())
        return safe if isinstance(safe, dict) else {}


def _reshaped(returned: dict[Any, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """What the hook returned, as a record: identity fields from `record`, content fields made
    JSON-safe and of the contract's type, unknown fields left out (warned about once)."""
    out = {name: value for name, value in record.items() if name in IDENTITY_FIELDS}
    unknown = []
    for name, value in dict.items(returned):
        if name in IDENTITY_FIELDS or value is None:
            continue
        if name not in _CONTENT_FIELDS:
            unknown.append(str(name))
            continue
        safe = snapshot(value, limits())
        if name in _TEXT_FIELDS and not isinstance(safe, str):
            safe = to_json(safe)
        elif name in _OBJECT_FIELDS and not isinstance(safe, dict):
            safe = {"value": safe}
        out[name] = safe
    if unknown:
        _warn_once(
            "redact-unknown",
            "flowtrace: the redact hook returned fields a log does not have (%s); they were "
            "left out (further cases are not logged)",
            ", ".join(sorted(unknown)),
        )
    return out


def _without_content(record: object, counts: Mapping[str, int], kept: int) -> ScrubResult:
    """The record with only its identity: what may be sent when its content cannot be made safe."""
    try:
        items = list(dict.items(record)) if isinstance(record, dict) else []
        identity = {name: value for name, value in items if name in IDENTITY_FIELDS}
        dropped = tuple(str(name) for name, _ in items if name not in IDENTITY_FIELDS)
    except Exception:  # nothing of it can be read safely
        identity, dropped = {}, ()
    return ScrubResult(identity, counts, kept, dropped)


_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(kind: str, message: str, *args: object) -> None:
    """A failure of the user's own hook or callback: one warning per kind per process."""
    with _warned_lock:
        if kind in _warned:
            return
        _warned.add(kind)
    logger.warning(message, *args)
