"""The trace rules for writing logs: targeting, parents, replays, widening, updates, deletes.

Every function runs inside a `Session` (one write transaction, through its repository: no SQL
here) and raises `StoreError` for a request the contract refuses. Each checks everything that
can refuse a request before it writes anything, so a refused operation leaves nothing to undo
(`Session.operation` enforces it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from flowtrace._contract import (
    COMPLETE,
    FLOW,
    INCOMPLETE,
    PAYLOAD_FIELDS,
    STATUS_FIELDS,
    LogKind,
)
from flowtrace.store._codec import compact_json, new_id, to_us
from flowtrace.store._errors import StoreError, conflict, invalid, not_found
from flowtrace.store._flow_cache import (
    FlowCache,
    FlowKey,
    VersionKey,
    attributes_digest,
    normalize_path,
)
from flowtrace.store._prepare import PreparedLog, Routing
from flowtrace.store._repository import NewLog, Node, Reader, Repository
from flowtrace.store._session import Session

if TYPE_CHECKING:  # the wire models: the embedded path writes without importing them
    from flowtrace.models import (
        FlowLogUpdateRequest,
        PromptLogUpdateRequest,
        ToolLogUpdateRequest,
    )
    from flowtrace.store._prepare import LogRequest

__all__ = [
    "TIME_FIELDS",
    "LogChanges",
    "LogUpdate",
    "Node",
    "Target",
    "changes_of",
    "create_log",
    "delete_logs",
    "find_target",
    "update_log",
    "write_log",
]

# --- targeting: which flow and version a log goes to -----------------------------------------


@dataclass(slots=True)
class Target:
    """Where a log goes, found without writing: a flow or the path of a new one, and a
    version or the attributes of a new one."""

    flow: FlowKey | None
    path: str | None
    version: VersionKey | None
    attributes: tuple[str, bytes] | None
    kind: LogKind = FLOW

    def materialize(self, flow_cache: FlowCache, session: Session) -> tuple[FlowKey, VersionKey]:
        """Create what is new (call once every check has passed)."""
        flow = self.flow
        if flow is None:
            assert self.path is not None
            flow = flow_cache.create_flow(session, self.path, self.kind)
        version = self.version
        if version is None:
            assert self.attributes is not None
            version = flow_cache.create_version(session, flow, *self.attributes)
        return flow, version


def _flow_of_request(
    flow_cache: FlowCache, db: Reader, request: LogRequest, kind: LogKind
) -> tuple[FlowKey | None, str | None]:
    """`id` names an existing file; `path` finds one or names a new one; both must agree, and
    the file must be of the log's kind (409)."""
    path = normalize_path(request.path, ["body", "path"]) if request.path is not None else None
    if request.id is not None:
        flow = flow_cache.flow_by_id(db, request.id)
        if flow is None:
            raise not_found(f"{kind.capitalize()} {request.id!r} not found")
        if path is not None and path != flow.path:
            raise invalid(["body", "path"], f"{flow.kind} {request.id!r} has path {flow.path!r}")
        flow.require_kind(kind)
        return flow, path
    if path is None:
        return None, None
    found = flow_cache.find_flow_by_path(db, path)
    if found is not None:
        found.require_kind(kind)
    return found, path


def _version_attributes(prepared: PreparedLog) -> dict[str, Any] | None:
    """What identifies the log's version, when the request gave it: a flow's `flow.attributes`,
    a prompt's or a tool's kernel."""
    if prepared.kind != FLOW:
        return prepared.kernel
    flow = getattr(prepared.request, "flow", None)  # a flow's request (or `_prepare.Routing`)
    return flow.attributes if flow is not None else None


def _check_attributes(prepared: PreparedLog, version: VersionKey) -> None:
    attributes = _version_attributes(prepared)
    if attributes is not None and (prepared.kind == FLOW or attributes):
        _, key = attributes_digest(attributes)
        if key != version.attributes_digest:
            field: list[str | int] = (
                ["body", "flow", "attributes"] if prepared.kind == FLOW else ["body", prepared.kind]
            )
            raise invalid(
                field,
                f"the attributes differ from those of the targeted version {version.id!r}",
            )


