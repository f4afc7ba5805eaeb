"""flowtrace: record what your functions did, as a trace of logs per run.

from flowtrace import flow

@flow
def answer(question: str) -> str: ...

with flow("agents/support", inputs={"q": q}) as log:
    log.output = run_agent(q)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flowtrace._config import Settings, configure
from flowtrace._context import TracedThreadPoolExecutor, current_log, propagate
from flowtrace._decorator import Flow, flow
from flowtrace._httpx_hook import instrument_httpx
from flowtrace._lazy import lazy_names
from flowtrace._llm._anthropic import instrument_anthropic
from flowtrace._llm._openai import instrument_openai
from flowtrace._log import Log
from flowtrace._pipeline import flush, shutdown, stats
from flowtrace._remote import continue_trace, propagation_headers

__all__ = [
    "Flow",
    "Log",
    "ScrubMatch",
    "ScrubOptions",
    "Settings",
    "TracedThreadPoolExecutor",
    "configure",
    "continue_trace",
    "current_log",
    "flow",
    "flush",
    "instrument_anthropic",
    "instrument_httpx",
    "instrument_openai",
    "propagate",
    "propagation_headers",
    "shutdown",
    "stats",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from flowtrace._scrub import ScrubMatch, ScrubOptions

#: Public names whose module is imported only when they are first used (the scrubber's costs
#: ~25 ms to import, and a program that keeps the default scrubbing never needs it here).
_LAZY = {"ScrubOptions": "flowtrace._scrub", "ScrubMatch": "flowtrace._scrub"}


__getattr__ = lazy_names(globals(), _LAZY)
