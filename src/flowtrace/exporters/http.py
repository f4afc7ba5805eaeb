"""HttpExporter: the wire contract over HTTP, with one pooled httpx client.

On first use it asks the server what it offers (`GET {base}/health`): a flowtrace server
answers `{"batch": true|false, ...}`, and then takes flowtrace's end-of-log fields on update;
any other server of the contract gets the per-log routes and contract-only update bodies. If
the batch route answers 404/405 anyway, the exporter falls back to per-log and remembers.

A span's prompt or tool log goes in the batch too where the health answer lists its kind under
`batch_operations` (a flowtrace server since prompt and tool logs in batches). Elsewhere it goes
to `POST /prompts/log` or `POST /tools/log`, one by one, in its place in the order; so too once
a batch holding them was refused (400/422 for the whole request, or a 422 naming the `op`:
learned once, with one warning), from the refused operation on. A server without those routes
(404 "Not Found" or 405 for the route itself, learned once) gets it as a flow log instead, its
kernel and prompt fields (tokens, costs, finish reason) in its metadata.

A success is the contract's answer, not just a 2xx: a JSON object with the log's `id` (and
for the batch route, one such result per operation). Anything else, such as the HTML page of
a wrong `base_url`, is no delivery: the outcome says what came back from which URL.
"""

from __future__ import annotations

# socket.getaddrinfo imports this codec lazily, on the worker's first connection; a fork at
# that moment would leave the child a half-imported codec. Importing it here puts it under the
# pipeline's fork-safe build lock (see Pipeline.before_fork).
import encodings.idna  # noqa: F401
import hashlib
import itertools
import json
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

import httpx
import pydantic_core

from flowtrace._config import Settings
from flowtrace._contract import (
    BATCH_FIELD,
    BATCH_LOG,
    BATCH_OPERATIONS_FIELD,
    BATCH_PROMPT_LOG,
    BATCH_TOOL_LOG,
    BATCH_UPDATE,
    PREFER_HEADER,
    PROMPT,
    PROMPT_LOG_FIELDS,
    RETURN_MINIMAL,
    TOOL,
    UPDATE_EXTENSION_FIELDS,
)
from flowtrace._retry import is_retryable, parse_retry_after
from flowtrace.exporters import FILE_LOG_KINDS, NOT_DELIVERED, Operation, Outcome, not_delivered
from flowtrace.exporters._http1 import WireResponse, sender_for
from flowtrace.exporters._interruptible import install_on

__all__ = ["HttpExporter"]

BATCH_PATH = "/flows/logs/batch"
#: Where each kind of create goes.
CREATE_PATHS = {
    BATCH_LOG: "/flows/log",
    BATCH_PROMPT_LOG: "/prompts/log",
    BATCH_TOOL_LOG: "/tools/log",
}
_KERNEL_FIELDS = {BATCH_PROMPT_LOG: PROMPT, BATCH_TOOL_LOG: TOOL}
HEALTH_PATH = "/health"
_NO_BATCH = frozenset({404, 405})
#: A batch request refused as a whole for what it holds (not for its size, a key, the load).
_BATCH_REFUSED = frozenset({400, 422})

logger = logging.getLogger("flowtrace")

#: Per-log routes: requests in flight at once (and connections kept), and the batch length
#: from which a batch goes in parallel waves rather than one request after the other.
PARALLEL_REQUESTS = 8
PARALLEL_FROM = 16

