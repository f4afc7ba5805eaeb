"""OTLP ingest throughput of `flowtrace serve`, next to the batch contract's, by hand.

    PYTHONPATH=src python bench/otlp_bench.py [--runs 5] [--batches 20]

Starts a real server process on a free loopback port over a fresh database, then sends, over
one keep-alive connection, alternating runs of:

- the batch contract: `POST /v5/flows/logs/batch` with 512 completed logs per request (the
  baseline, as bench/server_bench.py sends them);
- OTLP: `POST /v1/traces`, protobuf, 512 spans per request with 20 attributes each, in the
  order an exporter sends them (spans end children first): 64 traces of a root and 7
  children, so every root arrives after its children (placeholders created, then filled);
- OTLP flat: the same spans without parents (no placeholder work), for comparison.

Bodies are encoded before the clock starts: the figures are the server's. Prints the median
of each and the ratio spans/s over logs/s (target: at least 70%).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.server_bench import log_body  # the same logs as the server benchmark's
from tests.serverutil import start_server

BATCH = 512
ATTRIBUTES = 20
TRACE_SIZE = 8
TARGET_RATIO = 0.70
_T0 = 1_735_689_600_000_000_000  # 2025-01-01 in ns


def contract_bodies(run: str, batches: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "operations": [
                    {"op": "log", "body": log_body(run, b * BATCH + n)} for n in range(BATCH)
                ]
            }
        ).encode()
        for b in range(batches)
    ]


def _attributes(n: int, llm: bool) -> list[KeyValue]:
    values: dict[str, Any] = {
        "gen_ai.operation.name": "chat" if llm else "invoke_agent",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.provider.name": "openai",
        "gen_ai.usage.input_tokens": 100 + n % 50,
        "gen_ai.usage.output_tokens": 20 + n % 10,
        "gen_ai.request.temperature": 0.2,
        "input.value": f"question number {n}",
        "output.value": f"answer to question {n}",
        "user.id": f"user-{n % 13}",
        "session.id": f"session-{n % 29}",
    }
    for extra in range(ATTRIBUTES - len(values)):
        values[f"app.attribute_{extra}"] = f"value {extra} of span {n}"
    kvs = []
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            kvs.append(KeyValue(key=key, value=AnyValue(string_value=str(value))))
        elif isinstance(value, int):
            kvs.append(KeyValue(key=key, value=AnyValue(int_value=value)))
        else:
            kvs.append(KeyValue(key=key, value=AnyValue(double_value=value)))
    return kvs


def otlp_bodies(run: int, batches: int, flat: bool) -> list[bytes]:
    bodies = []
    for b in range(batches):
        spans = []
        for t in range(BATCH // TRACE_SIZE):
            trace_id = (run << 96 | b << 32 | t).to_bytes(16, "big")
            root_id = (b << 40 | t << 8 | 1).to_bytes(8, "big")
            for s in range(1, TRACE_SIZE):  # children end first, then their root
                n = b * BATCH + t * TRACE_SIZE + s
                spans.append(
                    Span(
                        trace_id=trace_id,
                        span_id=(b << 40 | t << 8 | (s + 1)).to_bytes(8, "big"),
                        parent_span_id=b"" if flat else root_id,
                        name="chat gpt-4o-mini",
                        kind=Span.SPAN_KIND_CLIENT,
                        start_time_unix_nano=_T0 + n * 1000,
                        end_time_unix_nano=_T0 + n * 1000 + 500,
                        attributes=_attributes(n, llm=True),
                    )
                )
            n = b * BATCH + t * TRACE_SIZE
            spans.append(
                Span(
                    trace_id=trace_id,
                    span_id=root_id,
                    name="invoke_agent bench",
                    start_time_unix_nano=_T0 + n * 1000,
                    end_time_unix_nano=_T0 + n * 1000 + TRACE_SIZE * 1000,
                    attributes=_attributes(n, llm=False),
                )
            )
        request = ExportTraceServiceRequest(
            resource_spans=[
                ResourceSpans(
                    resource=Resource(
                        attributes=[
                            KeyValue(key="service.name", value=AnyValue(string_value="bench"))
                        ]
                    ),
                    scope_spans=[ScopeSpans(scope=InstrumentationScope(name="bench"), spans=spans)],
                )
            ]
        )
        bodies.append(request.SerializeToString())
    return bodies


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def send(
    client: httpx.Client, pid: int, path: str, bodies: list[bytes], content_type: str
) -> tuple[float, float]:
    """(items/s of wall time, items per CPU second of the server process)."""
    cpu = _cpu_s(pid)
    started = time.perf_counter()
    for body in bodies:
        response = client.post(path, content=body, headers={"Content-Type": content_type})
        response.raise_for_status()
        if content_type == "application/json":
            if any(result["status"] != 200 for result in response.json()["results"]):
                raise RuntimeError("a batched log was refused")
        elif response.content:  # a partial_success: some span was not stored
            raise RuntimeError(f"spans refused: {response.content[:200]!r}")
    items = len(bodies) * BATCH
    return items / (time.perf_counter() - started), items / max(_cpu_s(pid) - cpu, 1e-9)


def _line(name: str, unit: str, rates: list[float], base: float | None) -> str:
    median = statistics.median(rates)
    ratio = "" if base is None else f"; ratio to the contract {median / base:.2f}"
    return (
        f"{name}: median {median:,.0f} {unit}; runs {', '.join(f'{r:,.0f}' for r in rates)}{ratio}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="requests per run")
    args = parser.parse_args()
    print(f"load average before: {_load()}")
    names = ("batch contract", "OTLP (children first)", "OTLP (flat)")
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "bench.db")
        pid = server.process.pid
        with (
            server,
            httpx.Client(base_url=server.root_url, headers=server.headers, timeout=60) as client,
        ):
            for run in range(args.runs + 1):  # the first run warms up
                results = (
                    send(
                        client,
                        pid,
                        "/v5/flows/logs/batch",
                        contract_bodies(f"r{run}", args.batches),
                        "application/json",
                    ),
                    send(
                        client,
                        pid,
                        "/v1/traces",
                        otlp_bodies(2 * run + 1, args.batches, False),
                        "application/x-protobuf",
                    ),
                    send(
                        client,
                        pid,
                        "/v1/traces",
                        otlp_bodies(2 * run + 2, args.batches, True),
                        "application/x-protobuf",
                    ),
                )
                if run:
                    for name, (rate, per_cpu) in zip(names, results, strict=True):
                        wall[name].append(rate)
                        cpu[name].append(per_cpu)
    print(f"load average after: {_load()}")
    contract = names[0]
    for title, table, unit in (("wall time", wall, "/s"), ("server CPU", cpu, "/CPU-s")):
        print(f"-- {title}")
        base = statistics.median(table[contract])
        for name in names:
            kind = "logs" if name == contract else "spans"
            print(_line(name, kind + unit, table[name], None if name == contract else base))
    by_wall = statistics.median(wall[names[1]]) / statistics.median(wall[contract])
    # each run measures the three back to back: the ratio within a run drifts least with load
    paired = statistics.median(o / c for o, c in zip(wall[names[1]], wall[contract], strict=True))
    by_cpu = statistics.median(cpu[names[1]]) / statistics.median(cpu[contract])
    met = "met" if min(by_wall, paired) >= TARGET_RATIO else "NOT met"
    print(
        f"OTLP spans/s over contract logs/s: {by_wall:.2f} (medians), {paired:.2f} (median of"
        f" the runs' ratios), {by_cpu:.2f} (per server CPU second); target {TARGET_RATIO:.2f}:"
        f" {met}"
    )


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
