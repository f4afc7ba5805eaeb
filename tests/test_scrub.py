"""Scrubbing (issue 11, flowtrace._scrub): secrets never leave in a record, and what LLM users
need stays exactly as it was.

The record is a `POST /flows/log` body; the scrubber is pure, so these tests call it directly
(the delivery worker's wiring is tested where it lands). Properties run over random nested
structures with secrets injected at random places; tables pin the false-positive decisions;
independent detectors written here re-scan every result.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import string
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowtrace import _scrub
from flowtrace._contract import SCRUBBED_PREFIX, scrubbed
from flowtrace._scrub import (
    KEY_RULES,
    MAX_DEPTH,
    VALUE_RULES,
    Scrubber,
    ScrubMatch,
    ScrubOptions,
    normalize_key,
    redact_from_setting,
    sanitize,
    scrubber_from_setting,
)

SCRUBBER = Scrubber()
Errors = list[tuple[str, BaseException | None]]


def scrubbed_inputs(inputs: Any, scrubber: Scrubber = SCRUBBER) -> Any:
    return scrubber.scrub({"log_id": "L", "inputs": inputs}).record["inputs"]


def scrubbed_text(text: str, scrubber: Scrubber = SCRUBBER) -> str:
    result = scrubber.scrub({"stdout": text}).record["stdout"]
    assert isinstance(result, str)
    return result


def compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- independent detectors (written here, not imported): what must never survive ---------------

ORACLE_TEXT = re.compile(
    "|".join(
        [
            r"(?<![\w-])sk-(?!\[)[\w-]{20,}",
            r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
            r"(?<![\w-])eyJ[\w-]{2,}\.[\w-]{2,}\.",
            r"-----BEGIN[A-Z ]*PRIVATE KEY-----(?!\])",
            r"\bgh[pousr]_[A-Za-z0-9]{30,}",
            r"\bgithub_pat_\w{22,}",
            r"\bxox[a-z]-[\w-]{10,}",
            r"\bAIza[\w-]{35}",
            r"[Bb]earer\s+(?!\[scrubbed)[\w.~+/-]{8,}",
            r"://[^\s/:@\"'<>]*:(?!\[scrubbed)[^\s/@\"'<>]+@",
            r"hooks\.slack\.com/services/(?!\[scrubbed)\w",
            r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}",
            r"\bhf_[A-Za-z0-9]{30,}",
            r"(?i:\bpassword=)(?!\[scrubbed)",
        ]
    )
)
# every secret-looking key holds one of these words, whatever its spelling
KEY_WORDS = ("pass", "secret", "token", "jwt", "key", "cred", "auth", "bearer", "cookie", "srf")


def benign(text: str) -> bool:
    lowered = text.lower()
    return not any(word in lowered for word in KEY_WORDS) and not ORACLE_TEXT.search(text)


def strings_in(value: Any) -> Iterator[str]:
    """Every string of a structure, keys included (read without calling a subclass's methods)."""
    kind = type(value)
    if kind is str:
        yield value
    elif issubclass(kind, dict):
        for key, item in dict.items(value):
            if type(key) is str:
                yield key
            yield from strings_in(item)
    elif issubclass(kind, (list, tuple)):
        for item in list.__iter__(value) if issubclass(kind, list) else tuple.__iter__(value):
            yield from strings_in(item)


def assert_nothing_survives(record: dict[str, Any], secrets: list[str]) -> None:
    for text in strings_in(record):
        found = ORACLE_TEXT.search(text)
        assert found is None, f"{found.group()!r} survived in {text!r}"
    dumped = json.dumps(record, ensure_ascii=False)
    for secret in secrets:
        assert secret not in dumped, f"{secret!r} survived"
    again = SCRUBBER.scrub(record)  # the same detectors find nothing either
    assert again.counts == {} and again.record is record


# --- 1. keys ---------------------------------------------------------------------------------

SECRET_KEYS = [
    ("password", "password"),
    ("Password", "password"),
    ("PASSWORD", "password"),
    ("user_password", "password"),
    ("dbPassword", "password"),
    ("DB_PASSWORD", "password"),
    ("passwd", "password"),
    ("passphrase", "password"),
    ("password_hash", "password"),
    ("secret", "secret"),
    ("client_secret", "secret"),
    ("clientSecret", "secret"),
    ("secret_key", "secret"),
    ("AWS_SECRET_ACCESS_KEY", "secret"),
    ("webhook-secret", "secret"),
    ("access_token", "token"),
    ("accessToken", "token"),
    ("refresh_token", "token"),
    ("id_token", "token"),
    ("idToken", "token"),
    ("IDToken", "token"),
    ("session_token", "token"),
    ("sessionToken", "token"),
    ("bearer_token", "token"),
    ("auth_token", "token"),
    ("authToken", "token"),
    ("api_token", "token"),
    ("x-auth-token", "token"),
    ("X-Auth-Token", "token"),
    ("x-csrf-token", "token"),
    ("csrftoken", "token"),
    ("XSRF-TOKEN", "token"),
    ("github_token", "token"),
    ("GITHUB_TOKEN", "token"),
    ("hf_token", "token"),
    ("SLACK_BOT_TOKEN", "token"),
    ("x-amz-security-token", "token"),
    ("oauth_token", "token"),
    ("jwt", "token"),
    ("jwt_token", "token"),
    ("user_jwt", "token"),
    ("api_key", "api key"),
    ("apiKey", "api key"),
    ("APIKey", "api key"),
    ("api-key", "api key"),
    ("api key", "api key"),
    ("x-api-key", "api key"),
    ("X-API-KEY", "api key"),
    ("apikey", "api key"),
    ("OPENAI_API_KEY", "api key"),
    ("anthropic_api_key", "api key"),
    ("private_key", "private key"),
    ("privateKey", "private key"),
    ("signing_key", "private key"),
    ("ssh_key", "private key"),
    ("encryption_key", "private key"),
    ("access_key", "access key"),
    ("accessKey", "access key"),
    ("credentials", "credential"),
    ("credential", "credential"),
    ("aws_credentials", "credential"),
    ("creds", "credential"),
    ("db_creds", "credential"),
    ("auth", "auth"),
    ("Auth", "auth"),
    ("authorization", "auth"),
    ("Authorization", "auth"),
    ("AUTHORIZATION", "auth"),
    ("AuThOrIzAtIoN", "auth"),
    ("proxy-authorization", "auth"),
    ("Proxy-Authorization", "auth"),
    ("basic_auth", "auth"),
    ("x-auth", "auth"),
    ("authentication", "auth"),
    ("bearer", "auth"),
    ("cookie", "cookie"),
    ("Cookie", "cookie"),
    ("cookies", "cookie"),
    ("set-cookie", "cookie"),
    ("Set-Cookie", "cookie"),
    ("csrf", "csrf"),
    ("_csrf", "csrf"),
    ("xsrf", "csrf"),
    ("headers.Authorization", "auth"),
    ("http.request.header.authorization", "auth"),
]

KEPT_KEYS = [
    # token counts and tokenizer vocabulary
    "input_tokens",
    "output_tokens",
    "max_tokens",
    "maxTokens",
    "max_completion_tokens",
    "max_new_tokens",
    "completion_tokens",
    "prompt_tokens",
    "total_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "tokens",
    "token",
    "Token",
    "token_count",
    "num_tokens",
    "token_usage",
    "usage",
    "tokenizer",
    "token_type",
    "token_ids",
    "eos_token",
    "pad_token",
    "page_token",
    "nextPageToken",
    "time_to_first_token",
    # models and people
    "model",
    "model_name",
    "author",
    "Author",
    "authority",
    "authored_by",
    "authors",
    "co_author",
    "oauth_provider",
    "is_authenticated",
    # keys that are not secrets
    "key",
    "keys",
    "cache_key",
    "primary_key",
    "sort_key",
    "idempotency_key",
    "keyword",
    "keyboard",
    "monkey",
    # names, counts and descriptions of secrets
    "api_key_id",
    "api_key_name",
    "secret_name",
    "auth_type",
    "auth_method",
    "token_url",
    "authorization_url",
    "password_length",
    "access_key_id",
    "private_key_path",
    # words that merely start like one
    "session_id",
    "sessionId",
    "first_pass",
    "pass_rate",
    "passage",
    "passages",
    "secretary",
    "credit",
    "credits",
    "prompt",
    "system_prompt",
    "temperature",
    "api_version",
    "api_base",
    "base_url",
]


@pytest.mark.parametrize(("key", "rule"), SECRET_KEYS)
def test_values_under_secret_looking_keys_become_the_marker_of_their_rule(
    key: str, rule: str
) -> None:
    value = {"nested": {key: "v4lue-0f-the-s3cret"}, "list": [{key: 12345}]}
    result = SCRUBBER.scrub({"inputs": value})
    assert result.record["inputs"] == {
        "nested": {key: scrubbed(rule)},
        "list": [{key: scrubbed(rule)}],
    }
    assert result.counts == {rule: 2}


@pytest.mark.parametrize("key", KEPT_KEYS)
def test_keys_llm_users_need_are_kept_as_they_are(key: str) -> None:
    inputs = {key: "some value 123", "nested": [{key: 812}, {key: {"deeper": "text here"}}]}
    assert scrubbed_inputs(inputs) is inputs


def test_token_counts_model_names_and_usage_are_kept() -> None:
    response = {
        "id": "chatcmpl-abc123",
        "model": "gpt-4o-mini-2024-07-18",
        "usage": {
            "prompt_tokens": 19,
            "completion_tokens": 10,
            "total_tokens": 29,
            "prompt_tokens_details": {"cached_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
        "choices": [
            {
                "message": {"role": "assistant", "content": "Reset it from the login page."},
                "logprobs": {"content": [{"token": "Reset", "logprob": -0.01, "bytes": [82]}]},
            }
        ],
    }
    request = {"model": "claude-3-5-sonnet", "max_tokens": 1024, "temperature": 0.2}
    record = {"provider_response": response, "provider_request": request, "output": "ok then"}
    assert SCRUBBER.scrub(record).record is record


@pytest.mark.parametrize(
    "prompt",
    [
        "I forgot my password, how do I reset it?",
        "reset my password please",
        "Reset my password: it says the token expired",
        "Password reset: where is the link?",
        "What is an API key, and where do I keep my secret key?",
        "Explain bearer tokens and cookies to me.",
        "The author's authority on authentication is unquestioned.",
        "Password:",
        "Write a function check(password) that returns True if password == expected.",
    ],
)
def test_prompts_that_merely_mention_secrets_are_kept(prompt: str) -> None:
    record = {
        "inputs": {"prompt": prompt},
        "messages": [{"role": "user", "content": prompt}],
        "output_message": {"role": "assistant", "content": [{"type": "text", "text": prompt}]},
        "stdout": prompt,
    }
    assert SCRUBBER.scrub(record).record is record


def test_empty_none_and_boolean_values_under_secret_keys_are_kept() -> None:
    inputs = {"password": "", "api_key": None, "has_password": True, "cookies": {}, "auth": []}
    assert scrubbed_inputs(inputs) is inputs


def test_normalized_key_names() -> None:
    assert normalize_key("X-Api-Key") == "x_api_key"
    assert normalize_key("apiKey") == "api_key"
    assert normalize_key("APIKey") == "api_key"
    assert normalize_key("api key") == "api_key"
    assert normalize_key("OPENAI_API_KEY") == "openai_api_key"
    assert normalize_key("http.request.header.Authorization") == "http_request_header_authorization"
    assert normalize_key("__x--y__") == "x_y"


def test_header_mappings_pairs_and_name_value_entries() -> None:
    headers = {
        "Authorization": "Basic dXNlcjpwYXNz",
        "X-API-KEY": "k",
        "Cookie": "sid=1",
        "Accept": "text/html",
        "Content-Length": "12",
    }
    pairs = [["authorization", "Basic dXNlcjpwYXNz"], ("Set-Cookie", "sid=2"), ["Accept", "x/y"]]
    har = [
        {"name": "Proxy-Authorization", "value": "Basic abc"},
        {"name": "Accept", "value": "x/y"},
        {"key": "x-api-key", "value": "k", "comment": "from the env"},
    ]
    result = SCRUBBER.scrub({"provider_request": {"headers": headers, "pairs": pairs, "har": har}})
    request = result.record["provider_request"]
    assert request["headers"] == {
        "Authorization": scrubbed("auth"),
        "X-API-KEY": scrubbed("api key"),
        "Cookie": scrubbed("cookie"),
        "Accept": "text/html",
        "Content-Length": "12",
    }
    assert request["pairs"] == [
        ["authorization", scrubbed("auth")],
        ("Set-Cookie", scrubbed("cookie")),
        ["Accept", "x/y"],
    ]
    assert request["pairs"][2] is pairs[2]
    assert request["har"] == [
        {"name": "Proxy-Authorization", "value": scrubbed("auth")},
        {"name": "Accept", "value": "x/y"},
        {"key": "x-api-key", "value": scrubbed("api key"), "comment": "from the env"},
    ]
    assert result.counts == {"auth": 3, "api key": 2, "cookie": 2}


def test_a_secret_used_as_a_key_is_scrubbed_in_the_key() -> None:
    key = "sk-proj-" + "Ab3" * 10
    inputs = {"cache": {key: {"calls": 3}, "other": 1}}
    assert scrubbed_inputs(inputs) == {"cache": {scrubbed("openai key"): {"calls": 3}, "other": 1}}


# --- 2. text ---------------------------------------------------------------------------------

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0."
    "dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
)
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEA0Z3VS5JJcds3xfn/ygWyF8PbnGy0AHB7MhgHcTz6sE2I2yPB\n"
    "aFDrBz9vFqU4yOhBPU3K6y1VXfnAeU3yZ1GZxIhhDnqv6U8Jxj9Ic8tZ1Q==\n"
    "-----END RSA PRIVATE KEY-----"
)
TEXT_CASES = [
    ("use Bearer abc123def456ghi to call", "use Bearer [scrubbed: bearer token] to call"),
    ("bearer " + "x" * 24, "bearer [scrubbed: bearer token]"),
    ("key sk-proj-AbCdEf0123456789abcdefGHIJ done", "key [scrubbed: openai key] done"),
    ("sk-" + "a1" * 24, "[scrubbed: openai key]"),
    ("(sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123)", "([scrubbed: anthropic key])"),
    ("id AKIAIOSFODNN7EXAMPLE.", "id [scrubbed: aws access key id]."),
    ("ASIAY34FZKBOKMUTVV7A", "[scrubbed: aws access key id]"),
    ("k=AIzaSyDaGmWKa4JsXZ-HjGw7ISLn_3namBGewQe", "k=[scrubbed: google api key]"),
    (f"token {JWT} end", "token [scrubbed: jwt] end"),
    (f"the key:\n{PEM}\nthanks", "the key:\n[scrubbed: pem private key]\nthanks"),
    (PEM[:120], "[scrubbed: pem private key]"),  # cut short by a budget
    ("push ghp_" + "A1b2C3d4E5" * 4 + " now", "push [scrubbed: github token] now"),
    ("github_pat_11ABCDEFG0123456789_" + "abcdefghij" * 5, "[scrubbed: github token]"),
    ("xoxb-1234567890-abcdefghij", "[scrubbed: slack token]"),
    ("xapp-1-A0123456789-abcdef", "[scrubbed: slack token]"),
    (
        "post to https://hooks.slack.com/services/T0000/B0000/XXXXXXXXXXXX now",
        "post to https://hooks.slack.com/services/[scrubbed: slack webhook] now",
    ),
    ("sk_live_" + "4eC39HqLyjWDarjtT1zdp7dc", "[scrubbed: stripe key]"),
    ("rk_test_" + "a" * 24, "[scrubbed: stripe key]"),
    ("HF hf_" + "aBcDeFgHiJ" * 3 + "kLmN", "HF [scrubbed: hugging face token]"),
    (
        "postgres://app:s3cret@db.internal:5432/app",
        "postgres://app:[scrubbed: url password]@db.internal:5432/app",
    ),
    ("redis://:pw123@localhost:6379", "redis://:[scrubbed: url password]@localhost:6379"),
    # name=value in text
    ("password=hunter2", "password=[scrubbed: password]"),
    ("OPENAI_API_KEY=abc123 next", "OPENAI_API_KEY=[scrubbed: api key] next"),
    ("api_key = 'abc 123'", "api_key = '[scrubbed: api key]'"),
    (
        "{'api_key': 'abc', 'model': 'gpt-4o', 'token': 'x'}",
        "{'api_key': '[scrubbed: api key]', 'model': 'gpt-4o', 'token': 'x'}",
    ),
    ('got "client_secret": "a\\"b" back', 'got "client_secret": "[scrubbed: secret]" back'),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [scrubbed: auth]"),
    ("> X-Api-Key: abc123  \n< HTTP/1.1 200", "> X-Api-Key: [scrubbed: api key]  \n< HTTP/1.1 200"),
    ("GET /v1?api_key=abc123&q=cats", "GET /v1?api_key=[scrubbed: api key]&q=cats"),
    ("Server=db;Password=hunter2;Database=x", "Server=db;Password=[scrubbed: password];Database=x"),
    ("OpenAI(apiKey='k-1', timeout=3)", "OpenAI(apiKey='[scrubbed: api key]', timeout=3)"),
    ("set accessToken: 'tok'", "set accessToken: '[scrubbed: token]'"),
]
KEPT_TEXT = [
    "the bearer of bad news",
    "Bearer tokens are opaque strings",
    "uses bearer authentication.",
    "run task-abcdefghijklmnopqrstuvwxyz0123 now",
    "sk-learn is a library",
    "on disk-abcdefghijklmnopqrstuvwxyz0123",
    "AKIA1234",
    "mail bob@example.com",
    "https://example.com:8080/path@v2",
    "ssh://git@github.com/org/repo",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQ\n-----END PUBLIC KEY-----",
    "author=bob tokens=12 max_tokens=100 token=abc",
    "key: value",
    "token: abc123",
    "password == expected",
    "password=None api_key=null",
    "if secret: {",
    "gpt-4o-mini",
    "eyJhbGciOiJIUzI1NiJ9",
    "ghp_short",
    "https://github.com/org/repo",
    "Authorization header is required",
    "auth_type=basic",
    "the secret: love",
    "2026-01-01 12:00:00 INFO worker: step=3 status=ok",
    "data:image/png;base64," + "QUtJQUlPU0ZPRE5ON0VYQU1QTEU=" * 3,
]


@pytest.mark.parametrize(("text", "expected"), TEXT_CASES)
def test_secret_looking_text_is_replaced_where_it_appears(text: str, expected: str) -> None:
    assert scrubbed_text(text) == expected
    record = {"error": f"Error:\n{text}", "inputs": {"note": [text]}}
    result = SCRUBBER.scrub(record).record
    assert result == {"error": f"Error:\n{expected}", "inputs": {"note": [expected]}}


@pytest.mark.parametrize("text", KEPT_TEXT)
def test_text_that_only_resembles_a_secret_is_kept(text: str) -> None:
    assert scrubbed_text(text) is text


def test_every_documented_text_rule_is_exercised() -> None:
    rules = set()
    for text, _ in TEXT_CASES:
        rules |= set(SCRUBBER.scrub({"stdout": text}).counts)
    assert set(VALUE_RULES) <= rules
    assert {rule for rule, _ in KEY_RULES} == {rule for _, rule in SECRET_KEYS}


@given(st.text(max_size=4))
def test_no_rule_finds_anything_in_text_shorter_than_the_fast_path_skips(text: str) -> None:
    assert SCRUBBER._spans(text) == []


def test_the_shortest_findable_text_is_the_fast_paths_limit() -> None:
    assert len("jwt=x") == SCRUBBER._min_chars
    assert scrubbed_text("jwt=x") == "jwt=[scrubbed: token]"


def test_stdout_with_secrets_in_long_text() -> None:
    line = "2026-01-01 12:00:00 INFO worker: step={} status=ok tokens=812 model=gpt-4o-mini\n"
    lines = [line.format(i) for i in range(500)]
    lines[7] = "calling with Authorization: Bearer sk-proj-AbCdEf0123456789abcdefGHIJ\n"
    lines[300] = "env OPENAI_API_KEY=sk-abc123abc123abc123abc123 set\n"
    stdout = "".join(lines)
    result = SCRUBBER.scrub({"stdout": stdout})
    expected = list(lines)
    # not a header line (it does not start the line): the token, by what it is
    expected[7] = "calling with Authorization: Bearer [scrubbed: openai key]\n"
    expected[300] = "env OPENAI_API_KEY=[scrubbed: openai key] set\n"
    assert result.record["stdout"] == "".join(expected)
    assert result.counts == {"openai key": 2}


# --- 3. JSON text ----------------------------------------------------------------------------


def test_json_text_output_is_scrubbed_as_a_structure_and_stays_json() -> None:
    returned = {
        "answer": "done",
        "config": {"api_key": "abc", "credentials": {"user": "bob", "pin": 1234}},
        "usage": {"total_tokens": 12},
        "headers": [["Cookie", "sid=1"]],
    }
    result = SCRUBBER.scrub({"output": json.dumps(returned)})
    assert json.loads(result.record["output"]) == {
        "answer": "done",
        "config": {"api_key": scrubbed("api key"), "credentials": scrubbed("credential")},
        "usage": {"total_tokens": 12},
        "headers": [["Cookie", scrubbed("cookie")]],
    }
    assert result.counts == {"api key": 1, "credential": 1, "cookie": 1}


def test_json_text_without_secrets_is_kept_byte_for_byte() -> None:
    output = json.dumps({"usage": {"total_tokens": 12}, "keywords": ["a", "b"]}, indent=2)
    assert SCRUBBER.scrub({"output": output}).record["output"] is output


def test_json_text_with_a_secret_only_inside_a_string_stays_valid_json() -> None:
    output = compact({"answer": "use sk-proj-AbCdEf0123456789abcdefGHIJ now", "n": [1, 2.5]})
    result = SCRUBBER.scrub({"output": output}).record["output"]
    assert json.loads(result) == {"answer": "use [scrubbed: openai key] now", "n": [1, 2.5]}


def test_json_lines_in_stdout_get_the_text_rules_and_each_line_stays_json() -> None:
    rows = [
        {"step": 1, "password": "hunter2", "note": "called with Bearer abc123def456"},
        {"step": 2, "key": PEM, "url": "https://u:pw@h/x", "tokens": 12},
        {"step": 3, "headers": {"Authorization": "Basic dXNlcjpwYXNz"}, "token": JWT},
    ]
    stdout = "\n".join(json.dumps(row) for row in rows)
    lines = scrubbed_text(stdout).split("\n")
    assert [json.loads(line) for line in lines] == [
        {
            "step": 1,
            "password": scrubbed("password"),
            "note": "called with Bearer [scrubbed: bearer token]",
        },
        {
            "step": 2,
            "key": scrubbed("pem private key"),
            "url": "https://u:[scrubbed: url password]@h/x",
            "tokens": 12,
        },
        {"step": 3, "headers": {"Authorization": scrubbed("auth")}, "token": scrubbed("jwt")},
    ]


def test_tool_call_arguments_are_json_text_too() -> None:
    message = {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "login", "arguments": '{"user": "bob", "password": "pw"}'},
            }
        ],
    }
    result = SCRUBBER.scrub({"output_message": message}).record["output_message"]
    arguments = result["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"user": "bob", "password": scrubbed("password")}


def test_text_that_looks_like_json_but_is_not_gets_the_text_rules() -> None:
    text = "[password=hunter2, NaN]"
    assert scrubbed_text(text) == "[password=[scrubbed: password], NaN]"
    assert (
        scrubbed_text('{"a": NaN, "password": "x"}')
        == '{"a": NaN, "password": "[scrubbed: password]"}'
    )


# --- a real OpenAI-style request ---------------------------------------------------------------


def test_an_openai_style_provider_request_never_keeps_its_authorization_header() -> None:
    api_key = "sk-proj-" + "Zq9xW2" * 8
    captured: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(200, json={"id": "chatcmpl-1", "usage": {"total_tokens": 3}})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        client.post(
            "https://api.openai.com/v1/chat/completions",
            headers={"Authorization": f"Bearer {api_key}", "OpenAI-Organization": "org-1"},
            json={
                "model": "gpt-4o-mini",
                "max_tokens": 64,
                "messages": [{"role": "user", "content": "hi"}],
            },
        )
    (request,) = captured
    as_recorded = [
        {"headers": dict(request.headers)},  # httpx's mapping (names in lower case)
        {"headers": [[k.decode(), v.decode()] for k, v in request.headers.raw]},  # as sent
        {"headers": {"AUTHORIZATION": request.headers["authorization"]}},
    ]
    for provider_request in as_recorded:
        provider_request.update(
            method=request.method, url=str(request.url), json=json.loads(request.content)
        )
        result = SCRUBBER.scrub({"log_id": "L", "provider_request": provider_request})
        assert api_key not in json.dumps(result.record)
        assert result.counts == {"auth": 1}
        kept = result.record["provider_request"]
        assert kept["json"] == {
            "model": "gpt-4o-mini",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}],
        }
        assert kept["url"] == "https://api.openai.com/v1/chat/completions"


