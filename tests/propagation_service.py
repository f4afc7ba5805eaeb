"""A service for the distributed tracing tests: FastAPI with `FlowtraceMiddleware`, under
uvicorn, delivering its logs to the flowtrace server named on the command line.

    python tests/propagation_service.py BASE_URL API_KEY

prints `service on http://HOST:PORT` once it listens. Routes (each answers what it recorded):

- `GET /work?name=N[&call=URL]`: a flow `svc/N`, which calls URL (an httpx client with the
  flowtrace hook) when given; flushes before answering, so its logs are stored first.
- `GET /deferred?name=N`: answers at once; its flow runs (still in the request's continued
  trace, an asyncio task) only when `GET /release` is called, which answers what it stored.
- `GET /stats`: `flowtrace.stats()`.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

import flowtrace
from flowtrace.asgi import FlowtraceMiddleware
from flowtrace.server._uvicorn_server import AnnouncingServer

app = FastAPI()
app.add_middleware(FlowtraceMiddleware)
_deferred: list[asyncio.Task[dict[str, Any]]] = []
_release = asyncio.Event()


def _recorded(log: flowtrace.Log, called: Any = None) -> dict[str, Any]:
    return {"log_id": log.log_id, "called": called, "flushed": flowtrace.flush(30)}


@app.get("/work")
async def work(name: str, call: str | None = None) -> dict[str, Any]:
    async with flowtrace.flow(f"svc/{name}") as log:
        called = None
        if call is not None:
            async with flowtrace.instrument_httpx(httpx.AsyncClient(timeout=30)) as client:
                called = (await client.get(call)).json()
        log.output = {"called": called}
    return _recorded(log, called)


async def _later(name: str) -> dict[str, Any]:
    await _release.wait()
    async with flowtrace.flow(f"svc/{name}") as log:
        pass
    return _recorded(log)


@app.get("/deferred")
async def deferred(name: str) -> dict[str, str]:
    _deferred.append(asyncio.create_task(_later(name)))  # the task copies the request's context
    return {"accepted": name}


@app.get("/release")
async def release() -> list[dict[str, Any]]:
    _release.set()
    done = [await task for task in _deferred]
    _deferred.clear()
    _release.clear()
    return done


@app.get("/stats")
async def stats() -> dict[str, Any]:
    return flowtrace.stats()


def main() -> None:
    base_url, api_key = sys.argv[1], sys.argv[2]
    flowtrace.configure(
        base_url=base_url, api_key=api_key, first_batch_after_s=0.01, batch_interval_s=0.05
    )
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    server = AnnouncingServer(config, lambda url: print(f"service on {url}", flush=True))
    server.run()


if __name__ == "__main__":
    main()
