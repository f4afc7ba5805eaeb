"""Flows and versions by path, id and attributes: found, or created on first use.

Their identities never change once created (nothing renames or deletes a flow or a version),
so lookups are cached for the life of the store; an entry made by a write that is then
rolled back is forgotten with it (see `Session.on_undo`).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic_core import to_json

from flowtrace._contract import FLOW, LogKind
from flowtrace.store._codec import canonical_json, digest, new_id
from flowtrace.store._errors import conflict, invalid, not_found
from flowtrace.store._session import Session

__all__ = ["FlowCache", "FlowKey", "VersionKey", "attributes_digest", "normalize_path"]

# Server-side file ids, as the original API spelled them per kind of file.
_ID_PREFIXES: dict[str, str] = {"flow": "fl", "prompt": "pr", "tool": "tl"}

_K = TypeVar("_K")
_V = TypeVar("_V")


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A file: a flow, a prompt or a tool (`kind`)."""

    ref: int
    id: str
    path: str
    kind: str = FLOW

    def require_kind(self, kind: LogKind) -> None:
        """A path names one file of one kind: a prompt log to a flow's path is a 409."""
        if self.kind != kind:
            raise conflict(f"{self.path!r} is a {self.kind}, not a {kind}")


@dataclass(frozen=True, slots=True)
class VersionKey:
    ref: int
    id: str
    flow_ref: int
    attributes_digest: bytes


def normalize_path(path: str, loc: list[str | int]) -> str:
    """`folder/name` without stray slashes or blanks; an empty path names no flow."""
    parts = [part.strip() for part in path.strip().strip("/").split("/")]
    if not all(parts):
        raise invalid(loc, "a Flow path is `folder/name`: non-empty parts separated by '/'")
    return "/".join(parts)


_ATTRIBUTE_MEMO_SIZE = 4096
_attribute_memo: dict[bytes, tuple[str, bytes]] = {}


def attributes_digest(attributes: dict[str, Any]) -> tuple[str, bytes]:
    """Equal attributes (as JSON, key order ignored) are one version: (canonical text, digest).
    Memoized on the fast unsorted encoding, since every log of a version repeats them."""
    fast = to_json(attributes)
    known = _attribute_memo.get(fast)
    if known is not None:
        return known
    text = canonical_json(attributes)
    known = text, digest(text)
    if len(_attribute_memo) >= _ATTRIBUTE_MEMO_SIZE:
        _attribute_memo.clear()
    _attribute_memo[fast] = known
    return known