# --- the record ------------------------------------------------------------------------------


def test_identity_fields_are_never_touched() -> None:
    record = {
        "log_id": "password=hunter2",
        "path": "auth/login",
        "trace_parent_id": "Bearer abc123def456",
        "start_time": "2026-01-01T00:00:00.000000Z",
        "trace_status": "complete",
        "inputs": {"password": "x"},
    }
    result = SCRUBBER.scrub(record).record
    assert {k: v for k, v in result.items() if k != "inputs"} == {
        k: v for k, v in record.items() if k != "inputs"
    }
    assert result["inputs"] == {"password": scrubbed("password")}


def test_every_other_field_is_scrubbed_unknown_ones_included() -> None:
    secret = "Bearer abc123def456"
    record = {name: secret for name in ("error", "user", "environment", "source", "future")}
    record["flow"] = {"attributes": {"model": "gpt-4o", "api_key": "abc"}}
    result = SCRUBBER.scrub(record).record
    assert result["flow"] == {"attributes": {"model": "gpt-4o", "api_key": scrubbed("api key")}}
    assert all(
        result[name] == "Bearer [scrubbed: bearer token]" for name in record if name != "flow"
    )


def test_the_input_is_never_mutated_and_unchanged_parts_are_shared() -> None:
    untouched = {"messages": [{"role": "user", "content": "hello there"}] * 3}
    record = {"inputs": {"a": untouched, "b": {"api_key": "k1"}}, "metadata": {"n": [1, 2]}}
    before = copy.deepcopy(record)
    result = SCRUBBER.scrub(record).record
    assert record == before
    assert result["inputs"]["a"] is untouched
    assert result["metadata"] is record["metadata"]
    assert result["inputs"] is not record["inputs"]


