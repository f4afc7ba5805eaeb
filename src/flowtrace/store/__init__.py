"""The log store: the one place where the contract's trace rules live, on SQLite or PostgreSQL.

Both the server (`flowtrace serve`) and the embedded default (no endpoint configured) go
through `Store`, so a local run and a team server behave alike. `Store(path)` opens a SQLite
file; `Store("postgresql://...")` a PostgreSQL database (extra `postgres`: psycopg 3 and its
pool, imported only then). The rules are written once against the repository seam
(`_repository`); each backend implements it (`_sqlite`, `_postgres`).

Decisions the contract leaves open (see also each method):
- A log names its Flow by `id` (must exist: 404) or `path` (created when new); both given must
  agree (422). With neither, a `version_id` query names the flow; otherwise 422 (loc
  body.path). A log without `flow` goes to the flow's version with attributes `{}`.
- A `version_id` or `environment` query targets that version; `flow.attributes` sent too must
  be that version's (422). `version_id` of another flow is 404.
- Replay: a log_id that exists answers 200 with the original response when the canonical
  request (body dumped with exclude_unset, keys sorted, plus the targeting query) is the same,
  409 otherwise. It is checked before the parent rules, so a retried child is still accepted
  after its parent closed.
- Times default to the server clock: start_time to "now", end_time to "now" when the log is
  (or is PATCHed) complete without one; created_at to "now". Ancestors widen on insert and
  when a PATCH gives a log its end.
- PATCH can close a log but never reopen one (409). save=false sticks: later PATCHes do not
  store payloads either.
- Deleting a log deletes the logs under it; unknown ids are ignored (retries succeed).
- Search: substring in inputs (as JSON text, keys included) and output, case-insensitive (for
  ASCII on SQLite, any letter on PostgreSQL), by a LIKE / ILIKE scan (no index: an FTS5
  trigram index cost 5x the ingest rate on SQLite, pg_trgm's 1.6x PostgreSQL's CPU per log;
  see bench/RESULTS.md), bounded by `search_window`.
- Lists: newest first by start_time (ties: newest insert first); start_date <= start_time
  < end_date; an unknown file_id or version_id is 404.
- Concurrency: on SQLite one write transaction runs at a time; on PostgreSQL many run at once
  at READ COMMITTED, and the repository keeps the same rules (see `_repository`). A
  transaction that meets another one (a deadlock, a serialization failure, a log id committed
  meanwhile) is run again, up to `_MAX_ATTEMPTS` times; then StoreBusy (503, Retry-After).
- Records carry the status as `trace_status` unless `status_field="log_status"` is passed;
  responses to writes carry it under the name the request used. Dump records with
  `exclude_unset=True` to send only the fields a log has (and only one status name).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from flowtrace._contract import (
    BATCH_LOG,
    BATCH_PROMPT_LOG,
    DEFAULT_STATUS_FIELD,
    FLOW,
    LogKind,
    StatusField,
    minimal_answer,
    wire_time_us,
)
from flowtrace._lazy import lazy_names
from flowtrace.store._codec import to_us
from flowtrace.store._errors import (
    RetryTransaction,
    StoreBusy,
    StoreConflict,
    StoreError,
    StoreInvalid,
    StoreNotFound,
    StoreSchemaError,
    StoreUnavailable,
    not_found,
)
from flowtrace.store._flow_cache import FlowCache, FlowKey, VersionKey
from flowtrace.store._ingest import (
    MODEL_CREATES,
    IngestItem,
    IngestOperation,
    prepare_create,
    prepare_update,
)
from flowtrace.store._logs import (
    LogChanges,
    LogUpdate,
    changes_of,
    create_log,
    delete_logs,
    update_log,
)
from flowtrace.store._prepare import PreparedLog, prepare_log
from flowtrace.store._repository import Database, marks
from flowtrace.store._schema import MIGRATIONS
from flowtrace.store._session import Session
from flowtrace.store._spans import SpanWrite, ingest_span
from flowtrace.store._sqlite import SqliteDatabase

# The wire models (pydantic) and what builds them (the reads, the batch extension, flows) are
# imported where a method needs them: the embedded path (`ingest`, a program's default
# destination) writes without them, so a short program's exit does not wait for pydantic to
# build them. `ListQuery`, `LogPage` and `FlowStats` are this module's on first use.
if TYPE_CHECKING:
    from flowtrace.models import (
        BatchResult,
        CreateFlowLogResponse,
        FlowLogRequest,
        FlowLogResponse,
        FlowResponse,
        FlowUpsertRequest,
        LogQuery,
        PromptLogRequest,
        ToolLogRequest,
        VersionResponse,
    )
    from flowtrace.store._reads import ListQuery, LogPage
    from flowtrace.store._records import FlowStats

_LAZY_EXPORTS = {
    "ListQuery": "flowtrace.store._reads",
    "LogPage": "flowtrace.store._reads",
    "FlowStats": "flowtrace.store._records",
}


__getattr__ = lazy_names(globals(), _LAZY_EXPORTS)


__all__ = [
    "SCHEMA_VERSION",
    "FlowStats",
    "IngestItem",
    "IngestOperation",
    "IngestResult",
    "ListQuery",
    "LogPage",
    "SpanWrite",
    "Store",
    "StoreBusy",
    "StoreConflict",
    "StoreError",
    "StoreInvalid",
    "StoreNotFound",
    "StoreSchemaError",
    "StoreUnavailable",
    "UpdateWrite",
    "is_database_url",
]

SCHEMA_VERSION = len(MIGRATIONS)
# traces_with_errors answers for a page of rows; bounded so a query never takes more marks.
_MAX_ERROR_CHECKS = 1000
# A transaction that met another one is run again up to this many times in all, after a
# jittered pause doubling from the first (two writers that collided rarely collide again).
_MAX_ATTEMPTS = 8
_FIRST_RETRY_PAUSE_S = 0.002
_MAX_RETRY_PAUSE_S = 0.1
_URL_SCHEMES = ("postgresql://", "postgres://")


def is_database_url(target: str | os.PathLike[str]) -> bool:
    """Whether `target` names a PostgreSQL database (a URL) rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(_URL_SCHEMES)