class FlowCache:
    def __init__(self) -> None:
        self._flows_by_path: dict[str, FlowKey] = {}
        self._flows_by_id: dict[str, FlowKey] = {}
        self._flows_by_ref: dict[int, FlowKey] = {}
        self._versions_by_attrs: dict[tuple[int, bytes], VersionKey] = {}
        self._versions_by_id: dict[str, VersionKey] = {}

    # --- flows -----------------------------------------------------------------------------
    def _remember_flow(self, flow: FlowKey, session: Session | None) -> FlowKey:
        self._remember(self._flows_by_path, flow.path, flow, session)
        self._remember(self._flows_by_id, flow.id, flow, session)
        self._remember(self._flows_by_ref, flow.ref, flow, session)
        return flow

    def _flow_from_row(self, row: Any, session: Session | None = None) -> FlowKey | None:
        if row is None:
            return None
        return self._remember_flow(FlowKey(row[0], row[1], row[2], row[3]), session)

    def flow_by_id(self, conn: sqlite3.Connection, flow_id: str) -> FlowKey | None:
        cached = self._flows_by_id.get(flow_id)
        if cached is not None:
            return cached
        row = conn.execute(
            "SELECT seq, id, path, kind FROM flows WHERE id = ?", (flow_id,)
        ).fetchone()
        return self._flow_from_row(row)

    def flow_by_ref(self, conn: sqlite3.Connection, ref: int) -> FlowKey:
        cached = self._flows_by_ref.get(ref)
        if cached is not None:
            return cached
        row = conn.execute("SELECT seq, id, path, kind FROM flows WHERE seq = ?", (ref,)).fetchone()
        flow = self._flow_from_row(row)
        assert flow is not None, "a version's flow always exists"
        return flow

    def require_flow(self, conn: sqlite3.Connection, flow_id: str) -> FlowKey:
        flow = self.flow_by_id(conn, flow_id)
        if flow is None:
            raise not_found(f"Flow {flow_id!r} not found")
        return flow

    def find_flow_by_path(self, conn: sqlite3.Connection, path: str) -> FlowKey | None:
        cached = self._flows_by_path.get(path)
        if cached is not None:
            return cached
        row = conn.execute(
            "SELECT seq, id, path, kind FROM flows WHERE path = ?", (path,)
        ).fetchone()
        return self._flow_from_row(row)

    def create_flow(self, session: Session, path: str, kind: LogKind = FLOW) -> FlowKey:
        """A new file at `path` (normalized, known to be free): a flow unless `kind` says."""
        flow_id = new_id(_ID_PREFIXES[kind])
        name = path.rsplit("/", 1)[-1]
        cursor = session.conn.execute(
            "INSERT INTO flows (id, path, name, created_us, updated_us, kind)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (flow_id, path, name, session.now_us, session.now_us, kind),
        )
        assert cursor.lastrowid is not None
        return self._remember_flow(FlowKey(cursor.lastrowid, flow_id, path, kind), session)

    def flow_for_path(self, session: Session, path: str, kind: LogKind = FLOW) -> FlowKey:
        """The file at `path` (normalized), created if new; 409 if it is of another kind."""
        found = self.find_flow_by_path(session.conn, path)
        if found is None:
            return self.create_flow(session, path, kind)
        found.require_kind(kind)
        return found

    # --- versions --------------------------------------------------------------------------
    def _remember_version(self, version: VersionKey, session: Session | None) -> VersionKey:
        key = (version.flow_ref, version.attributes_digest)
        self._remember(self._versions_by_attrs, key, version, session)
        self._remember(self._versions_by_id, version.id, version, session)
        return version

    def version_by_id(self, conn: sqlite3.Connection, version_id: str) -> VersionKey | None:
        cached = self._versions_by_id.get(version_id)
        if cached is not None:
            return cached
        row = conn.execute(
            "SELECT seq, id, flow_ref, attributes_digest FROM versions WHERE id = ?",
            (version_id,),
        ).fetchone()
        if row is None:
            return None
        return self._remember_version(VersionKey(row[0], row[1], row[2], row[3]), None)

    def require_version(self, conn: sqlite3.Connection, version_id: str) -> VersionKey:
        version = self.version_by_id(conn, version_id)
        if version is None:
            raise not_found(f"Flow version {version_id!r} not found")
        return version

    def find_version(
        self, conn: sqlite3.Connection, flow_ref: int, key: bytes
    ) -> VersionKey | None:
        cached = self._versions_by_attrs.get((flow_ref, key))
        if cached is not None:
            return cached
        row = conn.execute(
            "SELECT seq, id FROM versions WHERE flow_ref = ? AND attributes_digest = ?",
            (flow_ref, key),
        ).fetchone()
        if row is None:
            return None
        return self._remember_version(VersionKey(row[0], row[1], flow_ref, key), None)

    def create_version(
        self, session: Session, flow: FlowKey, attributes_text: str, key: bytes
    ) -> VersionKey:
        """A new version of `flow` with these (canonical) attributes, known to be new."""
        version_id = new_id("flv")
        conn = session.conn
        cursor = conn.execute(
            "INSERT INTO versions (id, flow_ref, attributes_digest, attributes, created_us)"
            " VALUES (?, ?, ?, ?, ?)",
            (version_id, flow.ref, key, attributes_text, session.now_us),
        )
        conn.execute("UPDATE flows SET updated_us = ? WHERE seq = ?", (session.now_us, flow.ref))
        assert cursor.lastrowid is not None
        version = VersionKey(cursor.lastrowid, version_id, flow.ref, key)
        return self._remember_version(version, session)

    def version_for_attributes(
        self, session: Session, flow: FlowKey, attributes: dict[str, Any]
    ) -> VersionKey:
        """The flow's version with these attributes, created if new."""
        text, key = attributes_digest(attributes)
        found = self.find_version(session.conn, flow.ref, key)
        return found if found is not None else self.create_version(session, flow, text, key)

    def deployed_version(
        self, conn: sqlite3.Connection, flow: FlowKey, environment: str
    ) -> VersionKey:
        row = conn.execute(
            "SELECT v.id FROM environments e JOIN versions v ON v.seq = e.version_ref"
            " WHERE e.flow_ref = ? AND e.name = ?",
            (flow.ref, environment),
        ).fetchone()
        if row is None:
            raise not_found(
                f"no version of Flow {flow.path!r} is deployed to environment {environment!r}"
            )
        return self.require_version(conn, row[0])

    # --- cache bookkeeping -----------------------------------------------------------------
    @staticmethod
    def _remember(cache: dict[_K, _V], key: _K, value: _V, session: Session | None) -> None:
        """Cache an entry; one created inside `session` is forgotten if the write rolls back.
        Rows found by a lookup inside a write may be that write's own, so they are journaled
        too when a session is given."""
        if key in cache:
            return
        cache[key] = value
        if session is not None:

            def forget() -> None:
                cache.pop(key, None)

            session.on_undo(forget)