def test_counts_by_rule() -> None:
    record = {
        "inputs": {"api_key": "a", "apiKey": "b", "user": {"password": "c"}},
        "provider_request": {"headers": {"Authorization": "Bearer xyz12345", "Cookie": "c"}},
        "stdout": f"token {JWT}\npassword=p1 and password=p2\n",
        "output": compact({"client_secret": "s", "data": [{"access_token": "t"}]}),
    }
    assert SCRUBBER.scrub(record).counts == {
        "api key": 2,
        "password": 3,
        "auth": 1,
        "cookie": 1,
        "jwt": 1,
        "secret": 1,
        "token": 1,
    }


def test_scrubbing_twice_changes_nothing_more() -> None:
    record = {"stdout": "x password=p1 Bearer abcdef123456 https://u:p@h", "inputs": {"auth": "a"}}
    once = SCRUBBER.scrub(record)
    twice = SCRUBBER.scrub(once.record)
    assert twice.record is once.record and twice.counts == {}


def test_scrub_false_means_no_scrubber_and_sanitize_passes_the_record_through() -> None:
    assert scrubber_from_setting(False) is None
    record = {"inputs": {"password": "x"}}
    result = sanitize(record, None, None)
    assert result.record is record and result.counts == {}


# --- options -----------------------------------------------------------------------------------


