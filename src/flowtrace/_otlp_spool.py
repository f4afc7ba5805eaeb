"""The OTLP export's disk spool: encoded span batches an OTLP endpoint did not take within the
retry deadline, or that were left at exit, kept until this process or the next one that
exports to the same endpoint sends them.

It is a `_spool.Spool` file (the same format, locking, owners, claim of a dead process's
backlog, size bound, expiry, corrupt files set aside), one per endpoint and headers
(`spool_key`): an endpoint's spans never go to another, nor to the main destination, whose
spools have keys of their own. A spool entry is one request body exactly as it is posted
(protobuf, gzip; made from the scrubbed operations, so the disk holds only scrubbed data),
base64 in the entry's JSON, with its span count.

Used by the export thread only. Counts: batches on disk (this process's and those claimed),
and this process's spans on disk.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from flowtrace import _config
from flowtrace._spool import (
    HEARTBEAT_S,
    SPOOL_SUFFIX,
    Spool,
    SpoolFull,
    SpoolItem,
    SpoolUnavailable,
    WallClockUs,
    default_spool_dir,
)

__all__ = [
    "OtlpSpool",
    "SpoolRefused",
    "SpooledBatch",
    "endpoint_spool",
    "spool_file",
    "spool_key",
]

#: The kind of every entry (the main destination's entries are operations: log, update...).
BATCH_KIND: Final = "otlp_batch"
#: After the spool could not be written (a full disk), how long before it is tried again.
UNWRITABLE_RETRY_S: Final = 60.0
#: How often a long outage looks for entries past `spool_max_age_s`.
EXPIRE_EVERY_S: Final = 600.0


def spool_key(endpoint: str, headers: Mapping[str, str]) -> str:
    """The endpoint as its spool names it: the headers (API keys, often) as a digest, never
    themselves, so spans spooled under one key are never sent with another."""
    text = "\n".join(f"{k.lower()}:{v}" for k, v in sorted(headers.items()))
    tag = hashlib.sha256(text.encode()).hexdigest()[:12] if headers else "none"
    return f"otlp:{endpoint};headers={tag}"


def spool_file(key: str, spool_dir: str | None) -> Path:
    """`otlp-<digest>.spool` in `spool_dir`, or in the per-user state directory."""
    name = "otlp-" + hashlib.sha256(key.encode()).hexdigest()[:16] + SPOOL_SUFFIX
    return (Path(spool_dir) if spool_dir else default_spool_dir()) / name


@dataclass(frozen=True, slots=True)
class SpooledBatch:
    entry_id: int
    payload: bytes
    spans: int
    own: bool  # spooled by this process (else claimed from a dead one)


class SpoolRefused(Exception):
    """A batch could not be spooled; `reason` is its drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _wall_us() -> int:
    return time.time_ns() // 1000


def endpoint_spool(
    key: str,
    settings: _config.Settings,
    *,
    wall_us: WallClockUs | None = None,
    set_aside: Callable[[Path], None] = lambda path: None,
) -> Spool:
    """The spool file of the endpoint named `key`, as the settings bound it (what
    `OtlpSpool` works on, and what `flowtrace spool` reads)."""
    return Spool(
        spool_file(key, settings.spool_dir),
        key,
        max_bytes=int(settings.spool_max_mib * 1024 * 1024),
        max_age_s=settings.spool_max_age_s,
        wall_us=wall_us or _wall_us,
        set_aside=set_aside,
    )


