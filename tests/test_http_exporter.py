"""HttpExporter against a scripted server (httpx.MockTransport): the requests it makes, exactly,
and the outcome it reports for each operation. No network, no sleeping, a fixed wall clock."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from flowtrace._contract import UPDATE_EXTENSION_FIELDS
from flowtrace.exporters import NOT_DELIVERED, Operation, Outcome
from flowtrace.exporters.http import HttpExporter

BASE = "http://flows.test/v5"
NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc)

CREATE = Operation(
    "log",
    "log_a",
    {"log_id": "log_a", "path": "support/answer", "trace_status": "complete"},
    {"version_id": "ver_1"},
)
CREATE_B = Operation(
    "log", "log_b", {"log_id": "log_b", "path": "support/b", "trace_status": "incomplete"}
)
UPDATE_B = Operation(
    "update",
    "log_b",
    {
        "end_time": "2025-01-01T12:00:01.000000Z",
        "provider_latency": 1.0,
        "stdout": "hello\n",
        "metadata": {"flowtrace": {"ended": "returned"}},
        "output": "done",
        "trace_status": "complete",
    },
)
CONTRACT_UPDATE_B = {"output": "done", "trace_status": "complete"}  # without the extension fields

CREATED_A = {"id": "log_a", "flow_id": "fl_1", "version_id": "ver_1", "trace_status": "complete"}
CREATED_B = {"id": "log_b", "flow_id": "fl_2", "version_id": "ver_2", "trace_status": "incomplete"}
UPDATED_B = {"id": "log_b", "trace_id": "log_b", "trace_status": "complete"}

HEALTH_BATCH = {"status": "ok", "batch": True}
HEALTH_NO_BATCH = {"status": "ok", "batch": False}

Answer = httpx.Response | Exception  # an exception is raised by the transport


class Server:
    """The MockTransport handler: answers by `"METHOD /path"` (a list is used up in order, a
    single answer repeats), and records every request it sees."""

    def __init__(self, answers: dict[str, Answer | list[Answer]]) -> None:
        self.answers = answers
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = f"{request.method} {request.url.path}"
        assert key in self.answers, f"unexpected request {key}"
        answer = self.answers[key]
        if isinstance(answer, list):
            assert answer, f"no answer left for {key}"
            answer = answer.pop(0)
        if isinstance(answer, Exception):
            raise answer
        # a fresh copy: one scripted answer may be given many times
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def seen(self) -> list[tuple[str, str, Any]]:
        """(method, path?query, JSON body or None) of every request, in order."""
        return [
            (
                r.method,
                r.url.raw_path.decode(),
                json.loads(r.content) if r.content else None,
            )
            for r in self.requests
        ]


def exporter_for(server: Server, api_key: str | None = None) -> HttpExporter:
    return HttpExporter(
        BASE, api_key, transport=httpx.MockTransport(server), wall_clock=lambda: NOW
    )


def reply(status: int, payload: Any = None, **headers: str) -> httpx.Response:
    if payload is None:
        return httpx.Response(status, headers=headers)
    return httpx.Response(status, json=payload, headers=headers)


def html(status: int = 200) -> httpx.Response:
    return httpx.Response(status, text="<html><body>It works!</body></html>")


def per_log_server(
    health: Answer | list[Answer], more: dict[str, Answer | list[Answer]] | None = None
) -> Server:
    """A server whose per-log routes accept CREATE, CREATE_B and UPDATE_B (unless `more`
    answers them otherwise)."""
    answers: dict[str, Answer | list[Answer]] = {
        "GET /v5/health": health,
        "POST /v5/flows/log": [reply(200, CREATED_A), reply(200, CREATED_B)],
        "PATCH /v5/flows/logs/log_b": reply(200, UPDATED_B),
    }
    answers.update(more or {})
    return Server(answers)


def batch_items(*operations: Operation) -> dict[str, Any]:
    return {"operations": [op.to_batch_item() for op in operations]}


BATCH_RESULTS = {
    "results": [
        {"status": 200, "body": CREATED_A},
        {"status": 200, "body": CREATED_B},
        {"status": 200, "body": UPDATED_B},
    ]
}
BATCH_OUTCOMES = [Outcome(200, CREATED_A), Outcome(200, CREATED_B), Outcome(200, UPDATED_B)]
PER_LOG_OUTCOMES = [Outcome(200, CREATED_A), Outcome(200, CREATED_B), Outcome(200, UPDATED_B)]


def per_log_requests(update_body: dict[str, Any]) -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/v5/flows/log?version_id=ver_1", CREATE.body),
        ("POST", "/v5/flows/log", CREATE_B.body),
        ("PATCH", "/v5/flows/logs/log_b", update_body),
    ]


# --- discovery ---------------------------------------------------------------------------------


def test_a_flowtrace_server_with_batch_gets_one_request_per_export() -> None:
    server = Server(
        {
            "GET /v5/health": reply(200, HEALTH_BATCH),
            "POST /v5/flows/logs/batch": reply(200, BATCH_RESULTS),
        }
    )
    exporter = exporter_for(server)
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == BATCH_OUTCOMES
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == BATCH_OUTCOMES
    items = batch_items(CREATE, CREATE_B, UPDATE_B)
    assert server.seen() == [
        ("GET", "/v5/health", None),
        ("POST", "/v5/flows/logs/batch", items),
        ("POST", "/v5/flows/logs/batch", items),
    ]
    assert items["operations"] == [
        {"op": "log", "body": CREATE.body, "query": {"version_id": "ver_1"}},
        {"op": "log", "body": CREATE_B.body},
        {"op": "update", "log_id": "log_b", "body": UPDATE_B.body},  # extension fields kept
    ]
    assert exporter.batch
    assert exporter.update_extension


@pytest.mark.parametrize(
    ("health", "update_extension"),
    [
        pytest.param(reply(200, HEALTH_NO_BATCH), True, id="flowtrace-without-batch"),
        pytest.param(
            reply(200, {"batch": False, "update_extension": False}),
            False,
            id="batch-false-update-extension-false",
        ),
        pytest.param(html(), False, id="html-200"),
        pytest.param(reply(200, {"status": "ok"}), False, id="json-without-batch"),
        pytest.param(reply(200, {"batch": "yes"}), False, id="batch-not-a-bool"),
        pytest.param(reply(200, [True]), False, id="json-not-an-object"),
        pytest.param(reply(404, {"detail": "Not Found"}), False, id="health-404"),
        pytest.param(reply(401, {"detail": "no key"}), False, id="health-401"),
    ],
)
def test_other_servers_get_the_per_log_routes(
    health: httpx.Response, update_extension: bool
) -> None:
    server = per_log_server(health)
    exporter = exporter_for(server)
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == PER_LOG_OUTCOMES
    update_body = UPDATE_B.body if update_extension else CONTRACT_UPDATE_B
    assert server.seen() == [("GET", "/v5/health", None), *per_log_requests(update_body)]
    assert not exporter.batch
    assert exporter.update_extension is update_extension


def test_contract_update_bodies_lose_exactly_the_extension_fields() -> None:
    assert set(UPDATE_B.body) - set(CONTRACT_UPDATE_B) == UPDATE_EXTENSION_FIELDS - {
        "provider_request",
        "provider_response",
    }
    everything = {name: "x" for name in UPDATE_EXTENSION_FIELDS} | {
        "output": "done",
        "error": "boom",
        "inputs": {"q": 1},
        "trace_status": "complete",
    }
    server = Server({"GET /v5/health": html(), "PATCH /v5/flows/logs/log_b": reply(200, UPDATED_B)})
    exporter = exporter_for(server)
    assert exporter.export([Operation("update", "log_b", everything)]) == [Outcome(200, UPDATED_B)]
    assert server.seen()[1:] == [
        (
            "PATCH",
            "/v5/flows/logs/log_b",
            {"output": "done", "error": "boom", "inputs": {"q": 1}, "trace_status": "complete"},
        )
    ]


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        pytest.param(reply(503), "health check answered 503", id="503"),
        pytest.param(reply(429, Retry_After="5"), "health check answered 429", id="429"),
        pytest.param(reply(502), "health check answered 502", id="502"),
        pytest.param(
            httpx.ConnectError("connection refused"),
            "ConnectError: connection refused",
            id="connect-error",
        ),
        pytest.param(httpx.ReadTimeout("timed out"), "ReadTimeout: timed out", id="read-timeout"),
    ],
)
def test_an_unreachable_health_check_delivers_nothing_and_is_asked_again(
    failure: Answer, error: str
) -> None:
    server = Server(
        {
            "GET /v5/health": [failure, reply(200, HEALTH_BATCH)],
            "POST /v5/flows/logs/batch": reply(200, BATCH_RESULTS),
        }
    )
    exporter = exporter_for(server)
    assert (
        exporter.export([CREATE, CREATE_B, UPDATE_B])
        == [Outcome(NOT_DELIVERED, None, None, error)] * 3
    )
    assert server.seen() == [("GET", "/v5/health", None)]
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == BATCH_OUTCOMES
    assert server.seen() == [
        ("GET", "/v5/health", None),
        ("GET", "/v5/health", None),
        ("POST", "/v5/flows/logs/batch", batch_items(CREATE, CREATE_B, UPDATE_B)),
    ]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_on_the_health_check_is_honoured(status: int) -> None:
    server = Server({"GET /v5/health": reply(status, None, **{"Retry-After": "30"})})
    outcomes = exporter_for(server).export([CREATE, CREATE_B])
    assert [o.retry_after_s for o in outcomes] == [30.0, 30.0]


def test_a_warm_up_only_discovers_and_only_once() -> None:
    server = Server(
        {
            "GET /v5/health": reply(200, HEALTH_BATCH),
            "POST /v5/flows/logs/batch": reply(
                200, {"results": [{"status": 200, "body": CREATED_A}]}
            ),
        }
    )
    exporter = exporter_for(server)
    assert exporter.export([]) == []
    assert exporter.batch
    assert exporter.export([]) == []
    assert server.seen() == [("GET", "/v5/health", None)]
    assert exporter.export([CREATE]) == [Outcome(200, CREATED_A)]
    assert server.seen() == [
        ("GET", "/v5/health", None),
        ("POST", "/v5/flows/logs/batch", batch_items(CREATE)),
    ]


def test_a_failed_warm_up_is_retried_by_the_next_export() -> None:
    server = per_log_server([httpx.ConnectError("connection refused"), reply(404)])
    exporter = exporter_for(server)
    assert exporter.export([]) == []
    assert exporter.export([CREATE]) == [Outcome(200, CREATED_A)]
    assert server.seen() == [
        ("GET", "/v5/health", None),
        ("GET", "/v5/health", None),
        ("POST", "/v5/flows/log?version_id=ver_1", CREATE.body),
    ]


# --- headers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [True, False], ids=["batch", "per-log"])
def test_every_request_carries_the_api_key_and_json_content_type(batch: bool) -> None:
    server = per_log_server(
        reply(200, HEALTH_BATCH if batch else HEALTH_NO_BATCH),
        {"POST /v5/flows/logs/batch": reply(200, BATCH_RESULTS)},
    )
    exporter_for(server, api_key="sk-test").export([CREATE, CREATE_B, UPDATE_B])
    assert len(server.requests) == (2 if batch else 4)
    for request in server.requests:
        assert request.headers["X-API-KEY"] == "sk-test"
        assert request.headers["Content-Type"] == "application/json"
        assert request.headers["User-Agent"] == "flowtrace"
        assert request.headers["Prefer"] == "return=minimal"  # no update's record is read


def test_no_api_key_header_without_an_api_key() -> None:
    server = per_log_server(reply(200, HEALTH_NO_BATCH))
    exporter_for(server).export([CREATE])
    assert len(server.requests) == 2
    assert all("X-API-KEY" not in request.headers for request in server.requests)


# --- the batch route ---------------------------------------------------------------------------


@pytest.mark.parametrize("status", [404, 405])
def test_a_missing_batch_route_falls_back_to_per_log_and_is_remembered(status: int) -> None:
    server = per_log_server(
        reply(200, HEALTH_BATCH),
        {"POST /v5/flows/logs/batch": reply(status, {"detail": "Not Found"})},
    )
    server.answers["POST /v5/flows/log"] = [reply(200, CREATED_A), reply(200, CREATED_B)] * 2
    exporter = exporter_for(server)
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == PER_LOG_OUTCOMES
    assert not exporter.batch
    assert exporter.update_extension  # still a flowtrace server: its updates keep the fields
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == PER_LOG_OUTCOMES
    assert server.seen() == [
        ("GET", "/v5/health", None),
        ("POST", "/v5/flows/logs/batch", batch_items(CREATE, CREATE_B, UPDATE_B)),
        *per_log_requests(UPDATE_B.body),
        *per_log_requests(UPDATE_B.body),  # the batch route is not tried again
    ]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(html(), id="not-json"),
        pytest.param(reply(200, {}), id="no-results"),
        pytest.param(reply(200, {"results": "all good"}), id="results-not-a-list"),
        pytest.param(reply(200, {"results": [{"status": 200}]}), id="too-few-results"),
        pytest.param(reply(200, {"results": [{"status": 200}] * 4}), id="too-many-results"),
        pytest.param(
            reply(200, {"results": [{"status": 200}, {"status": "200"}, {"status": 200}]}),
            id="status-not-an-int",
        ),
        pytest.param(
            reply(200, {"results": [{"status": 200}, {"body": {}}, {"status": 200}]}),
            id="status-missing",
        ),
        pytest.param(
            reply(200, {"results": [{"status": 200}, [200], {"status": 200}]}),
            id="result-not-an-object",
        ),
        pytest.param(reply(200, [BATCH_RESULTS]), id="json-not-an-object"),
    ],
)
def test_a_batch_answer_that_is_not_understood_delivers_nothing(answer: httpx.Response) -> None:
    server = Server(
        {"GET /v5/health": reply(200, HEALTH_BATCH), "POST /v5/flows/logs/batch": answer}
    )
    exporter = exporter_for(server)
    assert (
        exporter.export([CREATE, CREATE_B, UPDATE_B])
        == [Outcome(NOT_DELIVERED, None, None, "the batch answer was not understood")] * 3
    )
    assert len(server.requests) == 2
    assert exporter.batch  # the route is there: the pipeline retries the same batch


def test_batch_results_carry_their_own_statuses_and_bodies() -> None:
    results = {
        "results": [
            {"status": 200, "body": CREATED_A},
            {"status": 422, "body": {"detail": [{"loc": ["body", "path"], "msg": "bad"}]}},
            {"status": 409},
        ]
    }
    server = Server(
        {
            "GET /v5/health": reply(200, HEALTH_BATCH),
            "POST /v5/flows/logs/batch": reply(200, results),
        }
    )
    assert exporter_for(server).export([CREATE, CREATE_B, UPDATE_B]) == [
        Outcome(200, CREATED_A),
        Outcome(422, {"detail": [{"loc": ["body", "path"], "msg": "bad"}]}),
        Outcome(409, None),
    ]


@pytest.mark.parametrize("status", [413, 400, 401, 500])
def test_a_refused_batch_gives_every_operation_that_status(status: int) -> None:
    body = {"detail": "nope"}
    server = Server(
        {
            "GET /v5/health": reply(200, HEALTH_BATCH),
            "POST /v5/flows/logs/batch": reply(status, body),
        }
    )
    exporter = exporter_for(server)
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == [Outcome(status, body)] * 3
    assert len(server.requests) == 2  # the exporter does not split: the pipeline halves on 413


# --- Retry-After -------------------------------------------------------------------------------

RETRY_AFTER = [
    pytest.param("7", 7.0, id="seconds"),
    pytest.param(" 2.5 ", 2.5, id="fractional-seconds"),
    pytest.param("Wed, 01 Jan 2025 12:00:30 GMT", 30.0, id="http-date"),
    pytest.param("Wed, 01 Jan 2025 11:59:00 GMT", 0.0, id="http-date-in-the-past"),
    pytest.param("-3", 0.0, id="negative-seconds"),
    pytest.param("soon", None, id="unreadable"),
]


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(("header", "seconds"), RETRY_AFTER)
def test_retry_after_on_the_batch_route(status: int, header: str, seconds: float | None) -> None:
    body = {"detail": "slow down"}
    server = Server(
        {
            "GET /v5/health": reply(200, HEALTH_BATCH),
            "POST /v5/flows/logs/batch": reply(status, body, **{"Retry-After": header}),
        }
    )
    assert exporter_for(server).export([CREATE, CREATE_B]) == [Outcome(status, body, seconds)] * 2


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize(("header", "seconds"), RETRY_AFTER)
def test_retry_after_per_log(status: int, header: str, seconds: float | None) -> None:
    body = {"detail": "slow down"}
    server = per_log_server(
        reply(200, HEALTH_NO_BATCH),
        {"POST /v5/flows/log": reply(status, body, **{"Retry-After": header})},
    )
    assert exporter_for(server).export([CREATE, CREATE_B, UPDATE_B]) == [
        Outcome(status, body, seconds),
        Outcome(NOT_DELIVERED, None, seconds, "not attempted"),
        Outcome(NOT_DELIVERED, None, seconds, "not attempted"),
    ]
    assert len(server.requests) == 2


def test_no_retry_after_header_means_none() -> None:
    server = per_log_server(reply(200, HEALTH_NO_BATCH), {"POST /v5/flows/log": reply(503)})
    assert exporter_for(server).export([CREATE]) == [Outcome(503, None, None)]


# --- per-log: what a failure does to the rest -------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
def test_per_log_stops_after_a_failure_worth_retrying(status: int) -> None:
    server = per_log_server(
        reply(200, HEALTH_NO_BATCH),
        {
            "POST /v5/flows/log": [
                reply(200, CREATED_A),
                reply(status, {"detail": "busy"}, **{"Retry-After": "4"}),
            ]
        },
    )
    assert exporter_for(server).export([CREATE, CREATE_B, UPDATE_B]) == [
        Outcome(200, CREATED_A),
        Outcome(status, {"detail": "busy"}, 4.0),
        Outcome(NOT_DELIVERED, None, 4.0, "not attempted"),  # its update may need its create
    ]
    assert (
        server.seen()
        == [  # the update of log_b is never sent
            ("GET", "/v5/health", None),
            *per_log_requests(UPDATE_B.body)[:2],
        ]
    )


def test_per_log_stops_after_a_transport_error() -> None:
    server = per_log_server(
        reply(200, HEALTH_NO_BATCH),
        {"POST /v5/flows/log": [reply(200, CREATED_A), httpx.ReadTimeout("timed out")]},
    )
    assert exporter_for(server).export([CREATE, CREATE_B, UPDATE_B]) == [
        Outcome(200, CREATED_A),
        Outcome(NOT_DELIVERED, None, None, "ReadTimeout: timed out"),
        Outcome(NOT_DELIVERED, None, None, "not attempted"),
    ]
    assert len(server.requests) == 3


@pytest.mark.parametrize("status", [400, 404, 409, 422, 500])
def test_per_log_goes_on_after_a_refusal(status: int) -> None:
    refusal = {"detail": [{"loc": ["body", "path"], "msg": "field required"}]}
    server = per_log_server(
        reply(200, HEALTH_NO_BATCH),
        {"POST /v5/flows/log": [reply(200, CREATED_A), reply(status, refusal)]},
    )
    assert exporter_for(server).export([CREATE, CREATE_B, UPDATE_B]) == [
        Outcome(200, CREATED_A),
        Outcome(status, refusal),
        Outcome(200, UPDATED_B),
    ]
    assert server.seen() == [
        ("GET", "/v5/health", None),
        *per_log_requests(UPDATE_B.body),
    ]


# --- transport errors -------------------------------------------------------------------------

TRANSPORT_ERRORS = [
    pytest.param(
        httpx.ConnectError("connection refused"), "ConnectError: connection refused", id="connect"
    ),
    pytest.param(httpx.ReadTimeout("timed out"), "ReadTimeout: timed out", id="read-timeout"),
    pytest.param(httpx.RemoteProtocolError(""), "RemoteProtocolError", id="no-message"),
]


@pytest.mark.parametrize(("exc", "error"), TRANSPORT_ERRORS)
def test_a_transport_error_on_the_batch_route_delivers_nothing(
    exc: httpx.HTTPError, error: str
) -> None:
    server = Server(
        {
            "GET /v5/health": reply(200, HEALTH_BATCH),
            "POST /v5/flows/logs/batch": [exc, reply(200, BATCH_RESULTS)],
        }
    )
    exporter = exporter_for(server)
    assert (
        exporter.export([CREATE, CREATE_B, UPDATE_B])
        == [Outcome(NOT_DELIVERED, None, None, error)] * 3
    )
    assert exporter.batch  # no answer is not "no route": the next export tries batch again
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == BATCH_OUTCOMES


@pytest.mark.parametrize(("exc", "error"), TRANSPORT_ERRORS)
def test_a_transport_error_per_log_delivers_nothing(exc: httpx.HTTPError, error: str) -> None:
    server = per_log_server(
        reply(200, HEALTH_NO_BATCH),
        {"PATCH /v5/flows/logs/log_b": exc},
    )
    assert exporter_for(server).export([CREATE, UPDATE_B]) == [
        Outcome(200, CREATED_A),
        Outcome(NOT_DELIVERED, None, None, error),
    ]
    assert len(server.requests) == 3  # the PATCH was attempted


# --- close -------------------------------------------------------------------------------------


class ClosingTransport(httpx.MockTransport):
    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_close_closes_the_client_and_its_transport() -> None:
    transport = ClosingTransport(Server({}))
    exporter = HttpExporter(BASE, transport=transport, wall_clock=lambda: NOW)
    exporter.close()
    assert transport.closed == 1


# --- issue 9 item 7 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("batch", "answer"),
    [
        pytest.param(False, html(), id="per-log-html"),
        pytest.param(False, reply(200, {"ok": True}), id="per-log-json-without-id"),
        pytest.param(False, reply(200), id="per-log-empty"),
        pytest.param(
            True,
            reply(200, {"results": [{"status": 200, "body": "<html>"}]}),
            id="batch-result-not-json-object",
        ),
        pytest.param(
            True,
            reply(200, {"results": [{"status": 201, "body": {}}]}),
            id="batch-result-without-id",
        ),
        pytest.param(True, reply(200, {"results": [{"status": 200}]}), id="batch-result-no-body"),
    ],
)
def test_a_200_that_is_not_the_contract_s_answer_is_not_delivered(
    batch: bool, answer: httpx.Response
) -> None:
    route = "POST /v5/flows/logs/batch" if batch else "POST /v5/flows/log"
    server = Server({"GET /v5/health": reply(200, HEALTH_BATCH if batch else {}), route: answer})
    (outcome,) = exporter_for(server).export([CREATE])
    assert not outcome.ok


def test_a_non_contract_200_names_the_url_and_stops_the_rest_per_log() -> None:
    server = per_log_server(html(), {"POST /v5/flows/log": html()})
    outcomes = exporter_for(server).export([CREATE, CREATE_B])
    assert [o.status for o in outcomes] == [NOT_DELIVERED, NOT_DELIVERED]
    assert outcomes[0].error is not None
    assert f"{BASE}/flows/log answered 200 with text/plain: '<html>" in outcomes[0].error
    assert "base_url" in outcomes[0].error
    assert outcomes[1].error == "not attempted"
    assert len(server.requests) == 2  # the second create was not attempted


def test_batch_update_bodies_lose_the_extension_fields_when_the_server_says_so() -> None:
    server = Server(
        {
            "GET /v5/health": reply(200, {"batch": True, "update_extension": False}),
            "POST /v5/flows/logs/batch": reply(200, BATCH_RESULTS),
        }
    )
    exporter = exporter_for(server)
    assert exporter.export([CREATE, CREATE_B, UPDATE_B]) == BATCH_OUTCOMES
    (_, (method, path, body)) = server.seen()
    assert (method, path) == ("POST", "/v5/flows/logs/batch")
    assert body["operations"][2] == {"op": "update", "log_id": "log_b", "body": CONTRACT_UPDATE_B}
    assert body["operations"][0] == {
        "op": "log",
        "body": CREATE.body,
        "query": {"version_id": "ver_1"},
    }


def test_export_after_close_delivers_nothing_and_does_not_raise() -> None:
    server = Server({})
    exporter = exporter_for(server)
    exporter.close()
    (outcome,) = exporter.export([CREATE])
    assert outcome.status == NOT_DELIVERED
    assert outcome.error == f"the exporter for {BASE} is closed"
    assert exporter.export([]) == []
    assert server.requests == []


# --- per-log: long batches go in parallel waves ------------------------------------------------


def test_waves_put_every_operation_after_what_it_depends_on() -> None:
    from flowtrace.exporters.http import _waves

    def create(log_id: str, parent: str | None = None) -> Operation:
        body: dict[str, Any] = {"log_id": log_id}
        if parent is not None:
            body["trace_parent_id"] = parent
        return Operation("log", log_id, body)

    ops = [
        create("a"),  # 0: a root sent early
        create("b"),  # 1: an unrelated leaf
        create("a1", "a"),  # 2
        create("a2", "a"),  # 3
        create("a1x", "a1"),  # 4: a grandchild
        Operation("update", "a", {}),  # 5: a closes after its children
        create("c"),  # 6
    ]
    assert _waves(ops) == [[0, 1, 6], [2, 3], [4, 5]]


def test_a_long_batch_to_a_per_log_server_goes_in_parallel_waves_in_a_valid_order() -> None:
    import threading

    lock = threading.Lock()
    in_flight = [0, 0]  # now, most
    created: set[str] = set()
    closed: set[str] = set()
    problems: list[str] = []
    entered = threading.Barrier(2, timeout=5)  # two requests are in flight at once, or fail

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v5/health":
            return reply(404)
        body = json.loads(request.content)
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
            if request.method == "POST":
                parent = body.get("trace_parent_id")
                if parent is not None and (parent not in created or parent in closed):
                    problems.append(f"{body['log_id']} before its parent")
                created.add(body["log_id"])
            else:
                if not all(f"kid_{n}" in created for n in range(5)):
                    problems.append("root closed before its children")
                closed.add(request.url.path.rsplit("/", 1)[-1])
        if request.method == "POST" and body["log_id"] in ("leaf_0", "leaf_1"):
            entered.wait()
        with lock:
            in_flight[0] -= 1
        log_id = body.get("log_id") or request.url.path.rsplit("/", 1)[-1]
        return reply(200, {"id": log_id})

    ops: list[Operation] = []
    for n in range(20):
        ops.append(Operation("log", f"leaf_{n}", {"log_id": f"leaf_{n}"}))
    ops.append(Operation("log", "root", {"log_id": "root", "trace_status": "incomplete"}))
    for n in range(5):
        ops.append(Operation("log", f"kid_{n}", {"log_id": f"kid_{n}", "trace_parent_id": "root"}))
    ops.append(Operation("update", "root", {"trace_status": "complete"}))
    exporter = exporter_for(Server({}))
    exporter._client = httpx.Client(
        base_url=BASE, transport=httpx.MockTransport(handler), follow_redirects=False
    )
    try:
        outcomes = exporter.export(ops)
    finally:
        exporter.close()
    assert [o.status for o in outcomes] == [200] * len(ops)
    assert problems == []
    assert in_flight[1] >= 2
