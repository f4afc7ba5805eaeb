"""A traced agent run: a planner, tools run concurrently, a flaky tool retried, a streamed answer.

    python examples/agent.py
    flowtrace show <the printed id>      # the trace as a tree in the terminal
    flowtrace ui                         # or in the browser

Runs offline with no keys, in well under a second: the "LLM" is a fake and the tools answer
from dictionaries. With no endpoint configured the logs go to the embedded store
(.flowtrace/flowtrace.db in the working directory, or $FLOWTRACE_DB_PATH); see
examples/team_server.py for the same run sent to `flowtrace serve`.

What ends up in the trace: one root log with everything under it (the three tools start
concurrently, so their order varies from run to run):

    agents/support                          the `async with` block: inputs, messages,
    |                                       printed progress, the answer (output_message)
    +-- agents/support/plan                 a fake LLM call: messages in, a plan out
    +-- agents/support/tools/search_docs    an async tool
    +-- agents/support/tools/lookup_order   an async tool; its first attempt fails ...
    +-- agents/support/tools/lookup_order   ... and the agent retries it
    +-- agents/support/tools/fetch_invoice  a blocking tool, run in a thread pool
    +-- agents/support/answer               a generator: the streamed tokens, joined
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import flowtrace
from flowtrace import flow

MODEL = "fake-llm-1"
MAX_ATTEMPTS = 3  # per tool call
TICKET = {
    "id": 4711,
    "customer": "ada@example.com",
    "order_id": "A-1042",
    "text": "My order A-1042 has not arrived. Where is it, and can I get the invoice?",
}

_T = TypeVar("_T")


# --- the "LLM" ------------------------------------------------------------------------------


@flow(path="agents/support/plan", attributes={"model": MODEL, "temperature": 0})
async def plan(messages: list[dict[str, str]]) -> dict[str, Any]:
    """A fake planner: decides which tools to call from keywords of the last user message.

    `messages` (an argument of that name holding chat messages) is recorded as the log's
    messages; the returned plan is JSON-encoded into its output.
    """
    await asyncio.sleep(0)  # a real client would await the provider here
    question = messages[-1]["content"].lower()
    steps: list[str] = ["search_docs"]
    if "order" in question:
        steps.append("lookup_order")
    if "invoice" in question:
        steps.append("fetch_invoice")
    log = flowtrace.current_log()
    if log is not None:  # None only when flowtrace is disabled
        log.provider_response = {"usage": {"prompt_tokens": 42, "completion_tokens": 7}}
    return {"steps": steps, "reason": "answer from the docs, the order and the invoice"}


@flow(path="agents/support/answer", attributes={"model": MODEL, "temperature": 0})
def stream_answer(question: str, facts: dict[str, Any]) -> Iterator[str]:
    """A fake streamed completion: a generator of tokens. Its log's output is the tokens
    joined, recorded when the stream ends."""
    order = facts["order"]
    text = (
        f"Your order {order['id']} is {order['status']} with {order['carrier']} and should "
        f"arrive on {order['eta']}. {facts['docs'][0]} Your invoice is {facts['invoice']}."
    )
    yield from re.findall(r"\S+\s*", text)


# --- tools ----------------------------------------------------------------------------------

DOCS = {
    "shipping": "Standard shipping takes 3-5 business days.",
    "invoice": "Invoices are available as PDF once an order ships.",
}


@flow(path="agents/support/tools/search_docs")
async def search_docs(query: str, k: int = 1) -> list[str]:
    print(f"  search_docs: searching for {query!r}")
    await asyncio.sleep(0.01)  # pretend I/O: the other tools run meanwhile
    return [text for topic, text in DOCS.items() if topic in query.lower()][:k] or [
        DOCS["shipping"]
    ]


class OrderService:
    """An order API that is down for its first request: a deterministic flaky tool."""

    def __init__(self, failures: int = 1) -> None:
        self.failures = failures
        self.calls = 0

    @flow(path="agents/support/tools/lookup_order")
    async def lookup_order(self, order_id: str) -> dict[str, str]:
        # A method: the log's inputs are {"order_id": ...}, without `self`.
        self.calls += 1
        print(f"  lookup_order: attempt {self.calls} for {order_id}")
        await asyncio.sleep(0.005)
        if self.calls <= self.failures:
            raise ConnectionError("order service unavailable (503)")
        return {"id": order_id, "status": "shipped", "carrier": "ParcelCo", "eta": "2025-06-03"}


@flow(path="agents/support/tools/fetch_invoice")
def fetch_invoice(order_id: str) -> str:
    """A blocking call (a sync SDK, a file, a subprocess): run it in a thread pool."""
    print(f"  fetch_invoice: rendering the invoice of {order_id} (blocking)")
    time.sleep(0.005)
    return f"https://shop.example.com/invoices/{order_id}.pdf"


# --- the agent ------------------------------------------------------------------------------


async def with_retry(
    call: Callable[[], Awaitable[_T]], *, attempts: int = MAX_ATTEMPTS, what: str = "tool"
) -> _T:
    """Retry a failing tool call. Not a flow itself: each attempt is its own log under the
    agent, the failed ones with their error."""
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except ConnectionError as error:
            if attempt == attempts:
                raise
            print(f"[agent] {what} failed ({error}); retrying")
            await asyncio.sleep(0.001)  # a real agent would back off longer
    raise AssertionError("unreachable")


class AgentResult(NamedTuple):
    log_id: str
    answer: str


async def run_agent(ticket: dict[str, Any] = TICKET) -> AgentResult:
    """Answer a support ticket; the whole run is one trace rooted at `agents/support`."""
    orders = OrderService(failures=1)
    messages = [
        {"role": "system", "content": "You are a helpful support agent."},
        {"role": "user", "content": ticket["text"]},
    ]
    async with flow(
        "agents/support",
        inputs={"ticket": ticket},
        attributes={"model": MODEL, "agent": "support", "max_attempts": MAX_ATTEMPTS},
    ) as log:
        log.messages = messages
        print(f"[agent] ticket {ticket['id']} from {ticket['customer']}")

        print("[agent] planning")
        steps = (await plan(messages))["steps"]
        print(f"[agent] plan: {', '.join(steps)}")

        # The async tools run as tasks (each nests under this block by itself). The blocking
        # tool goes to a TracedThreadPoolExecutor, which carries the current flow into its
        # thread (asyncio.to_thread would too; a plain ThreadPoolExecutor would not).
        loop = asyncio.get_running_loop()
        with flowtrace.TracedThreadPoolExecutor(max_workers=2) as pool:
            print(f"[agent] running {len(steps)} tools concurrently")
            docs, order, invoice = await asyncio.gather(
                search_docs("shipping status"),
                with_retry(lambda: orders.lookup_order(ticket["order_id"]), what="lookup_order"),
                loop.run_in_executor(pool, fetch_invoice, ticket["order_id"]),
            )
        print(f"[agent] tools done ({orders.calls} order lookups)")

        print("[agent] answer: ", end="")
        facts = {"docs": docs, "order": order, "invoice": invoice}
        tokens: list[str] = []
        for token in stream_answer(ticket["text"], facts):  # prints land in this block's log
            tokens.append(token)
            print(token, end="", flush=True)
        print()
        answer = "".join(tokens)

        log.output_message = {"role": "assistant", "content": answer}
        log.metadata = {"tool_calls": len(steps), "order_lookups": orders.calls}
        return AgentResult(log.log_id, answer)


def main() -> None:
    result = asyncio.run(run_agent())
    delivered = flowtrace.flush(5.0)  # logs are delivered in the background; wait for them
    print()
    print(f"trace {result.log_id} {'recorded' if delivered else 'NOT delivered yet'}")
    print(f"  flowtrace show {result.log_id}     # the trace as a tree")
    print("  flowtrace ui                # browse every trace")


if __name__ == "__main__":
    main()
