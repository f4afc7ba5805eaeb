"""Frozen settings: `configure()` arguments over `FLOWTRACE_*` environment over defaults."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Literal, get_args

from flowtrace._contract import DEFAULT_STATUS_FIELD, STATUS_FIELDS, StatusField

if TYPE_CHECKING:  # the scrubber's module is imported by the worker, when it first scrubs
    from flowtrace._scrub import RedactHook, Scrubber, ScrubOptions

__all__ = ["SPOOL_MODES", "Settings", "SpoolMode", "configure", "get_settings", "on_change"]

#: Where the embedded default store lives when no endpoint is configured.
DEFAULT_DB_PATH = ".flowtrace/flowtrace.db"

#: `auto`: what cannot be delivered now (the destination fails, the queue overflows, the exit
#: bound runs out) is spooled to disk; `always`: every batch is written to disk before it is
#: sent (a `kill -9` loses at most the logs of the last polling interval); `off`: never.
SpoolMode = Literal["auto", "always", "off"]
SPOOL_MODES: tuple[SpoolMode, ...] = get_args(SpoolMode)


@dataclass(frozen=True)
class Settings:
    """Every knob of flowtrace, with units in the names where they have one."""

    enabled: bool = True
    # delivery target: an HTTP endpoint of the contract, else the embedded SQLite store
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    db_path: str = DEFAULT_DB_PATH
    status_field: StatusField = DEFAULT_STATUS_FIELD
    # what each log captures
    capture_stdout: bool = True
    capture_logging: bool = False
    environment: str | None = None
    # serialization budgets
    max_string_chars: int = 65536
    max_items: int = 1000
    max_depth: int = 20
    # delivery (docs/architecture.md, "Defaults")
    live_after_s: float = 1.0
    # Logs held in memory (open ones included); beyond it recording threads wait for room (the
    # overflow goes to disk), never for the network. A waiting log costs about 0.5 KiB (so ~50
    # MiB at the bound, measured in bench/RESULTS.md).
    queue_size: int = 50_000
    first_batch_after_s: float = 0.1
    batch_interval_s: float = 1.0
    batch_size: int = 512
    timeout_s: float = 10.0
    connect_timeout_s: float = 3.0
    # How long a flush waits for a failing destination (the logs stay spooled); without a
    # spool, how long a batch is retried before it is dropped.
    retry_deadline_s: float = 60.0
    retry_backoff_s: float = 1.0  # first retry waits about this long, doubling each time
    exit_flush_timeout_s: float = 5.0
    # the disk spool (docs/architecture.md, "The pipeline")
    spool: SpoolMode = "auto"
    spool_dir: str | None = None  # default: next to db_path, or ~/.local/state/flowtrace/spool
    spool_max_mib: float = 512.0
    spool_max_age_s: float = 7 * 24 * 3600.0
    # a copy of every log, as an OpenTelemetry span, to an OTLP/HTTP traces endpoint (Jaeger,
    # Tempo, Phoenix, a collector...): its full URL (`.../v1/traces`), and its headers as a
    # mapping or as `key=value,key2=value2` (the OTEL_EXPORTER_OTLP_HEADERS form). Also read
    # from OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT (+ `/v1/traces`)
    # and their `_HEADERS`; "" turns it off whatever the environment says.
    otlp_endpoint: str | None = None
    otlp_headers: str | Mapping[str, str] | None = field(default=None, repr=False)
    # what leaves the process (issue 11; docs/architecture.md, "Scrubbing and sampling"):
    # True: the documented rules; False: off; a ScrubOptions (or a dict of its fields)
    scrub: bool | ScrubOptions | Scrubber | Mapping[str, Any] = True
    redact: RedactHook | None = None  # record -> record, after scrubbing (not from environment)
    # sampling by trace, decided at each root (a flow's own `sample_rate` wins)
    sample_rate: float = 1.0
    # an unsampled trace is still kept if it had an error, or if its root ran this long
    sample_keep_slower_than_s: float | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Settings:
        return cls(**_environment_overrides(os.environ if environ is None else environ))


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse(name: str, kind: Any, text: str) -> Any:
    if kind in ("bool", bool):
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ValueError(f"FLOWTRACE_{name.upper()}={text!r} is not a boolean (use 1 or 0)")
    if kind in ("int", int):
        return int(text)
    if kind in ("float", float):
        return float(text)
    return text


#: Settings that are code, not text: not read from the environment.
_NOT_FROM_ENVIRONMENT = frozenset({"redact"})


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name in _NOT_FROM_ENVIRONMENT:
            continue
        text = environ.get(f"FLOWTRACE_{f.name.upper()}")
        if text is not None:
            kind = f.type if not isinstance(f.type, str) else f.type.split(" |")[0]
            values[f.name] = _parse(f.name, kind, text)
    values.update(_otlp_environment(environ, values))
    if environ.get("FLOWTRACE_DISABLED", "").strip().lower() in _TRUE:
        values["enabled"] = False
    if values.get("status_field", DEFAULT_STATUS_FIELD) not in STATUS_FIELDS:
        raise ValueError(f"FLOWTRACE_STATUS_FIELD must be one of {', '.join(STATUS_FIELDS)}")
    if values.get("spool", "auto") not in SPOOL_MODES:
        raise ValueError(f"FLOWTRACE_SPOOL must be one of {', '.join(SPOOL_MODES)}")
    if not 0.0 <= values.get("sample_rate", 1.0) <= 1.0:
        raise ValueError("FLOWTRACE_SAMPLE_RATE must be between 0 and 1")
    return values


def _otlp_environment(environ: Mapping[str, str], values: dict[str, Any]) -> dict[str, Any]:
    """The OpenTelemetry exporter's standard variables, under flowtrace's own."""
    found: dict[str, Any] = {}
    if "otlp_endpoint" not in values:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        if not endpoint and base:
            endpoint = base.rstrip("/") + "/v1/traces"
        if endpoint:
            found["otlp_endpoint"] = endpoint
    if "otlp_headers" not in values:
        headers = environ.get("OTEL_EXPORTER_OTLP_TRACES_HEADERS")
        headers = headers if headers is not None else environ.get("OTEL_EXPORTER_OTLP_HEADERS")
        if headers:
            found["otlp_headers"] = headers
    return found


_settings: Settings | None = None
_listeners: list[Callable[[Settings], None]] = []


def get_settings() -> Settings:
    """The settings in force (read from the environment on first use)."""
    global _settings
    if _settings is None:
        _settings = Settings.from_environment()
    return _settings


def configure(**overrides: Any) -> Settings:
    """Set flowtrace's settings; arguments win over `FLOWTRACE_*` variables over defaults.

    Each call starts again from the environment and the defaults, so `configure()` with no
    arguments resets what earlier calls set. Unknown names raise `TypeError` at once.
    """
    global _settings
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"configure() got unknown setting(s): {', '.join(unknown)}")
    settings = dataclasses.replace(Settings.from_environment(), **overrides)
    if settings.status_field not in STATUS_FIELDS:
        raise ValueError(f"status_field must be one of {', '.join(STATUS_FIELDS)}")
    if settings.spool not in SPOOL_MODES:
        raise ValueError(f"spool must be one of {', '.join(SPOOL_MODES)}")
    _check_production_controls(settings)
    _settings = settings
    for listener in list(_listeners):
        listener(settings)
    return settings


def _check_production_controls(settings: Settings) -> None:
    """Wrong scrub, redact or sampling settings raise here, not later on the worker."""
    rate = settings.sample_rate
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"sample_rate must be a number from 0 to 1, not {rate!r}")
    slower = settings.sample_keep_slower_than_s
    if slower is not None and (isinstance(slower, bool) or not isinstance(slower, (int, float))):
        raise TypeError(f"sample_keep_slower_than_s must be seconds or None, not {slower!r}")
    if settings.redact is not None and not callable(settings.redact):
        raise TypeError(
            f"redact must be a function (record) -> record, not {type(settings.redact).__name__}"
        )
    if settings.scrub is not True and settings.scrub is not False:
        from flowtrace._scrub import scrubber_from_setting  # the options are checked once, now

        scrubber_from_setting(settings.scrub)


def on_change(listener: Callable[[Settings], None]) -> None:
    """Call `listener(settings)` after every `configure()` (the pipeline re-targets itself)."""
    _listeners.append(listener)
