"""The OTLP export: a copy of every log, as an OpenTelemetry span, to an OTLP/HTTP traces
endpoint (`configure(otlp_endpoint=...)`), beside the main destination and independent of it.

Where it hooks in: the planner's operations (`_op_taps`), on the pipeline's worker. The user's
call path does not change at all (a sink would add a call per log start and end), and the
operations are the logs exactly as delivered: the bodies (scrubbed, bounded, with the
parentage the planner chose for late and forked children), fixed start times, and one
create plus, for a log sent early, one update to merge.

Its own queue and thread: the worker only appends each batch to a bounded deque (past the
bound, operations are dropped, counted in `stats()["otlp"]["dropped"]` and said once), so a
slow or dead OTLP backend never delays the main delivery, and memory stays bounded. The
export thread merges each log's operations into a span when its closing one arrives, sends
batches (protobuf, gzip), and retries what may succeed later (no answer, 408, 429, 502, 503,
504; `Retry-After` honoured) with backoff, for `retry_deadline_s` at most; anything else is
dropped (`rejected`). At shutdown and exit it sends what it has within what is left of the
same bound, logs still open included (as spans ending then, `flowtrace.trace_status`
incomplete).

Ids: a span's trace id is derived from its trace's root log id, its span id from its log id
(`_w3c`), so a log's parent is its span's parent; a trace continued from another service keeps
that service's trace id, and its root spans name the remote span as their parent.
"""

from __future__ import annotations

import gzip
import os
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from flowtrace import _config, _guard, _op_taps
from flowtrace._accounting import Warnings
from flowtrace._contract import INCOMPLETE, wire_time_ns
from flowtrace._otlp_encode import (
    SpanDraft,
    draft_attributes,
    encode_export_request,
    status_of,
    traceback_of,
    wire_ns,
)
from flowtrace._remote import RemoteParent, w3c_ids
from flowtrace._retry import backoff_delay_s, is_retryable, parse_retry_after
from flowtrace._w3c import span_id_of, trace_id_of

if TYPE_CHECKING:
    import httpx

    from flowtrace._planner import PlannedOp

__all__ = ["OtlpExport", "current", "flush", "parse_headers", "shutdown", "stats"]

#: Operations waiting for the export thread; past this, new ones are dropped (`queue_full`).
MAX_QUEUED_OPS: Final = 20_000
#: Spans per request, and how long a span waits for others to share a request.
BATCH_SPANS: Final = 512
#: Spans made and waiting to be sent, at most (more operations wait in the queue).
MAX_READY_SPANS: Final = 4 * BATCH_SPANS
BATCH_INTERVAL_S: Final = 1.0
#: The least an exit leaves the export to send what it has, whatever the main delivery used;
#: and how long its thread then has to stop once its request is interrupted.
MIN_EXIT_S: Final = 0.2
STOP_GRACE_S: Final = 0.5

_SCOPE: Final = ("flowtrace", "0.1.0")


def parse_headers(value: str | Mapping[str, str] | None) -> dict[str, str]:
    """`key=value,key2=value2` (values percent-encoded, as OTEL_EXPORTER_OTLP_HEADERS has them)
    or a mapping, as request headers. An entry that is not a valid header raises ValueError."""
    if value is None:
        return {}
    pairs: list[tuple[str, str]]
    if isinstance(value, Mapping):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = []
        for entry in value.split(","):
            if not entry.strip():
                continue
            key, equals, text = entry.partition("=")
            if not equals or not key.strip():
                raise ValueError(f"OTLP header entry {entry.strip()!r} is not key=value")
            pairs.append((key.strip(), unquote(text.strip())))
    for key, text in pairs:
        if (
            not key.isascii()
            or any(c in key for c in " \t\r\n:")
            or any(c in text for c in "\r\n\0")
        ):
            raise ValueError(f"OTLP header {key!r} is not a valid HTTP header")
    return dict(pairs)


def _kind_of(body: Mapping[str, Any]) -> str:
    if isinstance(body.get("prompt"), (dict, str)):
        return "prompt"
    if isinstance(body.get("tool"), dict):
        return "tool"
    return "flow"


class _Flush:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = threading.Event()