def _open_database(target: str | os.PathLike[str], in_program: bool) -> Database:
    if is_database_url(target):
        from flowtrace.store._postgres import PostgresDatabase  # needs the `postgres` extra

        return PostgresDatabase(str(target))
    return SqliteDatabase(Path(target), in_program=in_program)


def _file_log_request(kind: str, body: Any) -> PromptLogRequest | ToolLogRequest:
    """A span's prompt or tool log, validated as its request (they are few)."""
    from flowtrace.models import PromptLogRequest, ToolLogRequest

    model = PromptLogRequest if kind == BATCH_PROMPT_LOG else ToolLogRequest
    return model.model_validate(body)


_T = TypeVar("_T")


class UpdateWrite(NamedTuple):
    """A `PATCH /flows/logs/{log_id}` (for `Store.write_many`; a batch's update of a log of
    any kind). `record=False`: the client asked for the minimal answer (`Prefer:
    return=minimal`), so the log's record is not read back."""

    log_id: str
    request: LogUpdate
    record: bool = True


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class _OperationFailed(Exception):
    """One operation of an ingest failed otherwise than by a store rule (a bug, data the
    store cannot take): the transaction is redone without it."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(index, error)
        self.index = index
        self.error = error


IngestResult = tuple[int, Any]  # (HTTP status it would have had, its answer or error body)


def _failed(error: Exception) -> IngestResult:
    return 500, {"detail": f"{type(error).__name__}: {error}"}


def _expect_replays(session: Session, items: Sequence[object]) -> None:
    """Tell the repository which log ids the creates among `items` will look up."""
    ids = [
        item.request.log_id
        for item in items
        if isinstance(item, PreparedLog) and item.request.log_id is not None
    ]
    if len(ids) > 1:
        session.repo.expect_replays(ids)


def _result(status: int, body: Any) -> BatchResult:
    from flowtrace.models import BatchResult

    # built from known-good values: no validation per operation
    return BatchResult.model_construct(status=status, body=body)


class Store:
    """Thread-safe: one Store serves every thread of a process (the server's threadpool);
    several processes may open the same file or database.

    `target`: a SQLite file's path, or a `postgresql://` URL (see `is_database_url`)."""

    def __init__(
        self,
        target: str | os.PathLike[str],
        *,
        clock: Callable[[], datetime] | None = None,
        in_program: bool = False,
    ) -> None:
        """`in_program`: the store is the embedded destination, writing from inside the user's
        program, which must not pay a server's memory for it (a small SQLite page cache and no
        memory map)."""
        self._clock = clock or _utc_now
        self._flow_cache = FlowCache()
        self._db = _open_database(target, in_program)

    @property
    def location(self) -> str:
        """The file's path, or the database's URL without its password."""
        return self._db.location

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _now_us(self) -> int:
        return to_us(self._clock())

    def now_us(self) -> int:
        """The store's clock (microseconds since the epoch): what a write prepared outside
        the store (`prepare_log`) takes as "now"."""
        return self._now_us()

    def _write(self, work: Callable[[Session], _T], timeout_s: float | None = None) -> _T:
        """Run `work` in one write transaction: all of it is committed, or none of it. A
        transaction that met another one is run again (`work` is pure: it reads what it
        needs inside), up to _MAX_ATTEMPTS times, then StoreBusy. `timeout_s`: wait at most
        this long for another process's write lock (SQLite)."""
        pause = _FIRST_RETRY_PAUSE_S
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self._db.writing(timeout_s) as repo:
                    session = Session(repo, self._now_us())
                    result = work(session)
                    session.flush()
            except RetryTransaction as collision:
                if attempt == _MAX_ATTEMPTS:
                    raise StoreBusy(
                        f"the write met other writers {attempt} times; retry later ({collision})"
                    ) from collision
                time.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, _MAX_RETRY_PAUSE_S)
                continue
            assert repo.pending is not None
            self._flow_cache.publish(repo.pending)
            return result
        raise AssertionError("unreachable")

    # --- writes: each call is atomic (a failing one changes nothing) ---------------------
    def log(self, request: FlowLogRequest, query: LogQuery | None = None) -> CreateFlowLogResponse:
        """`POST /flows/log`. Raises StoreError 404/409/422 (see the module's rules)."""
        from flowtrace.models import CreateFlowLogResponse

        prepared = prepare_log(request, query, self._now_us())
        body = self._write(lambda session: create_log(self._flow_cache, session, prepared))
        return CreateFlowLogResponse.model_validate(body)

    def log_many(
        self, logs: Sequence[tuple[FlowLogRequest, LogQuery | None]]
    ) -> list[CreateFlowLogResponse | StoreError]:
        """Several `POST /flows/log` in one transaction (the server's group commit): each is
        stored or refused on its own, exactly as `log` would, its refusal returned in its
        place. Any other failure fails them all (nothing is stored)."""
        return cast("list[CreateFlowLogResponse | StoreError]", self.write_many(logs))

    def write_many(
        self, writes: Sequence[tuple[FlowLogRequest, LogQuery | None] | UpdateWrite]
    ) -> list[CreateFlowLogResponse | FlowLogResponse | StoreError | None]:
        """Several `POST /flows/log` (`(request, query)`) and `PATCH /flows/logs/{log_id}`
        (`UpdateWrite`) in one transaction, in order (the server's group commit): each is
        stored or refused on its own, exactly as `log` or `update` would, its answer (None
        for an update without its record) or its refusal returned in its place. Any other
        failure fails them all (nothing is stored)."""
        from flowtrace.models import CreateFlowLogResponse

        now_us = self._now_us()
        now_wire = wire_time_us(now_us)
        prepared: list[PreparedLog | UpdateWrite] = [
            write if isinstance(write, UpdateWrite) else prepare_log(*write, now_us, now_wire)
            for write in writes
        ]

        def work(
            session: Session,
        ) -> list[CreateFlowLogResponse | FlowLogResponse | StoreError | None]:
            _expect_replays(session, prepared)
            results: list[CreateFlowLogResponse | FlowLogResponse | StoreError | None] = []
            for item in prepared:
                try:
                    if isinstance(item, PreparedLog):
                        body = create_log(self._flow_cache, session, item)
                        results.append(CreateFlowLogResponse.model_validate(body))
                    elif item.record:
                        results.append(self._update(session, item.log_id, item.request))
                    else:
                        self._apply_update(session, item.log_id, item.request)
                        results.append(None)
                except StoreError as refusal:
                    results.append(refusal)
            return results

        return self._write(work)

    def log_file(
        self, request: PromptLogRequest | ToolLogRequest, query: LogQuery | None = None
    ) -> dict[str, Any]:
        """`POST /prompts/log` or `POST /tools/log`: the answer's body (`id`, `prompt_id` or
        `tool_id`, `version_id`, the status). The kernel sent (`prompt` or `tool`) is the
        version; without a status the log is complete (one call, logged once done)."""
        prepared = prepare_log(request, query, self._now_us())
        return self._write(lambda session: create_log(self._flow_cache, session, prepared))

    def _update(
        self,
        session: Session,
        log_id: str,
        request: LogUpdate,
        file_id: str | None = None,
        kind: LogKind = FLOW,
    ) -> FlowLogResponse:
        from flowtrace.store._reads import get_log_by_seq

        seq, trace_seq = self._apply_update(session, log_id, request, file_id, kind)
        session.flush()  # the record shows up-to-date counters
        return get_log_by_seq(session.repo, seq, trace_seq, request.status_field)

    def _apply_update(
        self,
        session: Session,
        log_id: str,
        request: LogUpdate,
        file_id: str | None = None,
        kind: LogKind = FLOW,
    ) -> tuple[int, int]:
        with session.operation():
            return update_log(session, log_id, changes_of(request), file_id, kind)

    def update(
        self,
        log_id: str,
        request: LogUpdate,
        *,
        file_id: str | None = None,
        kind: LogKind = FLOW,
    ) -> FlowLogResponse:
        """`PATCH /flows/logs/{log_id}` (and, with the prompt's or tool's `file_id` and
        `kind`, `PATCH /prompts/{id}/log/{log_id}`, `/tools/{id}/log/{log_id}`): the full
        record after the update, with its status under the name the request used. 404
        unknown log (or not of that file), 409 reopening a complete log."""
        return self._write(lambda session: self._update(session, log_id, request, file_id, kind))

    def batch(
        self, operations: Sequence[dict[str, Any]], *, update_records: bool = True
    ) -> list[BatchResult]:
        """The batch extension: operations apply in order, each on its own (a failing one is
        undone alone), all in one transaction. Malformed operations get a 422 result. A
        prompt or tool log's create is stored as `log_file` stores it, an update as `update`
        does (of a log of any kind), answered with the log's record, or `minimal_answer`
        without `update_records` (the client asked for the minimal answer)."""
        from flowtrace.models import UpdateOperation
        from flowtrace.store._batch import parse_operation

        now_us = self._now_us()
        now_wire = wire_time_us(now_us)
        prepared: list[PreparedLog | UpdateWrite | StoreError] = []
        for raw in operations:  # validation and encoding happen before taking the lock
            try:
                operation = parse_operation(raw)
            except StoreError as error:
                prepared.append(error)
                continue
            if not isinstance(operation, UpdateOperation):  # a create, of any kind
                prepared.append(prepare_log(operation.body, operation.query, now_us, now_wire))
            else:
                prepared.append(UpdateWrite(operation.log_id, operation.body, update_records))

        def work(session: Session) -> list[BatchResult]:
            _expect_replays(session, prepared)
            return [self._apply(session, item) for item in prepared]

        return self._write(work)

    def _apply(self, session: Session, item: PreparedLog | UpdateWrite | StoreError) -> BatchResult:
        try:
            if isinstance(item, StoreError):
                raise item
            if isinstance(item, PreparedLog):
                return _result(200, create_log(self._flow_cache, session, item))
            if not item.record:
                self._apply_update(session, item.log_id, item.request)
                return _result(200, minimal_answer(item.log_id))
            from flowtrace.store._records import record_json

            record = self._update(session, item.log_id, item.request)
            return _result(200, record_json(record, exclude_unset=True))
        except StoreError as error:
            return _result(error.status_code, {"detail": error.detail})

    def ingest_spans(self, writes: Sequence[SpanWrite]) -> list[str | StoreError]:
        """Logs made from OpenTelemetry spans (see `_spans` for their rules: placeholders for
        parents not seen yet, filled when they arrive), in one transaction: each span is
        stored or refused on its own, its log id or its refusal returned in its place."""

        def work(session: Session) -> list[str | StoreError]:
            results: list[str | StoreError] = []
            for write in writes:
                try:
                    results.append(ingest_span(self._flow_cache, session, write))
                except StoreError as refusal:
                    results.append(refusal)
            return results

        return self._write(work)

    def ingest(
        self, operations: Sequence[IngestItem], *, timeout_s: float | None = None
    ) -> list[IngestResult]:
        """The fast embedded path (`_ingest`): operations built by flowtrace's own client (a
        span's prompt or tool log validated as its request, they are few), in order, in one
        transaction, through the same trace rules as `batch`, without parsing,
        validating or answering them. Each result is (status, body): a create's answer, an
        update's `{"id"}`, or a refusal's `{"detail"}`. An operation that fails otherwise than
        by a rule fails alone (500, not worth a retry) and the others are committed without
        it. `timeout_s` bounds the wait for another process's lock (`interrupt()` ends it);
        database errors (a locked or full disk, StoreBusy) fail the whole call: nothing was
        written."""
        now_us = self._now_us()
        now_wire = wire_time_us(now_us)
        results: list[IngestResult | None] = [None] * len(operations)
        prepared: list[tuple[int, PreparedLog | LogChanges, str]] = []
        for index, op in enumerate(operations):  # before the lock, as `batch` does
            try:
                if op.kind == BATCH_LOG:
                    prepared.append(
                        (index, prepare_create(op.body, op.query, now_us, now_wire), "")
                    )
                elif op.kind in MODEL_CREATES:  # a span's log: validated (they are few)
                    request = _file_log_request(op.kind, op.body)
                    prepared.append((index, prepare_log(request, None, now_us, now_wire), ""))
                else:
                    prepared.append((index, prepare_update(op.body), op.log_id))
            except Exception as error:  # data the store cannot take: this one alone
                results[index] = _failed(error)
        while prepared:
            try:
                self._write(
                    partial(self._apply_ingest, prepared=prepared, results=results), timeout_s
                )
                break
            except _OperationFailed as failure:
                results[failure.index] = _failed(failure.error)
                prepared = [item for item in prepared if item[0] != failure.index]
        return [result if result is not None else (500, None) for result in results]

    def _apply_ingest(
        self,
        session: Session,
        *,
        prepared: list[tuple[int, PreparedLog | LogChanges, str]],
        results: list[IngestResult | None],
    ) -> None:
        done: list[tuple[int, IngestResult]] = []
        fatal: tuple[type[Exception], ...] = (RetryTransaction, StoreBusy, *self._db.errors)
        _expect_replays(session, [item for _, item, _ in prepared])
        for index, item, log_id in prepared:
            try:
                if isinstance(item, PreparedLog):
                    done.append((index, (200, create_log(self._flow_cache, session, item))))
                else:
                    with session.operation():
                        update_log(session, log_id, item)
                    done.append((index, (200, minimal_answer(log_id))))
            except fatal:
                raise  # the database, not the operation: the whole call fails (and is retried)
            except StoreError as refusal:
                done.append((index, (refusal.status_code, {"detail": refusal.detail})))
            except Exception as error:  # a bug, or data the store cannot take: this one alone
                raise _OperationFailed(index, error) from error
        for index, result in done:  # only once the whole transaction went through
            results[index] = result

    def interrupt(self) -> None:
        """From another thread: end the write in progress (at exit); for good."""
        self._db.interrupt()

    def delete_logs(self, ids: Sequence[str]) -> None:
        """`DELETE /logs?id=...`: the logs and every log under them. Unknown ids are ignored."""

        def work(session: Session) -> None:
            with session.operation():
                delete_logs(session, list(ids))

        self._write(work)

    def _flow_record(self, session: Session, keys: tuple[FlowKey, VersionKey]) -> FlowResponse:
        from flowtrace.store._records import flow_records

        flow, version = keys
        session.flush()
        return flow_records(session.repo, [(flow.ref, version.ref)])[(flow.ref, version.ref)]

    def upsert_flow(self, request: FlowUpsertRequest) -> FlowResponse:
        """`POST /flows`: the flow (created by path if new) with the version of these
        attributes (created if new). 404 unknown id, 422 neither path nor id."""

        from flowtrace.store._flows import upsert_flow

        def work(session: Session) -> FlowResponse:
            with session.operation():
                keys = upsert_flow(self._flow_cache, session, request)
            return self._flow_record(session, keys)

        return self._write(work)

    def deploy(self, flow_id: str, environment: str, version_id: str) -> FlowResponse:
        """Deploy a version to an environment; the flow record with that version.
        404 unknown flow, or a version that is not the flow's."""

        from flowtrace.store._flows import deploy

        def work(session: Session) -> FlowResponse:
            with session.operation():
                keys = deploy(self._flow_cache, session, flow_id, environment, version_id)
            return self._flow_record(session, keys)

        return self._write(work)

    # --- reads -----------------------------------------------------------------------------
    def get_log(
        self, log_id: str, *, status_field: StatusField = DEFAULT_STATUS_FIELD
    ) -> FlowLogResponse:
        """`GET /logs/{id}`: the log with its nested trace_children (start order) and `flow`."""
        from flowtrace.store._reads import get_log

        with self._db.reading() as db:
            return get_log(db, log_id, status_field)

    def list_logs(self, query: ListQuery | None = None) -> LogPage:
        """`GET /logs`: newest first by start_time (see `ListQuery` for what it takes).
        404 unknown file_id/version_id, 422 a bad page, size, status or kind."""
        from flowtrace.store._reads import ListQuery, list_logs

        with self._db.reading() as db:
            return list_logs(db, self._flow_cache, query or ListQuery())

    def traces_with_errors(self, root_ids: Sequence[str]) -> set[str]:
        """Which of these trace roots have a failed log below them (the root's own error
        aside): one EXISTS per root along the trace index, for a page of rows, not a scan."""
        ids = list(dict.fromkeys(root_ids))[:_MAX_ERROR_CHECKS]
        if not ids:
            return set()
        with self._db.reading() as db:
            rows = db.rows(
                f"SELECT r.id FROM logs r WHERE r.id IN ({marks(len(ids))})"
                " AND r.seq = r.trace_seq AND EXISTS (SELECT 1 FROM logs c"
                " WHERE c.trace_seq = r.seq AND c.seq != r.seq AND c.has_error = 1)",
                ids,
            )
        return {str(row[0]) for row in rows}

    def list_flows(self) -> list[FlowStats]:
        """Every flow by path, with counters (maintained on write: cheap at any size)."""
        from flowtrace.store._records import flow_stats

        with self._db.reading() as db:
            return flow_stats(db)

    def get_flow(self, flow_id: str) -> FlowStats:
        """One flow with its latest version and counters; 404 unknown."""
        from flowtrace.store._records import flow_stats

        with self._db.reading() as db:
            found = flow_stats(db, "WHERE f.id = ?", (flow_id,))
        if not found:
            raise not_found(f"Flow {flow_id!r} not found")
        return found[0]

    def list_versions(self, flow_id: str) -> list[VersionResponse]:
        """The flow's versions, oldest first, with their environments; 404 unknown flow."""
        from flowtrace.store._records import version_records

        with self._db.reading() as db:
            flow = self._flow_cache.require_flow(db, flow_id)
            return version_records(db, flow.ref, flow.path, flow.id)