def find_target(flow_cache: FlowCache, db: Reader, prepared: PreparedLog) -> Target:
    request, query, kind = prepared.request, prepared.query, prepared.kind
    flow, path = _flow_of_request(flow_cache, db, request, kind)
    if query is not None and query.version_id is not None:
        version = flow_cache.require_version(db, query.version_id)
        if flow is None and path is None:
            flow = flow_cache.flow_by_ref(db, version.flow_ref)
            flow.require_kind(kind)
        elif flow is None or version.flow_ref != flow.ref:
            raise not_found(f"{kind.capitalize()} {path!r} has no version {query.version_id!r}")
        _check_attributes(prepared, version)
        return Target(flow, None, version, None, kind)
    if path is None and flow is None:
        raise invalid(
            ["body", "path"], "give the Flow's path or id (or a version_id query)", "missing"
        )
    if query is not None and query.environment is not None:
        if flow is None:  # a new flow has nothing deployed
            raise not_found(f"no version of Flow {path!r} is deployed to {query.environment!r}")
        version = flow_cache.deployed_version(db, flow, query.environment)
        _check_attributes(prepared, version)
        return Target(flow, None, version, None, kind)
    text, key = attributes_digest(_version_attributes(prepared) or {})
    found = flow_cache.find_version(db, flow.ref, key) if flow is not None else None
    return Target(flow, path, found, (text, key), kind)


# --- creating a log ----------------------------------------------------------------------------


def created_response(
    log_id: str, flow_id: str, version_id: str, prepared: PreparedLog
) -> dict[str, Any]:
    return {
        "id": log_id,
        f"{prepared.kind}_id": flow_id,  # flow_id, prompt_id or tool_id
        "version_id": version_id,
        prepared.status_field: prepared.status,
    }


def _open_parent(repo: Repository, parent_id: str) -> tuple[int, Node]:
    """The parent's trace and node, locked; it must exist (404) and still be open (409)."""
    parent = repo.parent(parent_id)
    if parent is None:
        raise not_found(f"trace parent log {parent_id!r} not found")
    if parent.complete:
        raise conflict(f"trace parent log {parent_id!r} is complete: no log can be added under it")
    return parent.trace_seq, parent.node


def _replay(
    flow_cache: FlowCache, session: Session, prepared: PreparedLog
) -> dict[str, Any] | None:
    """The stored answer when this log_id exists: same request -> same response, else 409. A
    placeholder by that id (a remote child came first) is filled by this request instead."""
    log_id = prepared.request.log_id
    if log_id is None:
        return None
    stored = session.repo.replay_of(log_id)
    if stored is None:
        return None
    if stored.placeholder:
        from flowtrace.store._spans import fill_placeholder  # _spans builds on this module

        return fill_placeholder(flow_cache, session, prepared)
    if stored.request_digest != prepared.request_digest:
        raise conflict(f"log {log_id!r} already exists with a different body")
    return created_response(log_id, stored.flow_id, stored.version_id, prepared)


def _insert(flow_cache: FlowCache, session: Session, prepared: PreparedLog) -> dict[str, Any]:
    """Check everything, then write: a refused log writes nothing.

    A known log_id is answered first (a replay), so a retried child is accepted even after
    its parent closed or its environment was redeployed."""
    request = prepared.request
    repo = session.repo
    replay = _replay(flow_cache, session, prepared)
    if replay is not None:
        return replay
    target = _target(flow_cache, session, prepared)
    parent: Node | None = None
    trace_seq: int | None = None
    if request.trace_parent_id is not None:
        try:
            trace_seq, parent = _open_parent(repo, request.trace_parent_id)
        except StoreError:
            # A child from another service may arrive before its parent or after it completed
            # (store/_spans.py: the remote parent's rules); any other child is refused.
            from flowtrace.store._spans import remote_child_parent

            found = remote_child_parent(flow_cache, session, prepared)
            if found is None:
                raise
            trace_seq, parent = found
    # --- every check passed: write
    return write_log(flow_cache, session, prepared, target, trace_seq, parent)


