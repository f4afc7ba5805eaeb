"""Flows and versions by path, id and attributes: found, or created on first use.

Their identities never change once created (nothing renames or deletes a flow or a version),
so lookups are cached for the life of the store. The cache holds committed rows only: what a
write transaction finds or makes waits in its repository's `pending` until it commits
(`publish`), so another thread's transaction never builds on a row that may yet roll back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic_core import to_json

from flowtrace._contract import FLOW, LogKind
from flowtrace.store._codec import canonical_json, digest, new_id
from flowtrace.store._errors import conflict, invalid, not_found
from flowtrace.store._repository import FlowRow, Reader, VersionRow
from flowtrace.store._session import Session

__all__ = ["FlowCache", "FlowKey", "VersionKey", "attributes_digest", "normalize_path"]

# Server-side file ids, as the original API spelled them per kind of file.
_ID_PREFIXES: dict[str, str] = {"flow": "fl", "prompt": "pr", "tool": "tl"}

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


_MEMO_SIZE = 4096
_path_memo: dict[str, str] = {}


def normalize_path(path: str, loc: list[str | int]) -> str:
    """`folder/name` without stray slashes or blanks; an empty path names no flow. Memoized:
    every log of a flow repeats its path."""
    known = _path_memo.get(path)
    if known is not None:
        return known
    parts = [part.strip() for part in path.strip().strip("/").split("/")]
    if not all(parts):
        raise invalid(loc, "a Flow path is `folder/name`: non-empty parts separated by '/'")
    normalized = "/".join(parts)
    if len(_path_memo) >= _MEMO_SIZE:
        _path_memo.clear()
    _path_memo[path] = normalized
    return normalized


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
    if len(_attribute_memo) >= _MEMO_SIZE:
        _attribute_memo.clear()
    _attribute_memo[fast] = known
    return known


class FlowCache:
    def __init__(self) -> None:
        # (table, key) -> FlowKey or VersionKey; tables: flow_path, flow_id, flow_ref,
        # version_attrs ((flow_ref, digest)), version_id
        self._entries: dict[tuple[str, Any], Any] = {}

    def _get(self, db: Reader, table: str, key: Any) -> Any:
        entry = (table, key)
        if db.pending is not None:
            found = db.pending.get(entry)
            if found is not None:
                return found
        return self._entries.get(entry)

    def _put(self, db: Reader, table: str, key: Any, value: _V) -> _V:
        target = db.pending if db.pending is not None else self._entries
        target[(table, key)] = value
        return value

    def publish(self, pending: dict[tuple[str, Any], Any]) -> None:
        """A write transaction committed: what it found or made is now for everyone."""
        self._entries.update(pending)

    # --- flows -----------------------------------------------------------------------------
    def _remember_flow(self, db: Reader, row: FlowRow) -> FlowKey:
        flow = FlowKey(row.seq, row.id, row.path, row.kind)
        self._put(db, "flow_path", flow.path, flow)
        self._put(db, "flow_id", flow.id, flow)
        return self._put(db, "flow_ref", flow.ref, flow)

    def flow_by_id(self, db: Reader, flow_id: str) -> FlowKey | None:
        cached: FlowKey | None = self._get(db, "flow_id", flow_id)
        if cached is not None:
            return cached
        row = db.flow_by("id", flow_id)
        return self._remember_flow(db, row) if row is not None else None

    def flow_by_ref(self, db: Reader, ref: int) -> FlowKey:
        cached: FlowKey | None = self._get(db, "flow_ref", ref)
        if cached is not None:
            return cached
        row = db.flow_by("seq", ref)
        assert row is not None, "a version's flow always exists"
        return self._remember_flow(db, row)

    def require_flow(self, db: Reader, flow_id: str) -> FlowKey:
        flow = self.flow_by_id(db, flow_id)
        if flow is None:
            raise not_found(f"Flow {flow_id!r} not found")
        return flow

    def find_flow_by_path(self, db: Reader, path: str) -> FlowKey | None:
        cached: FlowKey | None = self._get(db, "flow_path", path)
        if cached is not None:
            return cached
        row = db.flow_by("path", path)
        return self._remember_flow(db, row) if row is not None else None

    def create_flow(self, session: Session, path: str, kind: LogKind = FLOW) -> FlowKey:
        """A new file at `path` (normalized, found free): a flow unless `kind` says. Created by
        another transaction meanwhile, it is that one's (409 if of another kind)."""
        name = path.rsplit("/", 1)[-1]
        repo = session.repo
        row = repo.insert_flow(new_id(_ID_PREFIXES[kind]), path, name, session.now_us, kind)
        flow = self._remember_flow(repo, row)
        flow.require_kind(kind)
        return flow

    def flow_for_path(self, session: Session, path: str, kind: LogKind = FLOW) -> FlowKey:
        """The file at `path` (normalized), created if new; 409 if it is of another kind."""
        found = self.find_flow_by_path(session.repo, path)
        if found is None:
            return self.create_flow(session, path, kind)
        found.require_kind(kind)
        return found

    # --- versions --------------------------------------------------------------------------
    def _remember_version(self, db: Reader, row: VersionRow) -> VersionKey:
        version = VersionKey(row.seq, row.id, row.flow_ref, bytes(row.attributes_digest))
        self._put(db, "version_attrs", (version.flow_ref, version.attributes_digest), version)
        return self._put(db, "version_id", version.id, version)

    def version_by_id(self, db: Reader, version_id: str) -> VersionKey | None:
        cached: VersionKey | None = self._get(db, "version_id", version_id)
        if cached is not None:
            return cached
        row = db.version_by_id(version_id)
        return self._remember_version(db, row) if row is not None else None

    def require_version(self, db: Reader, version_id: str) -> VersionKey:
        version = self.version_by_id(db, version_id)
        if version is None:
            raise not_found(f"Flow version {version_id!r} not found")
        return version

    def find_version(self, db: Reader, flow_ref: int, key: bytes) -> VersionKey | None:
        cached: VersionKey | None = self._get(db, "version_attrs", (flow_ref, key))
        if cached is not None:
            return cached
        row = db.version_by_digest(flow_ref, key)
        return self._remember_version(db, row) if row is not None else None

    def create_version(
        self, session: Session, flow: FlowKey, attributes_text: str, key: bytes
    ) -> VersionKey:
        """A new version of `flow` with these (canonical) attributes, found new (or made by
        another transaction meanwhile: then that one). The flow counts as updated."""
        repo = session.repo
        row = repo.insert_version(new_id("flv"), flow.ref, key, attributes_text, session.now_us)
        session.touch(flow.ref)
        return self._remember_version(repo, row)

    def version_for_attributes(
        self, session: Session, flow: FlowKey, attributes: dict[str, Any]
    ) -> VersionKey:
        """The flow's version with these attributes, created if new."""
        text, key = attributes_digest(attributes)
        found = self.find_version(session.repo, flow.ref, key)
        return found if found is not None else self.create_version(session, flow, text, key)

    def deployed_version(self, db: Reader, flow: FlowKey, environment: str) -> VersionKey:
        version_id = db.deployed_version_id(flow.ref, environment)
        if version_id is None:
            raise not_found(
                f"no version of Flow {flow.path!r} is deployed to environment {environment!r}"
            )
        return self.require_version(db, version_id)