def test_allow_keys_keep_their_values_whole() -> None:
    scrubber = Scrubber(ScrubOptions(allow_keys=["csrf_token", "Debug-Headers"]))
    inputs = {
        "csrfToken": "abc",
        "debug_headers": {"Authorization": "Bearer abcdef123456"},
        "password": "x",
    }
    assert scrubbed_inputs(inputs, scrubber) == {
        "csrfToken": "abc",
        "debug_headers": {"Authorization": "Bearer abcdef123456"},
        "password": scrubbed("password"),
    }
    assert scrubbed_text("csrf_token=abc password=x", scrubber) == (
        "csrf_token=abc password=[scrubbed: password]"
    )


def test_allow_keys_apply_to_the_records_own_fields_and_to_header_entries() -> None:
    scrubber = Scrubber(ScrubOptions(allow_keys=["stdout", "value"]))
    record = {
        "stdout": "password=x",
        "error": "password=y",
        "inputs": {"har": [{"name": "Cookie", "value": "c"}], "other": {"value": "v"}},
    }
    result = scrubber.scrub(record).record
    assert result["stdout"] is record["stdout"]
    assert result["error"] == "password=[scrubbed: password]"
    assert result["inputs"] is record["inputs"]


def test_the_callback_sees_each_match_and_may_keep_it() -> None:
    seen: list[ScrubMatch] = []

    def callback(match: ScrubMatch) -> bool:
        seen.append(match)
        return match.key == "api_key" and match.path[:2] == ("inputs", "public")

    scrubber = Scrubber(ScrubOptions(callback=callback))
    record = {
        "inputs": {"public": {"api_key": "pk_123"}, "private": {"api_key": "sk_456"}},
        "stdout": "call with Bearer abc123def456",
        "metadata": {"note": ["see password=p1"]},
    }
    result = scrubber.scrub(record)
    assert result.record["inputs"] == {
        "public": {"api_key": "pk_123"},
        "private": {"api_key": scrubbed("api key")},
    }
    assert result.kept == 1
    assert result.counts == {"api key": 1, "bearer token": 1, "password": 1}
    assert seen == [
        ScrubMatch(("inputs", "public", "api_key"), "api_key", "api key", "pk_123"),
        ScrubMatch(("inputs", "private", "api_key"), "api_key", "api key", "sk_456"),
        ScrubMatch(("stdout",), "stdout", "bearer token", "abc123def456"),
        ScrubMatch(("metadata", "note", 0), "password", "password", "p1"),
    ]


