"""Writing flows: upsert by path (or id) with a version, and deploying versions."""

from __future__ import annotations

from flowtrace.models import FlowUpsertRequest
from flowtrace.store._errors import invalid, not_found
from flowtrace.store._flow_cache import FlowCache, FlowKey, VersionKey, normalize_path
from flowtrace.store._session import Session

__all__ = ["deploy", "upsert_flow"]


def upsert_flow(
    flow_cache: FlowCache, session: Session, request: FlowUpsertRequest
) -> tuple[FlowKey, VersionKey]:
    """`POST /flows`: the flow (by id, or by path: created if new) and its version with these
    attributes (created if new; a name or description given replaces the stored one)."""
    repo = session.repo
    path = normalize_path(request.path, ["body", "path"]) if request.path is not None else None
    if request.id is not None:
        flow = flow_cache.require_flow(repo, request.id)
        if path is not None and path != flow.path:
            raise invalid(["body", "path"], f"Flow {request.id!r} has path {flow.path!r}")
    elif path is not None:
        flow = flow_cache.flow_for_path(session, path)
    else:
        raise invalid(["body", "path"], "give the Flow's path or id", "missing")
    version = flow_cache.version_for_attributes(session, flow, request.attributes)
    named = {"version_name", "version_description"} & request.model_fields_set
    if named:
        repo.name_version(version.ref, request.version_name, request.version_description)
        session.touch(flow.ref)
    return flow, version


def deploy(
    flow_cache: FlowCache, session: Session, flow_id: str, environment: str, version_id: str
) -> tuple[FlowKey, VersionKey]:
    """Point the flow's `environment` at one of its versions (replacing what was deployed)."""
    repo = session.repo
    flow = flow_cache.require_flow(repo, flow_id)
    version = flow_cache.require_version(repo, version_id)
    if version.flow_ref != flow.ref:
        raise not_found(f"Flow {flow.path!r} has no version {version_id!r}")
    if not environment.strip():
        raise invalid(["path", "environment"], "an environment needs a name")
    repo.deploy(flow.ref, environment, version.ref, session.now_us)
    session.touch(flow.ref)
    return flow, version