def _target(flow_cache: FlowCache, session: Session, prepared: PreparedLog) -> Target:
    """`find_target`, remembered for the transaction where the request is the embedded path's
    `Routing` (its flow's `Kernel` is one object per attributes snapshot: every log of a
    function has the same one) and both the flow and the version exist: the next log of the
    same function is routed without a lookup."""
    request = prepared.request
    if request.__class__ is not Routing or prepared.query is not None:
        return find_target(flow_cache, session.repo, prepared)
    assert isinstance(request, Routing)
    key = (request.path, request.id, id(request.flow), prepared.kind)
    known = session.targets.get(key)
    if known is not None and known[0] is request.flow:
        return known[1]
    target = find_target(flow_cache, session.repo, prepared)
    if target.flow is not None and target.version is not None:
        session.targets[key] = (request.flow, target)
    return target


def write_log(
    flow_cache: FlowCache,
    session: Session,
    prepared: PreparedLog,
    target: Target,
    trace_seq: int | None,
    parent: Node | None,
) -> dict[str, Any]:
    """Insert a log whose checks have passed, under `parent` (in trace `trace_seq`) or as a
    root; widen its ancestors; count it. The answer of `POST /flows/log`."""
    request = prepared.request
    repo = session.repo
    flow, version = target.flow, target.version
    if flow is None or version is None:  # new: made now (most logs find both)
        flow, version = target.materialize(flow_cache, session)
    seq = repo.next_seq()
    log_id = request.log_id if request.log_id is not None else new_id("log")
    repo.insert_log(
        NewLog(
            seq,
            log_id,
            flow.ref,
            version.ref,
            trace_seq if trace_seq is not None else seq,
            parent.seq if parent is not None else None,
            prepared.start_us,
            prepared.end_us,
            prepared.complete,
            prepared.has_error,
            prepared.request_digest,
            prepared.inputs,
            prepared.output,
            prepared.data,
        )
    )
    if parent is not None:
        repo.widen(parent, prepared.start_us, prepared.end_us)
    session.count(flow.ref, version.ref, 1, parent is None, prepared.has_error)
    return created_response(log_id, flow.id, version.id, prepared)


def create_log(flow_cache: FlowCache, session: Session, prepared: PreparedLog) -> dict[str, Any]:
    """Store one log; the response body of `POST /flows/log`."""
    with session.operation():
        return _insert(flow_cache, session, prepared)


# --- updating a log ------------------------------------------------------------------------


#: A PATCH of a log of any kind.
LogUpdate: TypeAlias = "FlowLogUpdateRequest | PromptLogUpdateRequest | ToolLogUpdateRequest"

#: An update's fields that are times (`LogChanges` has them apart, in microseconds).
TIME_FIELDS = frozenset({"start_time", "end_time"})
_STATUS_FIELDS = frozenset(STATUS_FIELDS)


class LogChanges(NamedTuple):
    """What a PATCH sets, however it came (a request model, `changes_of`; a body flowtrace
    built, `_ingest.prepare_update`): the fields sent but the status (null unsets), their
    JSON values (the times apart), the status, and the times sent, if not null."""

    sent: frozenset[str]
    values: Mapping[str, Any]
    status: str | None
    start_us: int | None
    end_us: int | None


def changes_of(request: LogUpdate) -> LogChanges:
    """The changes a PATCH request's model sends."""
    sent = request.model_fields_set - _STATUS_FIELDS
    start = getattr(request, "start_time", None) if "start_time" in sent else None
    end = request.end_time if "end_time" in sent else None
    return LogChanges(
        frozenset(sent),
        request.model_dump(mode="json", include=set(sent - TIME_FIELDS)),
        request.status,
        to_us(start) if start is not None else None,
        to_us(end) if end is not None else None,
    )


