"""The web viewer's pages at `/` (stub: the viewer engineer replaces this module)."""

from __future__ import annotations

from fastapi import FastAPI

from flowtrace.store import Store

__all__ = ["mount_viewer"]


def mount_viewer(app: FastAPI, store: Store) -> None:
    """Mount the viewer's pages on `app`; the stub mounts nothing."""
