"""What of a log leaves the process: each request body, scrubbed and redacted as the settings
say (`scrub`, `redact`), and counts of what that did.

The scrubber itself is `_scrub` (pure); this module applies it where the worker turns a log into
a request body (the planner's encode step), so a body is scrubbed once: its retries and its
copy in the spool are the same, already scrubbed, bytes. `_scrub` costs ~25-35 ms to import, so
it is imported on the worker at the first body, never by `import flowtrace` nor on the call
path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from flowtrace import _config

if TYPE_CHECKING:
    from flowtrace._scrub import RedactHook, Scrubber

__all__ = ["Outgoing"]


class Outgoing:
    """The settings' scrubbing, applied to request bodies; counts what it replaced (by rule)
    and the bodies sent without some of their payloads (scrubbing or the redact hook failed on
    them: warned about once, never sent unscrubbed). Used under the pipeline's lock."""

    def __init__(self, settings: _config.Settings) -> None:
        self.scrubbed: dict[str, int] = {}  # values and substrings replaced, by rule
        self.withheld = 0  # bodies sent without some payload fields (see above)
        self.configure(settings)

    def configure(self, settings: _config.Settings) -> None:
        """New settings: the scrubber is built again at the next body (counts are kept)."""
        self._setting: Any = settings.scrub
        self._redact_setting = settings.redact
        self._built = False
        self._scrubber: Scrubber | None = None
        self._redact: RedactHook | None = None

    @property
    def active(self) -> bool:
        return self._setting is not False or self._redact_setting is not None

    def body(self, body: dict[str, Any]) -> dict[str, Any]:
        """`body` as it may leave the process (the same dict when nothing was changed)."""
        if not self.active:
            return body
        from flowtrace._scrub import sanitize

        if not self._built:
            self._build()
        result = sanitize(body, self._scrubber, self._redact)
        if result.counts:
            scrubbed = self.scrubbed
            for rule, count in result.counts.items():
                scrubbed[rule] = scrubbed.get(rule, 0) + count
        if result.dropped:
            self.withheld += 1
        return result.record

    def _build(self) -> None:
        from flowtrace._scrub import redact_from_setting, scrubber_from_setting

        # configure() checked both already, so these do not raise
        self._scrubber = scrubber_from_setting(self._setting)
        self._redact = redact_from_setting(self._redact_setting)
        self._built = True

    def stats(self) -> dict[str, Any]:
        return {"scrubbed": dict(self.scrubbed), "withheld": self.withheld}
