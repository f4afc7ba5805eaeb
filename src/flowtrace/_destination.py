"""Where logs go: the exporter of the settings (or one set by `use_exporter`), its name for the
spool, and its spool.

- `base_url` set: `HttpExporter` (the contract over HTTP); else `StoreExporter` (the embedded
  SQLite file at `db_path`). Either is wrapped in `HalvingExporter` (a batch the destination
  finds too large is sent in halves).
- The spool of a destination (`spool_path`): in `spool_dir` when set; else next to the
  embedded store's file, or in the per-user state directory for a server. An exporter set by
  `use_exporter` has a spool only if it names itself (`destination`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flowtrace import _config, _guard
from flowtrace._accounting import Warnings
from flowtrace._spool import Spool, spool_path
from flowtrace.exporters import Exporter

__all__ = ["Destination"]


def destination_key(settings: _config.Settings) -> str:
    """The settings' destination as the spool names it (an API key as a digest, never
    itself: logs spooled under one key are never sent with another)."""
    if settings.base_url:
        key = settings.api_key or ""
        tag = hashlib.sha256(key.encode()).hexdigest()[:12] if key else "none"
        return f"http:{settings.base_url.rstrip('/')};key={tag}"
    return "store:" + os.path.abspath(settings.db_path)


def settings_exporter(settings: _config.Settings) -> Exporter:
    """The settings' destination: the HTTP contract if a base URL is set, else the embedded
    SQLite store; either halving a batch the destination finds too large."""
    from flowtrace.exporters.halving import HalvingExporter

    inner: Exporter
    if settings.base_url:
        from flowtrace.exporters.http import HttpExporter

        inner = HttpExporter.from_settings(settings)
    else:
        from flowtrace.exporters.store import StoreExporter

        inner = StoreExporter(settings.db_path)
    return HalvingExporter(inner)


class Destination:
    """The exporter the sender uses, built when first needed and again after `configure()`."""

    def __init__(self, settings: _config.Settings, warnings: Warnings | None = None) -> None:
        self.settings = settings
        self.warnings = warnings if warnings is not None else Warnings()
        self.override: Exporter | None = None
        self._exporter: Exporter | None = None
        self._retarget = True
        self._interrupted = False  # for good (at exit): an exporter built later is too

    def retarget(self, settings: _config.Settings | None = None) -> None:
        """A new destination at the next send (new settings, or another exporter)."""
        if settings is not None:
            self.settings = settings
        self._retarget = True

    def exporter(self) -> Exporter:
        """The sender's exporter (on the sender: modules are imported here, under the fork-safe
        build lock, so a child never inherits a half-imported module)."""
        if self._retarget or self._exporter is None:
            self._retarget = False
            self.close()
            if self.override is not None:
                self._exporter = self.override
            else:
                from flowtrace import _lifecycle

                with _lifecycle.build_lock:
                    self._exporter = settings_exporter(self.settings)
            if self._interrupted:
                self._interrupt(self._exporter)
        return self._exporter

    def interrupt(self) -> None:
        """From another thread, for good (at exit): end the export in progress, and any later
        one (the exporter may be being built right now)."""
        self._interrupted = True
        self._interrupt(self._exporter)

    @staticmethod
    def _interrupt(exporter: Exporter | None) -> None:
        interrupt = getattr(exporter, "interrupt", None)
        if interrupt is not None:
            with _guard.guarded("exporter-interrupt"):
                interrupt()

    def close(self) -> None:
        exporter, self._exporter = self._exporter, None
        if exporter is not None and exporter is not self.override:
            with _guard.guarded("exporter-close"):
                exporter.close()

    def local(self) -> bool:
        """The destination is the local disk (the embedded store): a backlog may wait for it
        rather than go to the spool (writing one costs what writing the other does)."""
        if self.override is not None:
            return bool(getattr(self.override, "local", False))
        return not self.settings.base_url

    # --- the spool ---------------------------------------------------------------------------
    def key(self) -> str | None:
        if self.override is not None:
            key = getattr(self.override, "destination", None)
            return key if isinstance(key, str) else None
        return destination_key(self.settings)

    def spool(self) -> Spool | None:
        """A handle on this destination's spool (opened at its first use); None when spooling
        is off or the destination has no name."""
        settings = self.settings
        key = self.key()
        if settings.spool == "off" or key is None:
            return None
        embedded = self.override is None and not settings.base_url
        path = spool_path(key, settings.spool_dir, settings.db_path if embedded else None)
        return Spool(
            path,
            key,
            max_bytes=int(settings.spool_max_mib * 1024 * 1024),
            max_age_s=settings.spool_max_age_s,
            set_aside=self._set_aside,
        )

    def _set_aside(self, path: Path) -> None:
        self.warnings.once(
            "spool-set-aside",
            "flowtrace: the spool file was not a readable spool; it was set aside as %s and a "
            "fresh spool started (what it held, if anything, is not delivered).",
            path,
        )

    def describe(self) -> str:
        """Where logs go, as a warning names it."""
        if self.override is not None:
            return "the exporter"
        if self.settings.base_url:
            return f"the server at {self.settings.base_url}"
        return f"the embedded store at {self.settings.db_path}"