class OtlpSpool:
    """One endpoint's spool, as the export thread uses it; counts in spans."""

    def __init__(
        self,
        key: str,
        settings: _config.Settings,
        *,
        wall_us: WallClockUs | None = None,
        clock: Callable[[], float] = time.monotonic,
        set_aside: Callable[[Path], None] = lambda path: None,
    ) -> None:
        """`set_aside(path)`: a file that was not a spool was renamed to `path`."""
        self._spool = endpoint_spool(key, settings, wall_us=wall_us, set_aside=set_aside)
        self.path = self._spool.path
        self._clock = clock
        self.own = 0  # this owner's batches on disk
        self.own_spans = 0  # ... and their spans
        self.backlog = 0  # batches claimed from processes that are gone
        self.unreadable = 0  # entries that were not batches, dropped
        self._unwritable_until = 0.0
        self._next_expiry = 0.0
        self._next_heartbeat = 0.0

    @property
    def waiting(self) -> int:
        """Batches on disk that this process is to send."""
        return self.own + self.backlog

    def claim(self) -> int:
        """Take over what processes that are gone left: how many batches this owner holds of
        them now. Nothing is done (no file is made) while there is no file. Raises
        SpoolUnavailable."""
        if not self.path.exists():
            return 0
        self.backlog, _ = self._spool.claim_dead()
        return self.backlog

    def keep_alive(self) -> None:
        """Say this owner is alive, at most every HEARTBEAT_S: a long outage may leave the
        file untouched, and an owner silent for STALE_S is taken for dead (its batches would
        be sent twice). Takes over what processes that died meanwhile left. Raises
        SpoolUnavailable."""
        now = self._clock()
        if now < self._next_heartbeat:
            return
        self._next_heartbeat = now + HEARTBEAT_S
        self.backlog, _ = self._spool.claim_dead()

    def put(self, payload: bytes, spans: int) -> None:
        """Keep one encoded batch on disk, or raise SpoolRefused (spool_full, or
        spool_unavailable: then writing is not tried again for a minute)."""
        if self._unwritable_until and self._clock() < self._unwritable_until:
            raise SpoolRefused("spool_unavailable", f"the spool {self.path} cannot be written")
        body = {"payload": base64.b64encode(payload).decode("ascii"), "spans": spans}
        item = SpoolItem(f"otlp-batch-{spans}", BATCH_KIND, True, body, {})
        try:
            self._spool.append([item])
        except SpoolFull as error:
            raise SpoolRefused("spool_full", str(error)) from error
        except SpoolUnavailable as error:
            self._unwritable_until = self._clock() + UNWRITABLE_RETRY_S
            raise SpoolRefused("spool_unavailable", str(error)) from error
        self.own += 1
        self.own_spans += spans

    def next(self) -> SpooledBatch | None:
        """The oldest batch to send (a dead process's first); None when none is left. An
        entry that is not a batch (written by something else) is dropped, counted in
        `unreadable`. Raises SpoolUnavailable."""
        for backlog in (True, False):
            while self.backlog if backlog else self.own:
                entries = self._spool.head(1, backlog=backlog)
                if not entries:  # fewer than counted (purged meanwhile)
                    self._forget(backlog, spans=None)
                    break
                entry = entries[0]
                try:
                    payload = base64.b64decode(entry.item.body["payload"], validate=True)
                    spans = int(entry.item.body["spans"])
                except (KeyError, TypeError, ValueError):
                    self._spool.ack([entry.id])
                    self._forget(backlog, spans=0, count=1)
                    self.unreadable += 1
                    continue
                return SpooledBatch(entry.id, payload, spans, not backlog)
        return None

    def _forget(self, backlog: bool, *, spans: int | None, count: int | None = None) -> None:
        """`count` batches (None: all) of this owner's or of the backlog left the disk, with
        `spans` of this owner's spans (None: all)."""
        if backlog:
            self.backlog = 0 if count is None else max(0, self.backlog - count)
            return
        self.own = 0 if count is None else max(0, self.own - count)
        self.own_spans = 0 if spans is None else max(0, self.own_spans - spans)

    def done(self, batch: SpooledBatch) -> None:
        """`batch` was sent (or refused for good): it leaves the disk."""
        self._spool.ack([batch.entry_id])
        self._forget(not batch.own, spans=batch.spans, count=1)

    def expire(self, *, force: bool = False) -> int:
        """Drop held batches older than `spool_max_age_s` (at a claim, then every
        EXPIRE_EVERY_S); returns their spans. Raises SpoolUnavailable."""
        now = self._clock()
        if not (force or now >= self._next_expiry) or not self.waiting:
            return 0
        self._next_expiry = now + EXPIRE_EVERY_S
        spans = 0
        for entry in self._spool.expire():
            count = entry.item.body.get("spans", 0)
            count = count if isinstance(count, int) else 0
            spans += count
            self._forget(entry.origin != self._spool.owner, spans=count, count=1)
        return spans

    def forget_waiting(self) -> None:
        """The file cannot be read: what it holds is left there for a later process."""
        self.own = self.own_spans = self.backlog = 0

    def close(self) -> None:
        """The export stopped for good: what this owner holds is left to the next claim (by
        a later export of this endpoint in this process, or another process)."""
        if self.path.exists():
            self._spool.leave()
        self._spool.close()
