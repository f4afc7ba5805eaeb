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

The spool (`_otlp_spool`, unless `spool="off"`): a batch still not taken at the retry
deadline goes to disk, encoded, and from then on (the endpoint is down) new batches go
straight to disk while the oldest one on disk is tried again with backoff; once the endpoint
takes it, the disk is drained beside new batches. What is left at shutdown, after the send
deadline, is spooled too (within SPILL_GRACE_S), so a process that exits while the endpoint
is down leaves its spans for the next process that exports there; that process claims them
when its export thread starts and sends them in the background.

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
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

from flowtrace import _config, _guard, _op_taps
from flowtrace._accounting import Warnings
from flowtrace._contract import BATCH_LOG, INCOMPLETE, wire_time_ns
from flowtrace._otlp_encode import (
    SpanDraft,
    draft_attributes,
    encode_export_request,
    status_of,
    traceback_of,
    wire_ns,
)
from flowtrace._otlp_spool import OtlpSpool, SpooledBatch, SpoolRefused, spool_key
from flowtrace._remote import RemoteParent, w3c_ids
from flowtrace._retry import backoff_delay_s, is_retryable, parse_retry_after
from flowtrace._spool import SpoolUnavailable, WallClockUs
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
#: After the send deadline at shutdown, how long the thread may take to spool what is left.
SPILL_GRACE_S: Final = 5.0

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
        spool_wall_us: WallClockUs | None = None,
    ) -> None:
        """`spool_wall_us`: the spool's wall clock (its entries' age), in microseconds."""
        self.endpoint = endpoint
        self._headers = dict(headers)
        self.key = (endpoint, tuple(sorted(self._headers.items())))  # what configure() set
        self.spool_key = spool_key(endpoint, self._headers)  # its spool's name
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
        self._disk_clear = threading.Event()  # no batch is waiting on disk to be sent
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._deadline: float | None = None  # set by shutdown
        self._client: httpx.Client | None = None
        self._backend: Any = None
        self._warnings = Warnings()
        self._spool: OtlpSpool | None = None
        if settings.spool != "off":
            self._spool = OtlpSpool(
                spool_key(endpoint, self._headers),
                settings,
                wall_us=spool_wall_us,
                clock=clock,
                set_aside=self._spool_set_aside,
            )
        # on the export thread only
        self._drafts: dict[str, tuple[SpanDraft, dict[str, Any]]] = {}  # open: draft, body
        # the trace id of each log created early and not closed yet: its children's (a walk up
        # the logs otherwise, as deep as the trace)
        self._traces: dict[str, str] = {}
        self._ready: list[SpanDraft] = []
        self._ready_since: float | None = None
        # the endpoint is down: batches go to disk; the oldest on disk is tried at `_retry_at`
        self._spooling = False
        self._retry_at = 0.0
        self._attempt = 0  # retries of the batch on disk so far (its backoff)
        self._spooled_stopping = 0  # spans spooled once stopping
        # counters (ints: read by stats() from any thread)
        self.exported = 0
        self.retried = 0
        self.backlog_exported = 0  # spans of processes that are gone, sent from their spool
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
        """Wait until what was offered before this call is exported (or spooled, or
        dropped)."""
        if self._thread is None or self._done.is_set():
            return not self._incoming
        marker = _Flush()
        self._incoming.append(marker)
        self._wake.set()
        return marker.done.wait(timeout)

    def drain_backlog(self, timeout: float | None) -> bool:
        """Send what processes that are gone left in this endpoint's spool (`flowtrace spool
        drain`: the thread starts for it, though nothing is offered); True once no batch is
        left on disk, False if some still are after `timeout` (the endpoint refused them)."""
        self._ensure_thread()
        self._wake.set()
        return self._disk_clear.wait(timeout)

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
        # then the thread spools what is left (bounded by SPILL_GRACE_S on its side)
        return self._done.wait(STOP_GRACE_S + SPILL_GRACE_S)

    def stats(self) -> dict[str, Any]:
        """In spans: exported, queued, spooled (this process's, on disk now), dropped by
        reason; `backlog`: batches left by processes that are gone, still to send."""
        spool = self._spool
        return {
            "endpoint": self.endpoint,
            "exported": self.exported,
            "queued": self._offered - self._taken + len(self._ready),
            "retried": self.retried,
            "spooled": 0 if spool is None else spool.own_spans,
            "backlog": 0 if spool is None else spool.backlog,
            "backlog_exported": self.backlog_exported,
            "spool": None if spool is None else str(spool.path),
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
        self._claim()
        while True:
            self._take_in()
            if self._stop.is_set():
                self._drain()
                return
            if self._ready and self._due():
                self._send_batch()
                continue
            if self._disk_due():
                self._send_from_disk()
                continue
            if self._spool is None or not self._spool.waiting:
                self._disk_clear.set()
            self._wake.wait(self._idle_s())
            self._wake.clear()

    def _idle_s(self) -> float | None:
        """How long nothing is due: the next batch, or the next try of the disk's oldest."""
        due = []
        if self._ready_since is not None:
            due.append(self._ready_since + BATCH_INTERVAL_S)
        if self._spool is not None and self._spool.waiting:
            due.append(self._retry_at)
        return None if not due else max(0.0, min(due) - self._clock())

    def _due(self) -> bool:
        since = self._ready_since
        return len(self._ready) >= BATCH_SPANS or (
            since is not None and self._clock() >= since + BATCH_INTERVAL_S
        )

    def _drain(self) -> None:
        """Stopping: send everything (open logs too) until done or the deadline, then spool
        what is left (said once)."""
        while not self._past_deadline():
            if not self._take_all():
                break
            self._send_batch()
        else:
            self._spool_rest()
        spool = self._spool
        if spool is not None and self._spooled_stopping:
            self._warnings.once(
                "otlp:spooled-at-exit",
                "flowtrace: %d span(s) not exported to the OTLP endpoint %s at shutdown: "
                "spooled at %s (the next process exporting there sends them)",
                self._spooled_stopping,
                self.endpoint,
                spool.path,
            )

    def _take_all(self) -> bool:
        """Stopping: take in what is offered, open logs too; True if spans are ready."""
        self._take_in()
        if not self._incoming:
            self._close_open_drafts()
        return bool(self._ready)

    def _spool_rest(self) -> None:
        """Past the send deadline: what is left goes to disk, a batch at a time, within
        SPILL_GRACE_S (what is still left then is dropped, `shutdown`)."""
        if self._spool is None:
            return
        give_up_at = self._clock() + SPILL_GRACE_S
        while self._clock() < give_up_at and self._take_all():
            self._send_batch()  # past the deadline: to disk

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
        if operation.kind == BATCH_LOG:
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
        payload = self._encode(batch)
        if payload is None:
            return
        if self._spooling or (self._stop.is_set() and self._past_deadline()):
            self._keep(payload, len(batch), "shutdown" if self._stop.is_set() else "retry_deadline")
        else:
            self._send_with_retries(payload, len(batch))

    def _encode(self, batch: list[SpanDraft]) -> bytes | None:
        try:
            return gzip.compress(encode_export_request(batch, _resource(), _SCOPE), compresslevel=6)
        except ImportError:
            self._warnings.once(
                "otlp:missing",
                "flowtrace: the OTLP export needs opentelemetry-proto (pip install "
                "'flowtrace[otlp]'); logs are not exported to %s",
                self.endpoint,
            )
            self._drop("missing_dependency", len(batch))
            return None

    def _send_with_retries(self, payload: bytes, spans: int) -> None:
        """Post until accepted, refused, or the retry deadline (or the shutdown's): then it
        goes to the spool and the endpoint counts as down."""
        first_failure: float | None = None
        attempt = 0
        while True:
            status, retry_after, error = self._post(payload)
            if 200 <= status < 300:
                self.exported += spans
                return
            self.last_error = error
            now = self._clock()
            if not is_retryable(status):
                self._refused(status, error, spans)
                return
            first_failure = now if first_failure is None else first_failure
            delay = self._backoff(attempt, retry_after)
            attempt += 1
            wake_at = now + delay
            give_up = first_failure + self._retry_deadline_s
            if self._deadline is not None:
                give_up = min(give_up, self._deadline)
            if wake_at > give_up:
                if self._spool is not None:
                    # down: what follows goes straight to disk (at shutdown too: no batch
                    # waits out a deadline of its own), and this one is tried again from there
                    self._spooling, self._attempt, self._retry_at = True, attempt, wake_at
                self._keep(payload, spans, "shutdown" if self._stop.is_set() else "retry_deadline")
                return
            self.retried += spans
            if self._stop.is_set():
                time.sleep(delay)  # within the deadline (wake_at <= give_up)
            else:
                self._stop.wait(delay)  # a shutdown cuts the backoff short

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = backoff_delay_s(attempt, self._backoff_s, self._rng)
        return delay if retry_after is None else max(delay, retry_after)

    def _refused(self, status: int, error: str, spans: int) -> None:
        self._warnings.once(
            f"otlp:rejected:{status}",
            "flowtrace: the OTLP endpoint %s refused %d span(s): %s",
            self.endpoint,
            spans,
            error,
        )
        self._drop("rejected", spans)

    # --- the spool ----------------------------------------------------------------------------
    def _keep(self, payload: bytes, spans: int, reason: str) -> None:
        """A batch the endpoint did not take in time: to disk; dropped for `reason` without a
        spool, or for the spool's reason if it refuses (then the network is tried again for
        the next batch, rather than a disk that cannot hold it)."""
        spool = self._spool
        if spool is not None:
            try:
                self._disk_clear.clear()
                spool.put(payload, spans)
            except SpoolRefused as refused:
                self._spooling = False
                self.last_error = str(refused)
                reason = refused.reason
            else:
                if self._stop.is_set():
                    self._spooled_stopping += spans  # said once, for the whole shutdown
                    return
                self._warnings.once(
                    f"otlp:spooled:{reason}",
                    "flowtrace: the OTLP endpoint %s did not take %d span(s) (%s: %s); they "
                    "are spooled at %s and sent when it takes them. Counted in "
                    "flowtrace.stats()['otlp'].",
                    self.endpoint,
                    spans,
                    reason,
                    self.last_error,
                    spool.path,
                )
                return
        self._warnings.once(
            f"otlp:{reason}",
            "flowtrace: %d span(s) not exported to the OTLP endpoint %s (%s): %s",
            spans,
            self.endpoint,
            reason,
            self.last_error,
        )
        self._drop(reason, spans)

    def _claim(self) -> None:
        """At the thread's start: take over what processes that are gone spooled for this
        endpoint (sent in the background, beside new batches)."""
        spool = self._spool
        if spool is None:
            return
        try:
            if spool.claim():
                self._expire(force=True)
        except SpoolUnavailable as error:
            self._spool_unreadable(str(error))

    def _expire(self, *, force: bool = False) -> None:
        assert self._spool is not None
        try:
            spans = self._spool.expire(force=force)
        except SpoolUnavailable as error:
            self._spool_unreadable(str(error))
            return
        if spans:
            self._warnings.once(
                "otlp:spool_expired",
                "flowtrace: %d span(s) waited in the OTLP export's spool at %s longer than "
                "spool_max_age_s; they are dropped (counted in flowtrace.stats()['otlp']).",
                spans,
                self._spool.path,
            )
            self._drop("spool_expired", spans)

    def _disk_due(self) -> bool:
        spool = self._spool
        return (
            spool is not None
            and spool.waiting > 0
            and (not self._spooling or self._clock() >= self._retry_at)
        )

    def _send_from_disk(self) -> None:
        """One try of the oldest batch on disk: sent, it goes (and the endpoint is up);
        refused, it is dropped; else it stays, tried again after a backoff."""
        spool = self._spool
        assert spool is not None
        self._expire()
        unreadable = spool.unreadable
        try:
            spool.keep_alive()
            batch = spool.next()
        except SpoolUnavailable as failed:
            self._spool_unreadable(str(failed))
            return
        finally:
            self._count_unreadable(spool.unreadable - unreadable)
        if batch is None:
            return
        status, retry_after, error = self._post(batch.payload)
        if 200 <= status < 300:
            self._settle(batch)
            if batch.own:
                self.exported += batch.spans
            else:
                self.backlog_exported += batch.spans
            self._spooling, self._attempt = False, 0
            return
        self.last_error = error
        if not is_retryable(status):
            self._settle(batch)
            self._refused(status, error, batch.spans)
            return
        self._spooling = True
        self._retry_at = self._clock() + self._backoff(self._attempt, retry_after)
        self._attempt += 1
        self.retried += batch.spans

    def _count_unreadable(self, entries: int) -> None:
        if entries:
            self._warnings.once(
                "otlp:spool_corrupt",
                "flowtrace: %d entry(ies) of the OTLP export's spool at %s were not span "
                "batches; they are dropped (counted in flowtrace.stats()['otlp']).",
                entries,
                self._spool.path if self._spool is not None else None,
            )
            self._drop("spool_corrupt", entries)

    def _settle(self, batch: SpooledBatch) -> None:
        assert self._spool is not None
        try:
            self._spool.done(batch)
        except SpoolUnavailable as error:  # sent again by a later process: a replay
            self._spool_unreadable(str(error))

    def _spool_unreadable(self, error: str) -> None:
        """The spool cannot be read: what it holds waits there for a later process."""
        assert self._spool is not None
        self._spool.forget_waiting()
        self.last_error = error
        self._warnings.once(
            "otlp:spool_unavailable",
            "flowtrace: the OTLP export's spool cannot be used (%s); spans the endpoint "
            "does not take in time are dropped (counted in flowtrace.stats()['otlp']).",
            error,
        )

    def _spool_set_aside(self, path: Path) -> None:
        self._warnings.once(
            "otlp:spool-set-aside",
            "flowtrace: the OTLP export's spool file was not a readable spool; it was set "
            "aside as %s and a fresh spool started.",
            path,
        )

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
        if self._spool is not None:
            with _guard.guarded("otlp-spool-close"):
                self._spool.close()
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