class OtlpExport:
    """One OTLP endpoint's queue, thread and counters."""

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str],
        settings: _config.Settings,
        *,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_queued_ops: int = MAX_QUEUED_OPS,
    ) -> None:
        self.endpoint = endpoint
        self._headers = dict(headers)
        self.key = (endpoint, tuple(sorted(self._headers.items())))  # what configure() set
        self._status_field = settings.status_field
        self._timeout_s = settings.timeout_s
        self._connect_timeout_s = settings.connect_timeout_s
        self._backoff_s = settings.retry_backoff_s
        self._retry_deadline_s = settings.retry_deadline_s
        self._transport = transport
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._max_queued = max(1, max_queued_ops)
        self._incoming: deque[PlannedOp | _Flush] = deque()
        # operations in `_incoming` (it also holds flush markers): offered minus taken, each
        # counter written by one thread only
        self._offered = 0
        self._taken = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # set by shutdown
        self._client: httpx.Client | None = None
        self._backend: Any = None
        self._warnings = Warnings()
        # on the export thread only
        self._drafts: dict[str, tuple[SpanDraft, dict[str, Any]]] = {}  # open: draft, body
        # the trace id of each log created early and not closed yet: its children's (a walk up
        # the logs otherwise, as deep as the trace)
        self._traces: dict[str, str] = {}
        self._ready: list[SpanDraft] = []
        self._ready_since: float | None = None
        # counters (ints: read by stats() from any thread)
        self.exported = 0
        self.retried = 0
        self.dropped: dict[str, int] = {}
        self.last_error: str | None = None
        self._count_lock = threading.Lock()  # drops are counted by the worker and the thread

    # --- the worker's side --------------------------------------------------------------------
    def offer(self, ops: Sequence[PlannedOp]) -> None:
        """Take a planned batch in (the pipeline's worker): a bounded append, nothing more."""
        if self._stop.is_set():
            return
        own = [op for op in ops if op.log is not None]
        if self._offered - self._taken + len(own) > self._max_queued:
            self._drop("queue_full", sum(1 for op in own if op.final))
            return
        self._incoming.extend(own)
        self._offered += len(own)
        self._ensure_thread()
        self._wake.set()

    def _ensure_thread(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                thread = threading.Thread(target=self._run, name="flowtrace-otlp", daemon=True)
                thread.start()
                self._thread = thread

    # --- any thread -----------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was offered before this call is exported (or dropped)."""
        if self._thread is None or self._done.is_set():
            return not self._incoming
        marker = _Flush()
        self._incoming.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def stop(self) -> None:
        """Stop now, without waiting (the endpoint was configured away)."""
        self._deadline = self._clock()
        self._stop.set()
        self._wake.set()

    def shutdown(self, timeout: float | None) -> bool:
        """Send what is waiting within `timeout` (logs still open as incomplete spans), then
        stop; what is left is dropped (`shutdown`). True if the thread stopped in time."""
        self._deadline = None if timeout is None else self._clock() + timeout
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is None:
            return True
        if self._done.wait(timeout):
            return True
        backend = self._backend
        if backend is not None:
            backend.interrupt()  # a request blocked on a hung endpoint ends now
        return self._done.wait(STOP_GRACE_S)

    def stats(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "exported": self.exported,
            "queued": self._offered - self._taken + len(self._ready),
            "retried": self.retried,
            "dropped": dict(self.dropped),
            "last_error": self.last_error,
        }

    # --- the export thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug: reported, never the user's process
            _guard.internal_error("otlp-export", exc)
        finally:
            self._finish()

    def _loop(self) -> None:
        while True:
            self._take_in()
            if self._stop.is_set():
                self._drain()
                return
            if self._ready and self._due():
                self._send_batch()
                continue
            timeout = None
            if self._ready_since is not None:
                timeout = max(0.0, self._ready_since + BATCH_INTERVAL_S - self._clock())
            self._wake.wait(timeout)
            self._wake.clear()

    def _due(self) -> bool:
        since = self._ready_since
        return len(self._ready) >= BATCH_SPANS or (
            since is not None and self._clock() >= since + BATCH_INTERVAL_S
        )

    def _drain(self) -> None:
        """Stopping: send everything (open logs too) until done or the deadline."""
        while not self._past_deadline():
            self._take_in()
            if not self._incoming:
                self._close_open_drafts()
            if not self._ready:
                return
            self._send_batch()

    def _take_in(self) -> None:
        """Merge what the worker offered into spans, while fewer than MAX_READY_SPANS wait to
        be sent (the rest waits in the bounded queue: memory stays bounded when sending is
        slow)."""
        incoming = self._incoming
        while incoming and len(self._ready) < MAX_READY_SPANS:
            item = incoming.popleft()
            if isinstance(item, _Flush):
                while self._ready and not self._stop.is_set():
                    self._send_batch()
                item.done.set()
                continue
            self._taken += 1
            try:
                self._absorb(item)
            except Exception as exc:  # one log's data: that span is lost, the others go on
                _guard.internal_error("otlp-span", exc)
                self._drop("encode_error")

    def _absorb(self, op: PlannedOp) -> None:
        """Merge one operation into its log's draft; a closing one makes the span ready."""
        operation = op.operation
        log = op.log
        assert log is not None
        if operation.kind == "log":
            draft = self._new_draft(operation.body, log)
            if not op.final:
                self._drafts[operation.log_id] = (draft, dict(operation.body))
                self._traces[operation.log_id] = draft.trace_id
                return
            entry = (draft, operation.body)  # read only: the main delivery's body
        else:
            self._traces.pop(operation.log_id, None)
            found = self._drafts.pop(operation.log_id, None)
            if found is None:  # its create was dropped (queue_full): nothing to complete
                if op.final:
                    self._drop("incomplete")
                return
            entry = found
            entry[1].update(operation.body)
        self._make_ready(*entry)

    def _new_draft(self, body: Mapping[str, Any], log: Any) -> SpanDraft:
        log_id = body.get("log_id") or log.log_id
        parent = log.parent
        parent_id = body.get("trace_parent_id")
        remote = isinstance(parent, RemoteParent) and parent.trusted
        if remote:
            trace_id, parent_span = parent.context.trace_id, parent.context.span_id
        elif parent_id:
            trace_id = self._traces.get(parent_id) or w3c_ids(log)[0]
            parent_span = span_id_of(parent_id)
        else:  # a root, here and at the destination (forked, late, or untrusted)
            trace_id, parent_span = trace_id_of(log_id), None
        start_ns = wire_ns(body.get("start_time")) or 0
        return SpanDraft(
            trace_id=trace_id,
            span_id=span_id_of(log_id),
            parent_span_id=parent_span,
            name=str(body.get("path") or log.path),
            start_ns=start_ns,
            end_ns=start_ns,
            remote_parent=remote,
        )

    def _make_ready(self, draft: SpanDraft, body: dict[str, Any], status: str = "") -> None:
        draft.end_ns = wire_ns(body.get("end_time")) or draft.start_ns
        draft.attributes = draft_attributes(
            body, _kind_of(body), status or status_of(body, self._status_field)
        )
        error = body.get("error")
        draft.error = str(error) if error else None
        draft.traceback = traceback_of(body) if error else None
        self._ready.append(draft)
        if self._ready_since is None:
            self._ready_since = self._clock()

    def _close_open_drafts(self) -> None:
        """At shutdown: logs created early that never closed go as spans ending now."""
        now = wire_time_ns(time.time_ns())
        for draft, body in self._drafts.values():
            body.setdefault("end_time", now)
            self._make_ready(draft, body, INCOMPLETE)
        self._drafts.clear()

    def _past_deadline(self) -> bool:
        return self._deadline is not None and self._clock() >= self._deadline

    # --- sending ------------------------------------------------------------------------------
    def _send_batch(self) -> None:
        batch = self._ready[:BATCH_SPANS]
        del self._ready[:BATCH_SPANS]
        if not self._ready:
            self._ready_since = None
        try:
            payload = gzip.compress(
                encode_export_request(batch, _resource(), _SCOPE), compresslevel=6
            )
        except ImportError:
            self._warnings.once(
                "otlp:missing",
                "flowtrace: the OTLP export needs opentelemetry-proto (pip install "
                "'flowtrace[otlp]'); logs are not exported to %s",
                self.endpoint,
            )
            self._drop("missing_dependency", len(batch))
            return
        first_failure: float | None = None
        attempt = 0
        while True:
            status, retry_after, error = self._post(payload)
            if 200 <= status < 300:
                self.exported += len(batch)
                return
            self.last_error = error
            now = self._clock()
            if not is_retryable(status):
                self._warnings.once(
                    f"otlp:rejected:{status}",
                    "flowtrace: the OTLP endpoint %s refused %d span(s): %s",
                    self.endpoint,
                    len(batch),
                    error,
                )
                self._drop("rejected", len(batch))
                return
            first_failure = now if first_failure is None else first_failure
            delay = backoff_delay_s(attempt, self._backoff_s, self._rng)
            if retry_after is not None:
                delay = max(delay, retry_after)
            attempt += 1
            wake_at = now + delay
            give_up = first_failure + self._retry_deadline_s
            if self._deadline is not None:
                give_up = min(give_up, self._deadline)
            if wake_at > give_up:
                reason = "shutdown" if self._stop.is_set() else "retry_deadline"
                self._warnings.once(
                    f"otlp:{reason}",
                    "flowtrace: %d span(s) not exported to the OTLP endpoint %s (%s): %s",
                    len(batch),
                    self.endpoint,
                    reason,
                    error,
                )
                self._drop(reason, len(batch))
                return
            self.retried += len(batch)
            if self._stop.is_set():
                time.sleep(delay)  # within the deadline (wake_at <= give_up)
            else:
                self._stop.wait(delay)  # a shutdown cuts the backoff short

    def _post(self, payload: bytes) -> tuple[int, float | None, str]:
        """(status, Retry-After seconds, error text); status 0: no answer."""
        try:
            client = self._ensure_client()
            timeout = self._timeout_s
            if self._deadline is not None:
                timeout = max(0.05, min(timeout, self._deadline - self._clock()))
            answer = client.post(self.endpoint, content=payload, timeout=timeout)
        except Exception as exc:  # connection refused, reset, timeout: all worth a retry
            return 0, None, f"{type(exc).__name__}: {exc}"
        if 200 <= answer.status_code < 300:
            return answer.status_code, None, ""
        retry_after = parse_retry_after(answer.headers.get("Retry-After"))
        return answer.status_code, retry_after, f"{answer.status_code} {answer.text[:200]}"

    def _ensure_client(self) -> httpx.Client:
        client = self._client
        if client is None:
            import httpx

            from flowtrace.exporters._interruptible import install_on

            headers = {
                "Content-Type": "application/x-protobuf",
                "Content-Encoding": "gzip",
                "User-Agent": "flowtrace",
                **self._headers,
            }
            client = httpx.Client(
                headers=headers,
                timeout=httpx.Timeout(self._timeout_s, connect=self._connect_timeout_s),
                transport=self._transport,
                follow_redirects=False,
                verify=self.endpoint.lower().startswith("https://"),
            )
            self._backend = install_on(client) if self._transport is None else None
            self._client = client
        return client

    def _drop(self, reason: str, count: int = 1) -> None:
        if count <= 0:
            return
        with self._count_lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + count
        if reason in ("queue_full", "incomplete", "encode_error"):
            self._warnings.once(
                f"otlp:{reason}",
                "flowtrace: log(s) not exported to the OTLP endpoint %s (%s); the main "
                "destination is not affected. Counted in flowtrace.stats()['otlp'].",
                self.endpoint,
                reason,
            )

    def _finish(self) -> None:
        left = len(self._ready) + len(self._drafts)
        left += sum(1 for item in self._incoming if not isinstance(item, _Flush) and item.final)
        if left:
            self._drop("shutdown", left)
        for item in self._incoming:
            if isinstance(item, _Flush):
                item.done.set()
        self._incoming.clear()
        self._ready.clear()
        self._drafts.clear()
        self._traces.clear()
        client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:
                _guard.internal_error("otlp-close", exc)
        self._done.set()


def _resource() -> dict[str, Any]:
    return {
        "service.name": os.environ.get("OTEL_SERVICE_NAME") or "flowtrace",
        "telemetry.sdk.name": "flowtrace",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": _SCOPE[1],
    }


# --- the process's export, following the settings ------------------------------------------

_current: OtlpExport | None = None
_lock = threading.Lock()


def current() -> OtlpExport | None:
    return _current


def _apply(settings: _config.Settings) -> None:
    """configure() was called: export to the endpoint now named (a new one starts afresh;
    the old one sends what it has in the background and stops)."""
    global _current
    endpoint = (settings.otlp_endpoint or "").strip()
    with _lock:
        old = _current
        new = None
        if endpoint:
            try:
                new = OtlpExport(endpoint, parse_headers(settings.otlp_headers), settings)
            except ValueError as exc:
                Warnings().once("otlp:headers", "flowtrace: OTLP export off: %s", exc)
        if old is not None and new is not None and old.key == new.key:
            return  # the same export: it goes on (a thread and a queue are not made twice)
        _current = new
        if old is not None:
            _op_taps.remove_tap(old.offer)
            old.stop()
        if new is not None:
            _op_taps.add_tap(new.offer)


def flush(timeout: float | None = None) -> bool:
    export = _current
    return True if export is None else export.flush(timeout)


def shutdown(timeout: float | None) -> None:
    """At the pipeline's shutdown (its last operations are planned by then)."""
    export = _current
    if export is not None:
        export.shutdown(None if timeout is None else max(MIN_EXIT_S, timeout))


def stats() -> dict[str, Any] | None:
    export = _current
    return None if export is None else export.stats()


def _after_fork_in_child() -> None:
    global _current, _lock
    _lock = threading.Lock()
    old, _current = _current, None
    if old is not None:
        _op_taps.remove_tap(old.offer)
    _apply(_config.get_settings())  # the parent's thread is not ours: a fresh export


def install() -> None:
    _config.on_change(_apply)
    _apply(_config.get_settings())
    if hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
