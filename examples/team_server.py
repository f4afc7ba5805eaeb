"""The agent of examples/agent.py, sending its trace to a team's `flowtrace serve`.

In one terminal, run the server (it needs the `server` extra: pip install -e '.[server]'):

    flowtrace serve --port 8484 --api-key dev-key

In another, run the agent against it:

    python examples/team_server.py

and open http://127.0.0.1:8484/ (the browser asks for a password: the API key, any user name).
The code of the agent is unchanged: only `flowtrace.configure(base_url=..., api_key=...)`
differs from the embedded default. FLOWTRACE_BASE_URL and FLOWTRACE_API_KEY override the
server and key used here (the same variables configure flowtrace without any code).

Runs offline with no keys other than the one you give your own server. The process exits 1 if
the logs were not delivered within 10 seconds (no server listening, a wrong key...), and
prints the delivery counters either way.
"""

from __future__ import annotations

import asyncio
import os
import sys

from agent import run_agent  # examples/agent.py, next to this file

import flowtrace

DEFAULT_BASE_URL = "http://127.0.0.1:8484/v5"
DEFAULT_API_KEY = "dev-key"


def main() -> int:
    base_url = os.environ.get("FLOWTRACE_BASE_URL", DEFAULT_BASE_URL)
    api_key = os.environ.get("FLOWTRACE_API_KEY", DEFAULT_API_KEY)
    # Before any flow runs: logs recorded from now on go to this server, in background batches.
    flowtrace.configure(base_url=base_url, api_key=api_key)
    print(f"sending logs to {base_url}")

    result = asyncio.run(run_agent())

    finished = flowtrace.flush(10)  # wait for the server to answer for every log
    stats = flowtrace.stats()  # a log the server refused (401, 422...) is dropped and counted
    delivered = finished and not stats["dropped"]
    print()
    if delivered:
        print(f"trace {result.log_id} delivered to {base_url}")
        viewer = base_url.removesuffix("/").removesuffix("/v5")
        print(f"  {viewer}/traces/{result.log_id}")
    else:
        print(f"trace {result.log_id} NOT delivered to {base_url}: is `flowtrace serve` running")
        print("  there, and does it accept this API key?")
        flowtrace.shutdown(0)  # give up now rather than retry again at exit
    print(f"delivery stats: {stats}")
    return 0 if delivered else 1


if __name__ == "__main__":
    sys.exit(main())
