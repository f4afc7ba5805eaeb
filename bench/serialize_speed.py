"""Rough timings of flowtrace._serialize.snapshot (run: PYTHONPATH=src python bench/...).

Also times pydantic_core.to_jsonable_python on the same data, for comparison only: it is
not used for plain containers because it consumes generators, drops colliding keys, keeps
NaN and ignores our budgets, so its output would need a full Python re-walk anyway.
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable

from pydantic_core import to_jsonable_python

from flowtrace._serialize import snapshot, to_json


def payload() -> dict[str, object]:
    """~2 KB of typical call arguments: strings, ints, short lists, a nested dict."""
    return {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "max_tokens": 512,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. " * 4},
            {"role": "user", "content": "Summarise the following document please. " * 8},
            {"role": "assistant", "content": "Here is a short summary of it. " * 8},
        ],
        "tools": ["search", "calculator", "python"],
        "ids": list(range(60)),
        "metadata": {"user": "u-123", "session": "s-456", "tags": ["a", "b", "c"], "n": 3},
    }


def bench(label: str, stmt: Callable[[], object], number: int) -> None:
    best = min(timeit.repeat(stmt, number=number, repeat=5)) / number
    unit, scale = ("ns", 1e9) if best < 1e-6 else ("us", 1e6)
    print(f"{label:<44} {best * scale:8.2f} {unit}")


def main() -> None:
    data = payload()
    print(f"payload: {len(json.dumps(data))} bytes of JSON")
    bench("snapshot(1)", lambda: snapshot(1), 1_000_000)
    bench("snapshot('short str')", lambda: snapshot("short str"), 1_000_000)
    bench("snapshot(1.5)", lambda: snapshot(1.5), 1_000_000)
    bench("snapshot(None)", lambda: snapshot(None), 1_000_000)
    bench("snapshot(2 KB dict)", lambda: snapshot(data), 20_000)
    bench("to_json(snapshot(2 KB dict))", lambda: to_json(snapshot(data)), 20_000)
    bench("pydantic_core.to_jsonable_python(2 KB dict)", lambda: to_jsonable_python(data), 20_000)
    bench("snapshot(list of 1000 ints)", lambda: snapshot(list(range(1000))), 2_000)
    bench("snapshot(100 x 2 KB dicts)", lambda: snapshot([data] * 100), 200)


if __name__ == "__main__":
    main()
