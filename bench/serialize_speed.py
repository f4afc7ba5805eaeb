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


def flat_payload() -> dict[str, object]:
    """~2 KB dict of strings/ints/short lists, the shape of typical keyword arguments."""
    data: dict[str, object] = {f"field_{i}": f"value {i} " + "lorem ipsum " * 7 for i in range(18)}
    data.update(count=3, limit=100, offset=0, tags=["a", "b", "c"], ids=[1, 2, 3, 4, 5])
    return data


def bench(label: str, stmt: Callable[[], object] | str, number: int) -> None:
    best = min(timeit.repeat(stmt, number=number, repeat=5, globals=globals())) / number
    unit, scale = ("ns", 1e9) if best < 1e-6 else ("us", 1e6)
    print(f"{label:<44} {best * scale:8.2f} {unit}")


def main() -> None:
    data = payload()
    flat = flat_payload()
    print(f"nested payload: {len(json.dumps(data))} bytes, flat: {len(json.dumps(flat))} bytes")
    bench("snapshot(1)", "snapshot(1)", 2_000_000)
    bench("snapshot('short str')", "snapshot('short str')", 2_000_000)
    bench("snapshot(1.5)", "snapshot(1.5)", 2_000_000)
    bench("snapshot(None)", "snapshot(None)", 2_000_000)
    bench("snapshot(flat 2 KB dict)", lambda: snapshot(flat), 20_000)
    bench("pydantic_core.to_jsonable_python(flat)", lambda: to_jsonable_python(flat), 20_000)
    bench("snapshot(nested payload)", lambda: snapshot(data), 20_000)
    bench("to_json(snapshot(nested payload))", lambda: to_json(snapshot(data)), 20_000)
    bench("pydantic_core.to_jsonable_python(nested)", lambda: to_jsonable_python(data), 20_000)
    bench("snapshot(list of 1000 ints)", lambda: snapshot(list(range(1000))), 2_000)
    bench("snapshot(100 x 2 KB dicts)", lambda: snapshot([data] * 100), 200)


if __name__ == "__main__":
    main()