WallClock = Callable[[], datetime]
#: An answer: httpx's, or the per-log sender's (`_http1`), which has what is read of it.
_Response = httpx.Response | WireResponse
_T = TypeVar("_T")


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class HttpExporter:
    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 3.0,
        transport: httpx.BaseTransport | None = None,
        wall_clock: WallClock = _utc_now,
    ) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "flowtrace"}
        # Nothing here reads an update's record: a server that can skips building it.
        headers[PREFER_HEADER] = RETURN_MINIMAL
        if api_key:
            headers["X-API-KEY"] = api_key
        self._client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=PARALLEL_REQUESTS, max_keepalive_connections=PARALLEL_REQUESTS
            ),
            transport=transport,
            follow_redirects=False,
            # Certificates matter only for https; loading them costs ~70 ms, which a plain
            # http endpoint (a local or in-cluster server) would pay at exit for nothing.
            verify=base_url.lower().startswith("https://"),
        )
        self._backend = install_on(self._client) if transport is None else None
        # Per-log requests over plain http without a proxy: the lean sender (issue 13).
        self._sender = sender_for(self._client, base_url) if transport is None else None
        self._pool: Parallel | None = None  # threads for parallel per-log requests
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._request_timeout: httpx.Timeout | None = None  # tighter, for one export
        self._wall_clock = wall_clock
        self._base_url = base_url.rstrip("/")
        key = hashlib.sha256(api_key.encode()).hexdigest()[:12] if api_key else "none"
        #: The spool's name for this destination (the key only as a digest).
        self.destination = f"http:{self._base_url};key={key}"
        self._closed = False
        self._discovered = False
        self.batch = False  # the server offers POST /flows/logs/batch
        self.update_extension = False  # the server takes end-of-log fields on update
        self.file_logs = True  # the server has prompt and tool routes (until one is missing)
        self.batch_file_logs = False  # the batch route takes prompt and tool log creates

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpExporter:
        assert settings.base_url is not None
        return cls(
            settings.base_url,
            settings.api_key,
            timeout_s=settings.timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
        )

    def close(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
        if self._sender is not None:
            self._sender.close()
        self._client.close()

    def interrupt(self) -> None:
        """From another thread: end the requests in progress now (at exit)."""
        if self._backend is not None:
            self._backend.interrupt()
        if self._sender is not None:
            self._sender.interrupt()

    # --- the Exporter protocol -------------------------------------------------------------
    def export(
        self, operations: Sequence[Operation], timeout_s: float | None = None
    ) -> list[Outcome]:
        if self._closed:  # never a raise: the pipeline keeps what was not delivered
            return not_delivered(f"the exporter for {self._base_url} is closed", len(operations))
        self._request_timeout = None
        if timeout_s is not None:
            self._request_timeout = httpx.Timeout(
                min(self._timeout_s, timeout_s), connect=min(self._connect_timeout_s, timeout_s)
            )
        try:
            return self._export(operations)
        finally:
            self._request_timeout = None

    def _export(self, operations: Sequence[Operation]) -> list[Outcome]:
        if not operations:  # a warm-up: connect and learn what the server offers
            if not self._discovered:
                self._discover()
            return []
        if not self._discovered:
            failure = self._discover()
            if failure is not None:
                return [failure] * len(operations)
        if self.batch:
            if not self.batch_file_logs and any(op.kind in FILE_LOG_KINDS for op in operations):
                return self._export_mixed(operations)
            outcomes = self._export_batch(operations)
            if isinstance(outcomes, _KindsRefused):
                self._stop_batching_file_logs(outcomes.reason)
                return [*outcomes.done, *self._export_mixed(operations[len(outcomes.done) :])]
            if outcomes is not None:
                return outcomes
            self.batch = False  # the route is not there after all: per-log from now on
        return self._export_each(operations)

    def _stop_batching_file_logs(self, reason: str) -> None:
        """Learned once: prompt and tool logs one by one from now on (none is lost: the
        refused ones are sent again that way)."""
        self.batch_file_logs = False
        logger.warning(
            "flowtrace: %s refused prompt and tool logs in a batch (%s); they are sent one by "
            "one from now on",
            self._url(BATCH_PATH),
            reason,
        )

    def _export_mixed(self, operations: Sequence[Operation]) -> list[Outcome]:
        """Flow logs through the batch route, prompt and tool logs one by one, in order; after
        a failure worth retrying what is left is not attempted (it may depend on it)."""
        outcomes: list[Outcome] = []
        start = 0
        while start < len(operations):
            per_log = operations[start].kind in FILE_LOG_KINDS
            end = start + 1
            while end < len(operations) and (operations[end].kind in FILE_LOG_KINDS) == per_log:
                end += 1
            run = operations[start:end]
            batched = None if per_log or not self.batch else self._export_flow_batch(run)
            if batched is None and not per_log:
                self.batch = False  # the route is not there after all: per-log from now on
            part = batched if batched is not None else self._export_each(run)
            outcomes.extend(part)
            start = end
            failed = [o for o in part if is_retryable(o.status)]
            if failed and start < len(operations):
                waits = [o.retry_after_s for o in failed if o.retry_after_s is not None]
                wait = max(waits) if waits else None
                outcomes.extend(not_delivered("not attempted", len(operations) - start, wait))
                break
        return outcomes

    # --- discovery ---------------------------------------------------------------------------
    def _discover(self) -> Outcome | None:
        """Learn what the server offers; the failure (with the server's `Retry-After`) if it
        could not be reached."""
        try:
            response = self._client.get(HEALTH_PATH, timeout=self._timeout())
        except httpx.HTTPError as exc:
            return Outcome(NOT_DELIVERED, None, None, _transport_error(exc))
        if is_retryable(response.status_code):
            retry_after = self._retry_after(response)
            return Outcome(
                NOT_DELIVERED, None, retry_after, f"health check answered {response.status_code}"
            )
        info = _json_or_none(response) if response.status_code == 200 else None
        if isinstance(info, dict) and isinstance(info.get(BATCH_FIELD), bool):
            self.batch = info[BATCH_FIELD]
            self.update_extension = bool(info.get("update_extension", True))
            kinds = info.get(BATCH_OPERATIONS_FIELD)
            named = (
                [kind for kind in kinds if isinstance(kind, str)] if isinstance(kinds, list) else []
            )
            self.batch_file_logs = FILE_LOG_KINDS.issubset(named)
        self._discovered = True
        return None

    # --- the batch extension ---------------------------------------------------------------
    def _export_flow_batch(self, operations: Sequence[Operation]) -> list[Outcome] | None:
        """A batch of flow logs and updates only (the server refuses none of its kinds)."""
        outcomes = self._export_batch(operations)
        assert not isinstance(outcomes, _KindsRefused)
        return outcomes

    def _export_batch(
        self, operations: Sequence[Operation]
    ) -> list[Outcome] | _KindsRefused | None:
        """Outcomes of one batch request; None if the server has no batch route; what was
        done if it refused the prompt and tool logs the batch holds."""
        holds_file_logs = self.batch_file_logs and any(
            op.kind in FILE_LOG_KINDS for op in operations
        )
        items = [self._batch_item(op) for op in operations]
        content = _encode({"operations": items})
        try:
            response = self._client.post(BATCH_PATH, content=content, timeout=self._timeout())
        except httpx.HTTPError as exc:
            return not_delivered(_transport_error(exc), len(operations))
        if response.status_code in _NO_BATCH:
            return None
        if holds_file_logs and response.status_code in _BATCH_REFUSED:
            return _KindsRefused([], f"it answered {response.status_code} to the whole batch")
        if not 200 <= response.status_code < 300:
            outcome = self._outcome(response)
            return [outcome] * len(operations)
        outcomes = _batch_outcomes(_json_or_none(response), len(operations), self._url(BATCH_PATH))
        refused = _first_unknown_op(operations, outcomes) if holds_file_logs else None
        if refused is not None:
            kind = operations[refused].kind
            return _KindsRefused(outcomes[:refused], f"a {kind!r} operation: an unknown op")
        return outcomes

    def _batch_item(self, op: Operation) -> dict[str, Any]:
        item = op.to_batch_item()
        if op.kind == BATCH_UPDATE and not self.update_extension:
            item["body"] = _contract_update(op.body)
        return item

    # --- the per-log contract --------------------------------------------------------------
    def _export_each(self, operations: Sequence[Operation]) -> list[Outcome]:
        """One request per operation. A short batch goes in order; a long one in waves of
        operations that do not depend on each other (a create on its parent's create, an
        update on its log's create and its children's), each wave's requests in parallel. After
        a failure worth retrying what is left is not attempted: it may depend on it."""
        if len(operations) < PARALLEL_FROM:
            waves = [[index] for index in range(len(operations))]
        else:
            waves = _waves(operations)
        outcomes: list[Outcome | None] = [None] * len(operations)
        for wave in waves:
            if len(wave) == 1:
                results = [self._send_one(operations[wave[0]])]
            else:
                results = self._parallel().map(self._send_one, [operations[i] for i in wave])
            for index, outcome in zip(wave, results, strict=True):
                outcomes[index] = outcome
            failed = [result for result in results if is_retryable(result.status)]
            if failed:
                waits = [o.retry_after_s for o in failed if o.retry_after_s is not None]
                rest = Outcome(NOT_DELIVERED, None, max(waits) if waits else None, "not attempted")
                outcomes = [rest if known is None else known for known in outcomes]
                break
        return [outcome for outcome in outcomes if outcome is not None]

    def _parallel(self) -> Parallel:
        if self._pool is None:
            self._pool = Parallel(PARALLEL_REQUESTS, "flowtrace-http")
        return self._pool

    def _send_one(self, op: Operation) -> Outcome:
        kind, body = op.kind, op.body
        if kind in FILE_LOG_KINDS and not self.file_logs:
            kind, body = BATCH_LOG, _as_flow_create(kind, body)
        path = CREATE_PATHS.get(kind) or f"/flows/logs/{op.log_id}"
        try:
            if kind != BATCH_UPDATE:
                # A create that names its log is answered as the original when it is sent
                # again (the contract's replay identity): safe to resend unanswered.
                resend = isinstance(body.get("log_id"), str)
                response = self._request("POST", path, _encode(body), op.query or None, resend)
                if kind in FILE_LOG_KINDS and _no_route(response):
                    self.file_logs = False  # learned once: flow logs from now on
                    return self._send_one(op)
            else:
                body = op.body if self.update_extension else _contract_update(op.body)
                response = self._request("PATCH", path, _encode(body))
        except httpx.HTTPError as exc:
            return Outcome(NOT_DELIVERED, None, None, _transport_error(exc))
        outcome = self._outcome(response)
        if outcome.ok and not _is_log_answer(outcome.body):
            return Outcome(NOT_DELIVERED, None, None, _not_the_contract(self._url(path), response))
        return outcome

    def _request(
        self,
        method: str,
        path: str,
        content: bytes,
        params: dict[str, str] | None = None,
        resend_unanswered: bool = False,
    ) -> _Response:
        """One per-log request, read whole: through the lean sender where it applies, else
        handed straight to the client's transport. The client's own layers around it (URL
        merging, cookies, the auth and redirect flows, event hooks) cost about as much CPU as
        the request itself (~0.5 of ~1.1 ms on a small virtual machine, issue 13) and none of
        them has work here: the key is a header, no redirect is followed, no cookie is kept.
        The transport is the one the client would use for the URL (proxies from the
        environment included)."""
        timeout = self._request_timeout or self._client.timeout
        if self._sender is not None:
            return self._sender.request(
                method, path, content, timeout, params, resend_unanswered=resend_unanswered
            )
        url = httpx.URL(self._base_url + path, params=params)
        request = httpx.Request(
            method,
            url,
            headers=self._client.headers,
            content=content,
            extensions={"timeout": timeout.as_dict()},
        )
        response = self._client._transport_for_url(url).handle_request(request)
        response.request = request
        try:
            response.read()
        finally:
            response.close()
        return response

    def _timeout(self) -> Any:
        """The client's timeouts, or tighter ones for this export."""
        return self._request_timeout or httpx.USE_CLIENT_DEFAULT

    def _outcome(self, response: _Response) -> Outcome:
        return Outcome(response.status_code, _json_or_none(response), self._retry_after(response))

    def _retry_after(self, response: _Response) -> float | None:
        return parse_retry_after(response.headers.get("Retry-After"), self._wall_clock())

    def _url(self, path: str) -> str:
        return self._base_url + path


@dataclass(frozen=True)
class _KindsRefused:
    """A batch whose prompt or tool logs the server refused: the outcomes of the operations
    before the first refused one (stored; the rest is to be sent again otherwise), and why."""

    done: list[Outcome]
    reason: str


def _first_unknown_op(operations: Sequence[Operation], outcomes: list[Outcome]) -> int | None:
    """The first prompt or tool log whose result is a 422 for its `op` (a server that does not
    know the kind, though it said it did)."""
    for index, (op, outcome) in enumerate(zip(operations, outcomes, strict=True)):
        if op.kind in FILE_LOG_KINDS and outcome.status == 422 and _names_op(outcome.body):
            return index
    return None


def _names_op(body: Any) -> bool:
    detail = body.get("detail") if isinstance(body, dict) else None
    return isinstance(detail, list) and any(
        isinstance(item, dict) and item.get("loc") == ["op"] for item in detail
    )


def _waves(operations: Sequence[Operation]) -> list[list[int]]:
    """The operations (by index) in waves: each after every operation it depends on (a create
    after its parent's create, an update after its log's create and its children's creates),
    each wave in the batch's order."""
    created: dict[str, int] = {}  # log id -> the wave of its create
    children: dict[str, int] = {}  # log id -> the last wave of its children's creates
    waves: list[list[int]] = []
    for index, op in enumerate(operations):
        if op.kind != BATCH_UPDATE:
            parent = op.body.get("trace_parent_id")
            wave = created[parent] + 1 if isinstance(parent, str) and parent in created else 0
            created[op.log_id] = wave
            if isinstance(parent, str):
                children[parent] = max(children.get(parent, -1), wave)
        else:
            wave = max(created.get(op.log_id, -1), children.get(op.log_id, -1)) + 1
        while len(waves) <= wave:
            waves.append([])
        waves[wave].append(index)
    return waves


class Parallel:
    """A few threads of our own for parallel requests (not concurrent.futures: it refuses work
    once the interpreter's exit has begun, when flowtrace's exit flush still sends).

    A `map` hands each thread one task, not one per item: the threads (and the caller, which
    works too) take the next item themselves until none is left. Waking a thread and being
    woken back cost more than a local request's own CPU on a small virtual machine (~100 us
    each, issue 13), so a wave of a thousand creates costs a few wake-ups, not two thousand.
    """

    def __init__(self, size: int, name: str) -> None:
        self._tasks: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._run, name=f"{name}-{n}", daemon=True)
            for n in range(size - 1)  # the caller is the last worker
        ]
        for thread in self._threads:
            thread.start()

    def map(self, fn: Callable[[Any], _T], items: Sequence[Any]) -> list[_T]:
        """`[fn(item) for item in items]`, up to `size` at a time; the first exception an
        item raised is raised once every item is done."""
        results: list[Any] = [None] * len(items)
        failures: list[BaseException] = []
        indexes = itertools.count()  # next() on it is atomic: each index is taken once

        def work() -> None:
            for index in indexes:
                if index >= len(items) or failures:
                    return
                try:
                    results[index] = fn(items[index])
                except BaseException as exc:
                    failures.append(exc)

        helpers = min(len(self._threads), len(items) - 1)
        finished = threading.Semaphore(0)

        def helper() -> None:
            try:
                work()
            finally:
                finished.release()

        for _ in range(helpers):
            self._tasks.put(helper)
        work()
        for _ in range(helpers):
            finished.acquire()
        if failures:
            raise failures[0]
        return results

    def _run(self) -> None:
        while True:
            task = self._tasks.get()
            if task is None:
                return
            task()

    def close(self) -> None:
        for _ in self._threads:
            self._tasks.put(None)
        for thread in self._threads:
            thread.join(1.0)


