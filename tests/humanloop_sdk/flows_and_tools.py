"""Run by the Humanloop SDK 0.8.38 in its own venv (tests/test_humanloop_sdk.py): 100 calls of
a `@flow` calling two `@tool`s (one of them failing), against `flowtrace serve`.

Prints one JSON line: whether the SDK's span upload thread is still alive, and what the
upload queue still held when the wait ended.
"""

import contextlib
import json
import sys
import time

from humanloop import Humanloop

BASE_URL, API_KEY, CALLS = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = Humanloop(api_key=API_KEY, base_url=BASE_URL)


@client.tool(path="sdk/add")
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@client.tool(path="sdk/divide")
def divide(a: int, b: int) -> float:
    """Divide a by b."""
    return a / b


@client.flow(path="sdk/agent", attributes={"version": "1"})
def agent(question: str) -> str:
    total = add(2, 3)
    if question.endswith("0"):
        # The tool log records the error; the SDK's wrapper then fails itself (an
        # UnboundLocalError in 0.8.38), which the program survives.
        with contextlib.suppress(Exception):
            divide(1, 0)
    return f"{question}: {total}"


for index in range(CALLS):
    agent(f"question {index}")

processors = client._tracer_provider._active_span_processor._span_processors
exporter = next(p.span_exporter for p in processors if type(p).__name__ == "HumanloopSpanProcessor")
deadline = time.monotonic() + 60
while exporter._upload_queue.unfinished_tasks and time.monotonic() < deadline:
    time.sleep(0.05)
print(
    json.dumps(
        {
            "threads_alive": [thread.is_alive() for thread in exporter._threads],
            "unfinished": exporter._upload_queue.unfinished_tasks,
        }
    ),
    flush=True,
)