def test_a_raising_callback_keeps_nothing_and_is_warned_about_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_scrub, "_warned", set())

    def callback(match: ScrubMatch) -> bool:
        raise RuntimeError(f"no: {match.value}")

    scrubber = Scrubber(ScrubOptions(callback=callback))
    with caplog.at_level(logging.WARNING, logger="flowtrace"):
        for _ in range(2):
            assert scrubbed_inputs({"password": "hunter2"}, scrubber) == {
                "password": scrubbed("password")
            }
    warnings = [r for r in caplog.records if r.name == "flowtrace"]
    assert len(warnings) == 1
    assert "callback raised RuntimeError" in warnings[0].getMessage()
    assert "hunter2" not in warnings[0].getMessage()  # the message never carries the value


def test_extra_key_and_value_patterns() -> None:
    scrubber = Scrubber(
        ScrubOptions(
            extra_patterns={"ssn": r"ssn|social_security"},
            extra_value_patterns=[r"acme_live_[a-z0-9]{8}", r"card (?P<secret>\d{4}-\d{4})"],
        )
    )
    inputs = {"SSN": "123", "socialSecurityNumber": "456", "note": "pay acme_live_abcd1234 now"}
    assert scrubbed_inputs(inputs, scrubber) == {
        "SSN": scrubbed("ssn"),
        "socialSecurityNumber": scrubbed("ssn"),
        "note": f"pay {scrubbed('acme_live_[a-z0-9]{8}')} now",
    }
    card_rule = r"card (?P<secret>\d{4}-\d{4})"
    assert scrubbed_text("card 1234-5678 and ssn=999", scrubber) == (
        f"card {scrubbed(card_rule)} and ssn=[scrubbed: ssn]"
    )


def test_an_extra_key_pattern_is_searched_even_where_a_builtin_rule_would_not_be() -> None:
    scrubber = Scrubber(ScrubOptions(extra_patterns=["token"]))
    assert scrubbed_inputs({"token": "t", "max_tokens": 5}, scrubber) == {
        "token": scrubbed("token"),
        "max_tokens": scrubbed("token"),
    }


def test_scrubber_from_setting_accepts_the_documented_shapes() -> None:
    default = scrubber_from_setting(True)
    assert isinstance(default, Scrubber) and scrubber_from_setting(True) is default
    options = ScrubOptions(allow_keys=["auth"])
    from_options = scrubber_from_setting(options)
    assert isinstance(from_options, Scrubber) and from_options.options is options
    from_dict = scrubber_from_setting({"allow_keys": ["auth"], "extra_patterns": ["pin"]})
    assert isinstance(from_dict, Scrubber)
    assert from_dict.options == ScrubOptions(allow_keys=["auth"], extra_patterns=["pin"])
    assert scrubber_from_setting(from_dict) is from_dict
    assert scrubbed_inputs({"auth": "a", "pin": 1}, from_dict) == {
        "auth": "a",
        "pin": scrubbed("pin"),
    }


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (None, TypeError, "scrub must be True, False, a ScrubOptions or a dict"),
        (1, TypeError, "not int"),
        ("false", TypeError, "not str"),
        (
            {"allowed_keys": []},
            TypeError,
            "unknown allowed_keys (known: extra_patterns, allow_keys",
        ),
        ({"extra_patterns": "password"}, TypeError, "extra_patterns must be a list of strings"),
        ({"extra_patterns": [3]}, TypeError, "extra_patterns must hold strings only; got int"),
        ({"extra_patterns": ["("]}, ValueError, "extra_patterns: '(' is not a regular expression"),
        ({"extra_patterns": ["x*"]}, ValueError, "matches the empty string"),
        ({"extra_patterns": {"": "x"}}, TypeError, "rule names must be non-empty strings"),
        ({"extra_value_patterns": {"r": 1}}, TypeError, "expressions must be strings; got int"),
        ({"extra_value_patterns": ["a|"]}, ValueError, "extra_value_patterns: 'a|' matches"),
        ({"allow_keys": "auth"}, TypeError, "allow_keys must be a list of strings, not str"),
        ({"allow_keys": [None]}, TypeError, "allow_keys must hold strings only; got NoneType"),
        ({"callback": "keep"}, TypeError, "callback must be a function (match) -> bool"),
    ],
)
def test_scrubber_from_setting_refuses_wrong_shapes_clearly(
    value: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        scrubber_from_setting(value)
    assert message in str(raised.value)


def test_redact_from_setting() -> None:
    def hook(record: dict[str, Any]) -> dict[str, Any]:
        return record

    assert redact_from_setting(None) is None
    assert redact_from_setting(hook) is hook
    with pytest.raises(TypeError, match=r"redact must be a function \(record\) -> record, not str"):
        redact_from_setting("hook")


# --- the redact hook ---------------------------------------------------------------------------


def test_redact_runs_after_scrubbing_on_a_copy_of_its_own() -> None:
    seen: list[dict[str, Any]] = []

    def redact(record: dict[str, Any]) -> dict[str, Any]:
        seen.append(copy.deepcopy(record))
        record["inputs"]["email"] = "[email]"
        record["inputs"]["shared"].append("changed")
        record["log_id"] = "someone else"  # identity is not the hook's to change
        del record["path"]
        record["metadata"] = {"when": object()}  # made JSON-safe
        record["output"] = {"not": "a string"}  # the contract's type
        return record

    shared = ["a"]
    record = {
        "log_id": "L",
        "path": "p/q",
        "inputs": {"email": "bob@example.com", "api_key": "k", "shared": shared},
    }
    before = copy.deepcopy(record)
    result = sanitize(record, SCRUBBER, redact)
    assert seen[0]["inputs"]["api_key"] == scrubbed("api key")  # scrubbed first
    assert record == before and shared == ["a"]  # the input untouched
    assert result.record["log_id"] == "L" and result.record["path"] == "p/q"
    assert result.record["inputs"] == {
        "email": "[email]",
        "api_key": scrubbed("api key"),
        "shared": ["a", "changed"],
    }
    assert result.record["output"] == '{"not":"a string"}'
    assert isinstance(result.record["metadata"]["when"], str)
    json.dumps(result.record)
    assert result.counts == {"api key": 1}


@pytest.mark.parametrize(
    ("hook", "warning"),
    [
        (lambda record: 1 / 0, "the redact hook raised ZeroDivisionError"),
        (lambda record: None, "the redact hook returned NoneType, not the record"),
    ],
)
def test_a_failing_redact_hook_costs_the_payloads_never_their_privacy(
    hook: Any, warning: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_scrub, "_warned", set())
    record = {
        "log_id": "L",
        "path": "p",
        "trace_status": "complete",
        "inputs": {"email": "bob@example.com"},
        "stdout": "hello",
    }
    with caplog.at_level(logging.WARNING, logger="flowtrace"):
        results = [sanitize(record, SCRUBBER, hook) for _ in range(2)]
    for result in results:
        assert result.record == {"log_id": "L", "path": "p", "trace_status": "complete"}
        assert result.dropped == ("inputs", "stdout")
    messages = [r.getMessage() for r in caplog.records if r.name == "flowtrace"]
    assert len(messages) == 1 and warning in messages[0]


def test_redact_returning_fields_a_log_does_not_have_is_warned_about_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_scrub, "_warned", set())

    def redact(record: dict[str, Any]) -> dict[str, Any]:
        return {**record, "extra": 1, "stdout": None}

    with caplog.at_level(logging.WARNING, logger="flowtrace"):
        for _ in range(2):
            result = sanitize({"log_id": "L", "stdout": "x", "error": "e"}, None, redact)
            assert result.record == {"log_id": "L", "error": "e"}
    messages = [r.getMessage() for r in caplog.records if r.name == "flowtrace"]
    assert len(messages) == 1 and "fields a log does not have (extra)" in messages[0]


