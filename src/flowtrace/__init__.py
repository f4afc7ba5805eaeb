"""flowtrace: record what your functions did, as a trace of logs per run.

from flowtrace import flow

@flow
def answer(question: str) -> str: ...

with flow("agents/support", inputs={"q": q}) as log:
    log.output = run_agent(q)
"""

from __future__ import annotations

from flowtrace._config import Settings, configure
from flowtrace._context import TracedThreadPoolExecutor, current_log, propagate
from flowtrace._decorator import Flow, flow
from flowtrace._llm._anthropic import instrument_anthropic
from flowtrace._llm._openai import instrument_openai
from flowtrace._log import Log
from flowtrace._pipeline import flush, shutdown, stats

__all__ = [
    "Flow",
    "Log",
    "Settings",
    "TracedThreadPoolExecutor",
    "configure",
    "current_log",
    "flow",
    "flush",
    "instrument_anthropic",
    "instrument_openai",
    "propagate",
    "shutdown",
    "stats",
]

__version__ = "0.1.0"