def update_log(
    session: Session,
    log_id: str,
    changes: LogChanges,
    file_id: str | None = None,
    kind: LogKind = FLOW,
) -> tuple[int, int]:
    """PATCH: fields sent are set (null unsets), `complete` closes the log for good.
    `file_id`: the prompt or tool the route named, which the log must belong to (404).
    Returns (seq, trace_seq) of the log."""
    repo = session.repo
    row = repo.log_for_update(log_id)
    if row is None or (file_id is not None and row.file_id != file_id):
        raise not_found(f"log {log_id!r} not found")
    if kind != FLOW and row.file_kind != kind:
        raise not_found(f"log {log_id!r} is not a {kind} log")
    seq, parent_seq, start_us, end_us, complete, had_error, flow_ref, version_ref = row[:8]
    inputs, output, data_text, trace_seq = row[8:12]
    data: dict[str, Any] = json.loads(data_text)
    sent = changes.sent
    if data.get("save") is False:
        sent = sent - PAYLOAD_FIELDS  # save=false stays in force for later updates
    new_start, new_end = start_us, end_us
    # prompt and tool updates may give an earlier start (never a later one: the log already
    # covers its children)
    if "start_time" in sent and changes.start_us is not None:
        new_start = min(changes.start_us, start_us)
    # flowtrace extension: a log sent early reports its real end when it completes (never
    # narrower than what its children already widened it to).
    if "end_time" in sent and changes.end_us is not None:
        requested = max(changes.end_us, new_start)
        new_end = requested if end_us is None else max(end_us, requested)
    sent = sent - TIME_FIELDS
    values = changes.values
    new_inputs, new_output = inputs, output
    for name in sent:
        value = values[name]
        if name == "inputs":
            new_inputs = compact_json(value) if value is not None else None
        elif name == "output":
            new_output = value
        elif value is None:
            data.pop(name, None)
        else:
            data[name] = value

    status = changes.status
    if status == INCOMPLETE and complete:
        raise conflict(f"log {log_id!r} is complete: it cannot be reopened")
    if status == COMPLETE and not complete:
        complete = 1
        if new_end is None:
            new_end = max(session.now_us, new_start)
    has_error = "error" in data
    repo.set_log_state(seq, compact_json(data), bool(complete), has_error, new_end)
    if new_start != start_us:
        repo.set_log_start(seq, new_start)
    if (new_inputs, new_output) != (inputs, output):
        repo.set_log_payloads(seq, new_inputs, new_output)
    if (new_start, new_end) != (start_us, end_us) and parent_seq is not None:
        repo.widen(repo.node(parent_seq), new_start, new_end)
    if has_error != bool(had_error):
        session.count(flow_ref, version_ref, 0, 0, 1 if has_error else -1)
    return seq, trace_seq


# --- deleting logs -----------------------------------------------------------------------------


def _subtrees(repo: Repository, targets: list[tuple[int, int]]) -> set[int]:
    """Every log under the targets, themselves included: no log is left with a missing parent."""
    doomed: set[int] = set()
    by_trace: dict[int, list[int]] = {}
    for seq, trace_seq in targets:
        by_trace.setdefault(trace_seq, []).append(seq)
    for trace_seq, seqs in by_trace.items():
        children: dict[int, list[int]] = {}
        for child, parent in repo.trace_edges(trace_seq):
            if parent is not None:
                children.setdefault(parent, []).append(child)
        stack = list(seqs)
        while stack:
            seq = stack.pop()
            if seq not in doomed:
                doomed.add(seq)
                stack.extend(children.get(seq, ()))
    return doomed


def delete_logs(session: Session, ids: list[str]) -> int:
    """Delete the logs and everything under them; unknown ids are ignored (a retried delete
    succeeds). Returns how many logs went. Children another transaction committed under
    them meanwhile go too (looked for again until none is left)."""
    repo = session.repo
    targets = repo.seqs_of(sorted(set(ids)))
    deleted = 0
    while targets:
        doomed = sorted(_subtrees(repo, targets))
        for flow_ref, version_ref, parent_seq, has_error in repo.delete(doomed):
            session.count(flow_ref, version_ref, -1, -(parent_seq is None), -has_error)
        deleted += len(doomed)
        targets = repo.children_of(doomed)
    return deleted