# --- never raises ------------------------------------------------------------------------------


class HostileStr(str):
    def __str__(self) -> str:
        raise RuntimeError("str")

    def __hash__(self) -> int:
        raise RuntimeError("hash")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    def __len__(self) -> int:
        raise RuntimeError("len")

    def startswith(self, *args: Any) -> bool:  # type: ignore[override]
        raise RuntimeError("startswith")


class HostileDict(dict[Any, Any]):
    def items(self) -> Any:
        raise RuntimeError("items")

    def __iter__(self) -> Any:
        raise RuntimeError("iter")

    def __getitem__(self, key: Any) -> Any:
        raise RuntimeError("getitem")

    def __len__(self) -> int:
        raise RuntimeError("len")

    def __contains__(self, key: object) -> bool:
        raise RuntimeError("contains")

    def get(self, *args: Any) -> Any:
        raise RuntimeError("get")


class HostileList(list[Any]):
    def __iter__(self) -> Any:
        raise RuntimeError("iter")

    def __len__(self) -> int:
        raise RuntimeError("len")

    def __getitem__(self, index: Any) -> Any:
        raise RuntimeError("getitem")


class HostileMeta(type):
    def __eq__(cls, other: object) -> bool:
        raise RuntimeError("meta eq")

    def __hash__(cls) -> int:
        raise RuntimeError("meta hash")


class Hostile(metaclass=HostileMeta):
    @property  # type: ignore[misc]
    def __class__(self) -> type:
        raise RuntimeError("__class__")

    def __repr__(self) -> str:
        raise RuntimeError("repr")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq")

    __hash__ = object.__hash__


def test_hostile_values_never_make_it_raise_and_secrets_under_them_are_still_found() -> None:
    inputs = HostileDict()
    dict.__setitem__(inputs, "password", HostileStr("hunter2"))
    dict.__setitem__(inputs, "list", HostileList(["Bearer abcdef123456", {"api_key": "k"}]))
    dict.__setitem__(inputs, "object", Hostile())
    dict.__setitem__(inputs, 3, "password=p1")
    dict.__setitem__(inputs, None, {(1, 2): "x", frozenset({1}): b"bytes", 2.5: {1, 2}})
    dict.__setitem__(inputs, "nan", [float("nan"), float("inf"), complex(1, 2)])
    dict.__setitem__(inputs, "text", HostileStr("call with Bearer abcdef123456"))
    dict.__setitem__(inputs, "tuple", ("x", {"cookie": "c"}))
    result = SCRUBBER.scrub({"inputs": inputs, "metadata": Hostile()})
    out = result.record["inputs"]
    assert out["password"] == scrubbed("password")
    assert out["list"] == ["Bearer [scrubbed: bearer token]", {"api_key": scrubbed("api key")}]
    assert out[3] == "password=[scrubbed: password]"
    assert out["text"] == "call with Bearer [scrubbed: bearer token]"
    assert out["tuple"] == ("x", {"cookie": scrubbed("cookie")})
    assert isinstance(result.record["metadata"], Hostile)  # not JSON: left as it is
    assert result.dropped == ()


class HostileKey(HostileStr):
    __hash__ = str.__hash__  # a dict key must hash once; nothing else of it works


def test_a_key_that_is_a_hostile_str_is_judged_by_its_text() -> None:
    inputs = {HostileKey("API_KEY"): "k"}
    out = scrubbed_inputs(inputs)
    assert list(dict.values(out)) == [scrubbed("api key")]


def test_very_deep_structures_are_cut_at_the_depth_limit_not_sent_unread() -> None:
    deep: Any = {"password": "p"}
    for _ in range(10_000):
        deep = [deep]
    result = SCRUBBER.scrub({"inputs": {"deep": deep}})
    level = result.record["inputs"]["deep"]
    depth = 1
    while isinstance(level, list):
        (level,) = level
        depth += 1
    assert level == scrubbed("depth limit") and depth == MAX_DEPTH
    assert result.counts == {"depth limit": 1}
    deep_json = "[" * 100_000 + "]" * 100_000  # json.loads gives up: text rules, unchanged
    assert scrubbed_text(deep_json) is deep_json


def test_very_wide_and_huge_values() -> None:
    wide = {f"field_{i}": i for i in range(20_000)}
    wide["Password"] = "p"
    out = scrubbed_inputs(wide)
    assert out["Password"] == scrubbed("password") and out["field_19999"] == 19_999
    filler = "lorem ipsum dolor sit amet, " * 150_000  # ~4 MiB
    huge = f"AKIAIOSFODNN7EXAMPLE {filler} Bearer abcdef123456 {filler} password=x"
    started = time.monotonic()
    text = scrubbed_text(huge)
    elapsed = time.monotonic() - started
    assert text == (
        f"[scrubbed: aws access key id] {filler} Bearer [scrubbed: bearer token] {filler} "
        "password=[scrubbed: password]"
    )
    assert elapsed < 10  # linear: a few hundred ms on a slow machine


def test_a_record_that_is_not_a_dict_is_an_internal_error_and_nothing_is_sent(
    fail_on_internal_errors: Errors,
) -> None:
    result = SCRUBBER.scrub(["not", "a", "record"])  # type: ignore[arg-type]
    assert result.record == {} and result.dropped == ()
    assert [kind for kind, _ in fail_on_internal_errors] == ["scrub"]
    fail_on_internal_errors.clear()