def _no_route(response: _Response) -> bool:
    """The server has no such route (not: the route refused this log, e.g. its parent is
    unknown, which a flowtrace server says with a 404 naming the parent)."""
    if response.status_code == 405:
        return True
    if response.status_code != 404:
        return False
    answer = _json_or_none(response)
    return not isinstance(answer, dict) or answer.get("detail") in (None, "Not Found")


def _as_flow_create(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """A prompt or tool log's create as a flow log's, for a server without those routes: the
    kernel and the prompt fields (tokens, costs, finish reason) move into its metadata."""
    flow_body: dict[str, Any] = {}
    moved: dict[str, Any] = {}
    kernel_field = _KERNEL_FIELDS.get(kind)
    for name, value in body.items():
        if name == kernel_field or name in PROMPT_LOG_FIELDS:
            moved[name] = value
        else:
            flow_body[name] = value
    if moved:
        flow_body["metadata"] = {**(flow_body.get("metadata") or {}), **moved}
    return flow_body


def _contract_update(body: dict[str, Any]) -> dict[str, Any]:
    """An update body as a server without flowtrace's extension takes it."""
    return {k: v for k, v in body.items() if k not in UPDATE_EXTENSION_FIELDS}


def _is_log_answer(body: Any) -> bool:
    """The contract's answer to a create or an update: a JSON object naming the log."""
    return isinstance(body, dict) and isinstance(body.get("id"), str) and bool(body["id"])


def _not_the_contract(url: str, response: _Response) -> str:
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    start = response.text[:60].strip() if response.content else ""
    shown = f": {start!r}" if start else " (empty)"
    return (
        f"{url} answered {response.status_code} with {kind}{shown}, which is not the "
        "contract's answer (is base_url the contract's /v5 base?)"
    )


def _batch_outcomes(payload: Any, count: int, url: str) -> list[Outcome]:
    """Per-operation outcomes from a batch answer; garbage counts as no answer (retried)."""
    results = payload.get("results") if isinstance(payload, dict) else None
    if not isinstance(results, list) or len(results) != count:
        return not_delivered("the batch answer was not understood", count)
    outcomes: list[Outcome] = []
    for result in results:
        status = result.get("status") if isinstance(result, dict) else None
        if not isinstance(status, int):
            return not_delivered("the batch answer was not understood", count)
        body = result.get("body")
        if 200 <= status < 300 and not _is_log_answer(body):
            error = f"{url} answered a result {status} without the log's id: not the contract's"
            outcomes.append(Outcome(NOT_DELIVERED, None, None, error))
            continue
        outcomes.append(Outcome(status, body))
    return outcomes


def _encode(payload: Any) -> bytes:
    """Compact JSON. Bodies are JSON-safe snapshots already; pydantic-core encodes fast."""
    try:
        return pydantic_core.to_json(payload)
    except Exception:
        return json.dumps(payload, separators=(",", ":"), default=str).encode()


def _json_or_none(response: _Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _transport_error(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