def test_an_unexpected_failure_drops_the_fields_it_could_not_scrub(
    fail_on_internal_errors: Errors, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No input makes the scrubber fail (the tests above try); a broken part stands in for a bug.
    original = Scrubber._value

    def broken(self: Scrubber, value: object, path: Any, run: Any, depth: int) -> object:
        if path == (None, "inputs"):
            raise RuntimeError("a bug")
        return original(self, value, path, run, depth)

    monkeypatch.setattr(Scrubber, "_value", broken)
    record = {"log_id": "L", "inputs": {"api_key": "k"}, "stdout": "password=p"}
    result = SCRUBBER.scrub(record)
    assert result.record == {"log_id": "L", "stdout": "password=[scrubbed: password]"}
    assert result.dropped == ("inputs",)
    assert [kind for kind, _ in fail_on_internal_errors] == ["scrub-field"]
    fail_on_internal_errors.clear()


def test_a_failure_of_the_whole_record_leaves_only_its_identity(
    fail_on_internal_errors: Errors, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self: Scrubber, record: object) -> None:
        raise MemoryError("a bug")

    monkeypatch.setattr(Scrubber, "_scrub_record", broken)
    record = {"log_id": "L", "path": "p", "inputs": {"x": 1}, "stdout": "s"}
    result = SCRUBBER.scrub(record)
    assert result.record == {"log_id": "L", "path": "p"}
    assert result.dropped == ("inputs", "stdout")
    assert [kind for kind, _ in fail_on_internal_errors] == ["scrub"]
    fail_on_internal_errors.clear()


# --- properties ----------------------------------------------------------------------------------

ALPHABET = string.ascii_letters + string.digits + " .,!?'()-_\n\téü漢😀"
benign_text = st.text(alphabet=ALPHABET, max_size=30).filter(benign)
benign_keys = st.text(
    alphabet=string.ascii_letters + string.digits + "_-. ", min_size=1, max_size=12
).filter(benign)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**9), 10**9)
    | st.floats(allow_nan=False, allow_infinity=False)
    | benign_text
)
structures = st.recursive(
    scalars | st.dictionaries(benign_keys, scalars, max_size=3).map(compact),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(benign_keys, children, max_size=4)
    ),
    max_leaves=16,
)
dicts = st.dictionaries(benign_keys, structures, max_size=4)
messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system"]),
            "content": benign_text
            | st.lists(
                st.fixed_dictionaries({"type": st.just("text"), "text": benign_text}), max_size=2
            ),
        }
    ),
    max_size=3,
)
records = st.fixed_dictionaries(
    {"log_id": st.just("L1"), "path": st.just("app/flow"), "inputs": dicts, "metadata": dicts},
    optional={
        "output": benign_text | dicts.map(compact),
        "stdout": benign_text,
        "error": benign_text,
        "messages": messages,
        "provider_request": dicts,
        "user": benign_text,
    },
)


@given(records)
def test_records_without_secrets_come_back_as_the_same_objects(record: dict[str, Any]) -> None:
    before = copy.deepcopy(record)
    result = SCRUBBER.scrub(record)
    assert result.record is record and result.counts == {} and result.dropped == ()
    assert record == before


def token(alphabet: str, size: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=size, max_size=size)


ALNUM = string.ascii_letters + string.digits
B64URL = ALNUM + "-_"


def marker(rule: str) -> str:
    return scrubbed(rule)


# (the secret text, what it becomes, its rule), each format drawn at random
text_secrets = st.one_of(
    token(ALNUM, 20).map(
        lambda t: (f"Bearer {t}7", f"Bearer {marker('bearer token')}", "bearer token")
    ),
    token(ALNUM, 40).map(lambda t: (f"sk-proj-{t}1", marker("openai key"), "openai key")),
    token(B64URL, 40).map(
        lambda t: (f"sk-ant-api03-{t}", marker("anthropic key"), "anthropic key")
    ),
    token(string.ascii_uppercase + string.digits, 16).map(
        lambda t: (f"AKIA{t}", marker("aws access key id"), "aws access key id")
    ),
    st.tuples(token(B64URL, 12), token(B64URL, 20), token(B64URL, 20)).map(
        lambda p: (f"eyJ{p[0]}.eyJ{p[1]}.{p[2]}", marker("jwt"), "jwt")
    ),
    token(ALNUM + "+/", 64).map(
        lambda b: (
            f"-----BEGIN PRIVATE KEY-----\n{b}\n-----END PRIVATE KEY-----",
            marker("pem private key"),
            "pem private key",
        )
    ),
    token(ALNUM, 36).map(lambda t: (f"ghp_{t}", marker("github token"), "github token")),
    token(ALNUM, 24).map(lambda t: (f"xoxb-1234-{t}", marker("slack token"), "slack token")),
    token(B64URL, 35).map(lambda t: (f"AIza{t}", marker("google api key"), "google api key")),
    st.tuples(token(ALNUM, 6), token(ALNUM, 10)).map(
        lambda p: (
            f"https://{p[0]}:{p[1]}@example.com/x",
            f"https://{p[0]}:{marker('url password')}@example.com/x",
            "url password",
        )
    ),
    token(ALNUM, 24).map(lambda t: (f"sk_live_{t}", marker("stripe key"), "stripe key")),
    st.tuples(
        st.sampled_from(
            [
                ("password", "password"),
                ("DB_PASSWORD", "password"),
                ("api_key", "api key"),
                ("clientSecret", "secret"),
                ("access_token", "token"),
            ]
        ),
        token(ALNUM, 12),
    ).map(lambda p: (f"{p[0][0]}={p[1]}", f"{p[0][0]}={marker(p[0][1])}", p[0][1])),
)
secret_key_names = st.sampled_from(SECRET_KEYS)
secret_values = token(ALNUM, 16).map(lambda t: "v" + t)
HEADER_NAMES = [
    ("authorization", "auth"),
    ("proxy-authorization", "auth"),
    ("x-api-key", "api key"),
    ("cookie", "cookie"),
    ("set-cookie", "cookie"),
    ("x-auth-token", "token"),
]


def any_case(data: st.DataObject, name: str) -> str:
    flips = data.draw(st.lists(st.booleans(), min_size=len(name), max_size=len(name)))
    return "".join(c.upper() if flip else c for c, flip in zip(name, flips, strict=True))


def containers(actual: Any, expected: Any) -> Iterator[tuple[Any, Any]]:
    """The dicts and lists of two equal structures, side by side."""
    if isinstance(actual, dict):
        yield actual, expected
        for key in actual:
            yield from containers(actual[key], expected[key])
    elif isinstance(actual, list):
        yield actual, expected
        for a, e in zip(actual, expected, strict=True):
            yield from containers(a, e)


def inject(data: st.DataObject, index: int) -> tuple[str, Any, Any, str, str]:
    """One secret: (key to put it under, value, what the value becomes, rule, secret text)."""
    kind = data.draw(st.sampled_from(["key", "text", "header", "message", "json", "pair", "har"]))
    secret = data.draw(secret_values)
    if kind == "key":
        key, rule = data.draw(secret_key_names)
        value = data.draw(st.sampled_from([secret, {"inner": secret}, [secret, 1]]))
        return f"k{index}_{key}", value, marker(rule), rule, secret
    if kind in ("header", "pair", "har"):
        name, rule = data.draw(st.sampled_from(HEADER_NAMES))
        name = any_case(data, name)
        if kind == "header":
            return (
                f"h{index}",
                {"headers": {name: secret}},
                {"headers": {name: marker(rule)}},
                rule,
                secret,
            )
        if kind == "pair":
            return (
                f"p{index}",
                [[name, secret], ["Accept", "x"]],
                [[name, marker(rule)], ["Accept", "x"]],
                rule,
                secret,
            )
        return (
            f"e{index}",
            {"name": name, "value": secret},
            {"name": name, "value": marker(rule)},
            rule,
            secret,
        )
    if kind == "json":
        note = data.draw(benign_text)
        value = compact({f"j{index}_api_key": secret, "note": note})
        return (
            f"j{index}",
            value,
            compact({f"j{index}_api_key": marker("api key"), "note": note}),
            "api key",
            secret,
        )
    text, replaced, rule = data.draw(text_secrets)
    before, after = data.draw(benign_text), data.draw(benign_text)
    value, becomes = f"{before} {text} {after}", f"{before} {replaced} {after}"
    if kind == "message":

        def message(t: str) -> dict[str, Any]:
            return {"role": "user", "content": [{"type": "text", "text": t}]}

        return f"m{index}", message(value), message(becomes), rule, text
    return f"t{index}", value, becomes, rule, text


def with_secrets(
    record: dict[str, Any], data: st.DataObject
) -> tuple[dict[str, Any], Counter[str], list[str], list[str]]:
    """Secrets injected into `record` at random places: (what scrubbing must make of it, the
    counts by rule, the secret texts, the secret-looking keys used)."""
    record.setdefault("provider_request", {})
    expected = copy.deepcopy(record)
    counts: Counter[str] = Counter()
    secrets, keys = [], []
    # the record's own dicts and lists (not the injected ones), in the record and its copy
    places = [
        pair
        for name in ("inputs", "metadata", "provider_request", "messages")
        if name in record
        for pair in containers(record[name], expected[name])
    ]
    for index in range(data.draw(st.integers(1, 5))):
        actual_container, expected_container = data.draw(st.sampled_from(places))
        assert actual_container is not expected_container, places
        key, value, becomes, rule, secret = inject(data, index)
        if isinstance(actual_container, dict):
            actual_container[key], expected_container[key] = value, becomes
        elif key.startswith("k"):  # a secret-looking key, in a dict of its own
            actual_container.append({key: value})
            expected_container.append({key: becomes})
        else:
            actual_container.append(value)
            expected_container.append(becomes)
        counts[rule] += 1
        secrets.append(secret)
        keys.append(key)
    if data.draw(st.booleans()):
        text, replaced, rule = data.draw(text_secrets)
        record["stdout"] = f"{record.get('stdout', '')}\n{text}\n"
        expected["stdout"] = f"{expected.get('stdout', '')}\n{replaced}\n"
        counts[rule] += 1
        secrets.append(text)
    return expected, counts, secrets, keys


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(records, st.data())
def test_injected_secrets_are_scrubbed_and_everything_else_is_unchanged(
    record: dict[str, Any], data: st.DataObject
) -> None:
    expected, counts, secrets, _ = with_secrets(record, data)
    before = copy.deepcopy(record)
    result = SCRUBBER.scrub(record)
    assert result.record == expected
    assert result.counts == counts
    assert record == before
    assert_nothing_survives(result.record, secrets)


@settings(
    max_examples=50, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much]
)
@given(records, st.data())
def test_a_callback_that_keeps_everything_and_an_allow_list_of_every_key_change_nothing(
    record: dict[str, Any], data: st.DataObject
) -> None:
    with_secrets(record, data)
    seen: list[ScrubMatch] = []

    def keep(match: ScrubMatch) -> bool:
        seen.append(match)
        return True

    kept = Scrubber(ScrubOptions(callback=keep)).scrub(record)
    assert kept.record is record and kept.counts == {}
    assert kept.kept == len(seen) > 0
    assert all(SCRUBBED_PREFIX not in json.dumps(m.value, default=str) for m in seen)
    every_key = list({key for text in strings_in(record) for key in [text] if len(key) < 40})
    allowed = Scrubber(ScrubOptions(allow_keys=every_key))
    result = allowed.scrub(record)
    # only text rules remain: each secret-looking key's value is kept whole
    for key, value in _items_with_keys(result.record):
        if key in every_key and not isinstance(value, str):
            assert SCRUBBED_PREFIX not in json.dumps(value, default=str)


def _items_with_keys(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key, item
            yield from _items_with_keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from _items_with_keys(item)


def hostile() -> Hostile:
    return Hostile()  # (through a function: hypothesis would hash the class, which raises)


@st.composite
def anything(draw: st.DrawFn) -> Any:
    """Structures of whatever a careless recorder might hand over."""
    leaves = st.one_of(
        scalars,
        st.floats(),
        st.binary(max_size=8),
        st.complex_numbers(),
        st.sets(st.integers(), max_size=3),
        st.builds(hostile),
        st.builds(HostileStr, st.just("api_key=x call Bearer abcdef123456")),
        st.builds(HostileList),
        st.builds(object),
        text_secrets.map(lambda s: s[0]),
    )
    keys = st.one_of(
        benign_keys,
        secret_key_names.map(lambda k: k[0]),
        st.integers(),
        st.none(),
        st.tuples(st.integers()),
        st.floats(allow_nan=False),
    )
    return draw(
        st.recursive(
            leaves,
            lambda children: (
                st.lists(children, max_size=4)
                | st.lists(children, max_size=3).map(tuple)
                | st.dictionaries(keys, children, max_size=4)
                | st.lists(children, max_size=3).map(HostileList)
                | st.dictionaries(keys, children, max_size=3).map(HostileDict)
            ),
            max_leaves=20,
        )
    )


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(anything(), anything())
def test_scrubbing_never_raises_whatever_it_is_given(inputs: Any, metadata: Any) -> None:
    result = SCRUBBER.scrub(
        {"log_id": "L", "inputs": inputs, "metadata": metadata, "stdout": inputs}
    )
    assert result.record["log_id"] == "L" and result.dropped == ()
    for text in strings_in(result.record):  # what JSON there is holds no secret
        assert ORACLE_TEXT.search(text) is None


@given(
    st.sets(st.text(alphabet="abcdef", min_size=1, max_size=5), min_size=1, max_size=8),
    st.text(alphabet="abcdef", max_size=6),
)
def test_the_trie_matches_exactly_its_words(words: set[str], other: str) -> None:
    regex = re.compile(f"(?:{_scrub._trie(words)})")
    assert all(regex.fullmatch(word) for word in words)
    assert (regex.fullmatch(other) is not None) == (other in words)


@pytest.mark.parametrize(("key", "rule"), [(k, r) for k, r in SECRET_KEYS if " " not in k])
def test_secret_keys_are_found_in_name_equals_value_text(key: str, rule: str) -> None:
    if key in ("password_hash",):  # found where the name ends with a secret word only
        assert scrubbed_text(f"{key}=abc123") == f"{key}=abc123"
        return
    assert scrubbed_text(f"set {key}=abc123 now") == f"set {key}=[scrubbed: {rule}] now"
    assert scrubbed_text(f"{{'{key}': 'abc'}}") == f"{{'{key}': '[scrubbed: {rule}]'}}"
